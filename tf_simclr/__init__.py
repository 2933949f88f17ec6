"""tf_simclr: SimCLR v1/v2 self-supervised pretraining for TensorFlow / Keras 3."""
