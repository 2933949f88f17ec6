"""One optimizer step of `SimCLRModel`, per backend: what Keras's `fit` runs.

    tf_step   TensorFlow: GradientTape, replica-mean gradients, NaN skipping,
              several steps per call under tf.distribute
    jax_step  JAX: the same mathematics as a pure function (keras.StatelessScope)

The model's `train_step`/`test_step` hand over to these; they use the model's
`compute_losses` and trackers and import nothing above `distribute`.
"""
