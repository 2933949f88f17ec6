"""Layers shared by the encoders and heads."""

from __future__ import annotations

import keras
from keras import layers, ops

BATCH_NORM_EPSILON = 1e-5  # The reference's.


def one_pass_moments(x, axes):
    """Mean and variance of `x` over `axes` from one read of `x`: E[x] and E[x^2] - E[x]^2.

    Keras's own statistics (`ops.moments`) take the mean first and then the mean
    squared distance from it: two reductions, the second waiting for the first,
    so every activation is read twice before it is normalized. Both sums here
    read `x` once, side by side, as Keras's synchronized batch norm, flax's
    (`use_fast_variance`, its default) and PyTorch's compiled one do. The price
    is cancellation when the mean is large against the spread: the variance's
    relative error grows as (mean / std)^2, 4e-4 at a ratio of 10 and 3e-3 at 30
    over 50,000 float32 values a channel (`tests/models/test_layers.py`), where
    post-convolution ratios are a few. Nothing here depends on state (a shift by
    the moving mean would), so a replayed or resumed step computes the same bits.

    Args:
      x: A float tensor (float32: the batch-norm layer upcasts before this).
      axes: The axes to reduce (all but the channel axis).

    Returns:
      `(mean, variance)`, each with the reduced axes dropped.
    """
    mean = ops.mean(x, axis=axes)
    variance = ops.maximum(ops.mean(ops.square(x), axis=axes) - ops.square(mean), 0.0)
    return mean, variance


@keras.saving.register_keras_serializable(package="tf_simclr")
class BatchNorm(layers.BatchNormalization):
    """Keras's `BatchNormalization`, its batch statistics read in one pass (`one_pass_moments`).

    Same variables, the same update of the moving averages, the same output to
    float32 rounding: checkpoints, exports and converted reference weights are
    unchanged. It saves one read of every normalized activation in each training
    step, which matters where batch norm is memory-bound (GPUs; benchmarks/
    batch_norm_statistics.py). A synchronized layer (`--global_bn` under
    `tf.distribute`) keeps Keras's cross-replica sums, which are one pass already.

    Args:
      one_pass_statistics: Use `one_pass_moments`; False gives Keras's own
        two-pass statistics (for side-by-side timing). Defaults to True.
      **kwargs: `keras.layers.BatchNormalization`'s arguments.
    """

    def __init__(self, one_pass_statistics: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.one_pass_statistics = bool(one_pass_statistics)

    def _moments(self, inputs, mask):  # Keras's hook for the batch statistics (keras_internals, 5).
        if not self.one_pass_statistics or mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        return one_pass_moments(inputs, self._reduction_axes)

    def get_config(self):
        return {**super().get_config(), "one_pass_statistics": self.one_pass_statistics}


def batch_norm(
    name: str,
    batch_norm_decay: float = 0.9,
    global_bn: bool = False,
    zero_init: bool = False,
    center: bool = True,
    scale: bool = True,
) -> BatchNorm:
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
    return BatchNorm(
        momentum=batch_norm_decay, epsilon=BATCH_NORM_EPSILON, center=center, scale=scale,
        gamma_initializer=gamma_initializer, synchronized=synchronized, name=name,
    )
