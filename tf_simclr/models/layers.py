"""Layers shared by the encoders and heads."""

from __future__ import annotations

import keras
from keras import layers

BATCH_NORM_EPSILON = 1e-5  # The reference's.


def batch_norm(
    name: str,
    batch_norm_decay: float = 0.9,
    global_bn: bool = False,
    zero_init: bool = False,
    center: bool = True,
    scale: bool = True,
) -> layers.BatchNormalization:
    """A batch-norm layer with the reference's epsilon and momentum.

    `global_bn` maps to `synchronized=True`, which the TensorFlow backend honours
    under a `tf.distribute` strategy. Other backends reject `synchronized`; there
    it is dropped, because data-parallel JAX computes batch statistics over the
    whole sharded batch anyway.

    Args:
      name: Layer name.
      batch_norm_decay: Moving-average momentum. Defaults to 0.9.
      global_bn: Aggregate statistics across replicas. Defaults to False.
      zero_init: Initialise gamma to 0 (last BN of a residual branch), so a fresh
        block is the identity on its shortcut. Defaults to False.
      center: Learn a beta offset. Defaults to True.
      scale: Learn a gamma scale. Defaults to True.

    Returns:
      The layer.
    """
    synchronized = bool(global_bn) and keras.backend.backend() == "tensorflow"
    gamma_initializer = "zeros" if zero_init else "ones"
    return layers.BatchNormalization(
        momentum=batch_norm_decay, epsilon=BATCH_NORM_EPSILON, center=center, scale=scale,
        gamma_initializer=gamma_initializer, synchronized=synchronized, name=name,
    )
