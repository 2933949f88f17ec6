"""SimCLR augmentations: one policy (`spec.AugmentSpec`), two implementations.

    spec    AugmentSpec: every range, probability and order rule, read by both
    host    per image in tf.data (TensorFlow ops)
    device  whole batches inside the compiled step (keras.ops: TF and JAX; its colour ops in device_color)
    grid    a PNG grid of views, to look at what the model sees

`host` and `grid` need TensorFlow and load on first use, so the package
imports on a JAX-only machine.
"""

import importlib

from tf_simclr.augment.spec import AugmentSpec, spec_from_config

__all__ = ["AugmentSpec", "spec_from_config", "host", "device", "grid"]


def __getattr__(name):
    if name in ("host", "device", "grid"):
        return importlib.import_module(f"tf_simclr.augment.{name}")
    raise AttributeError(f"module 'tf_simclr.augment' has no attribute {name!r}")
