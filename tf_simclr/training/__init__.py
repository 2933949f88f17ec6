"""Training: the loop, its steps on each backend, and what keeps a long run safe.

    trainer      train(config): pipeline, model, optimizer, restore, fit, export (top to bottom)
    plan         steps, checkpoint period, warmup and learning rate, derived once
    tf_step      the TensorFlow train step and the multi-step loop under tf.distribute
    jax_step     the same step, stateless, for Keras on JAX
    restore      resume from model_dir, or start from --checkpoint
    checkpoint   crash-safe, backend-neutral checkpoints on any filesystem
    callbacks    checkpoints and stopping, summaries, the kNN monitor, the learning curve
    preemption   SIGTERM as "checkpoint and stop"
"""
