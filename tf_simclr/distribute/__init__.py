"""Scale: one device, many GPUs, many machines, TPUs, or JAX devices; the same mathematics at any size.

    strategy      choosing a tf.distribute strategy from flags and TF_CONFIG; which process writes
    replica       which replica am I, and the others' tensors (backend-neutral; the NT-Xent gather)
    jax_parallel  data parallelism over JAX's local devices (keras.distribution)
    datasets      input pipelines for a strategy (per input context, or global batches on JAX)
"""
