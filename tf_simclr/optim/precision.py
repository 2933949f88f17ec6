"""Mixed precision: which Keras dtype policy `--precision` selects, and float16 loss scaling.

Under 'bfloat16' and 'float16' the variables stay float32 while layers compute in the
16-bit type; the NT-Xent and supervised losses cast to float32 themselves
(`losses.contrastive_loss`, `losses.supervised_loss`). float16 has a narrow exponent,
so its gradients need dynamic loss scaling (`keras.optimizers.LossScaleOptimizer`);
bfloat16 has float32's exponent and needs none.
"""

from __future__ import annotations

import keras

PRECISIONS = ("float32", "bfloat16", "float16")

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def _check(name: str) -> None:
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision. Expected one of {PRECISIONS}. Received: precision={name!r}")


def policy_name(name: str) -> str:
    """The Keras dtype policy of precision `name` ('float32', 'mixed_bfloat16', 'mixed_float16')."""
    _check(name)
    return _POLICIES[name]


def set_precision(name: str) -> None:
    """Sets Keras's global dtype policy for precision `name`.

    Layers read the global policy when they are created, so call this before
    building the model (a model built earlier keeps its float32 layers).
    """
    keras.config.set_dtype_policy(policy_name(name))


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, name: str) -> keras.optimizers.Optimizer:
    """Adds dynamic loss scaling for 'float16'; returns `optimizer` itself otherwise.

    Call it after configuring the inner optimizer (e.g. LARS's exclusions) and before
    `model.compile`. The returned `LossScaleOptimizer` skips steps whose scaled
    gradients overflow and halves its scale; the train steps (`steps.tf_step`, `steps.jax_step`) still advance
    `optimizer.iterations` on those steps so it keeps counting batches.
    """
    _check(name)
    if name != "float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)
