"""Every private Keras API tf_simclr uses, in one place: what, why, and the version it was checked on.

Private APIs change without notice. Each one is wrapped here so an upgrade that
breaks one breaks it here, with the reason it is needed next to it. Checked
against Keras 3.15.1 (TensorFlow 2.21, JAX 0.7).

1. `Layer._flatten_layers(include_self=False)`: every sub-layer, recursively.
   Keras 3 has no public recursive iterator (`Model.layers` is top level only);
   weight-decay exclusions, batch-norm statistics and export copies need all of them.
2. `keras.src.backend.tensorflow.trainer.reduce_per_replica`: reduces a step's
   per-replica outputs the way Keras's own TF train function does, for our
   multi-step loop under `tf.distribute` (Keras 3.15's `steps_per_execution`
   loop fails under MirroredStrategy with "You must feed a value for placeholder
   tensor 'while/cond/Placeholder'").
3. `Trainer._maybe_symbolic_build`: overridden on `SimCLRModel` so `fit` does
   not peek at (and consume) a training batch when the model is already built:
   the peek changes the data order of a resumed run, and under
   MultiWorkerMirroredStrategy it fails reducing the per-replica batch.
4. `MultiWorkerMirroredStrategy.extended._in_multi_worker_mode()`: whether the
   strategy really spans several processes (a one-task TF_CONFIG does not).
5. `BatchNormalization._moments(inputs, mask)`: the hook through which Keras's
   batch norm takes its batch mean and variance (float32 inputs, `mask` None for
   images), overridden by `models.layers.BatchNorm` to read them in one pass.
   Keras has no public way to change how the statistics are computed. If an
   upgrade stops calling it, the layer silently falls back to Keras's two
   passes; `tests/models/test_layers.py` fails on that.
"""

from __future__ import annotations

CHECKED_KERAS_VERSION = "3.15.1"


def sublayers(layer) -> list:
    """All layers below `layer`, recursively (1)."""
    return list(layer._flatten_layers(include_self=False))  # noqa: SLF001


def reduce_per_replica(outputs, strategy, reduction: str = "auto"):
    """Keras's reduction of per-replica step outputs (2), TensorFlow backend."""
    from keras.src.backend.tensorflow.trainer import reduce_per_replica as keras_reduce  # noqa: PLC0415

    return keras_reduce(outputs, strategy, reduction=reduction)


def parent_maybe_symbolic_build(model_class, model, iterator=None, data_batch=None):
    """Calls Keras's own `_maybe_symbolic_build` (3) from an override on `model_class`."""
    return super(model_class, model)._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)  # noqa: SLF001


def in_multi_worker_mode(strategy) -> bool:
    """Whether a MultiWorkerMirroredStrategy spans several worker processes (4)."""
    return bool(strategy.extended._in_multi_worker_mode())  # noqa: SLF001
