"""Which variables weight decay touches, and where it is applied (optimizer or loss).

As the reference (`tf2/model.py`): batch-norm parameters and biases are never
decayed (nor LARS-adapted). With LARS the optimizer decays the encoder and the
projection head itself, and the loss carries only the supervised head's kernel
decay; with momentum or Adam the loss carries the decay of every other weight.
The reference picked the exclusions by matching `variable.name`, which carries no
layer path in Keras 3 and so excluded nothing; here they are chosen by layer type.
"""

from __future__ import annotations

import dataclasses

import keras

from tf_simclr import keras_internals


@dataclasses.dataclass(frozen=True)
class WeightDecayPlan:
    """Where a model's weight decay goes.

    Attributes:
        loss_variable_ids: ids of the variables whose L2 penalty the loss carries.
        optimizer_excluded: variables the optimizer must not decay (nor, for
            LARS, trust-scale).
        weight_decay: the coefficient.
    """

    loss_variable_ids: frozenset
    optimizer_excluded: list
    weight_decay: float


def _sublayers(model: keras.Model) -> list:
    return keras_internals.sublayers(model)


def batch_norm_variables(model: keras.Model) -> list:
    """Every variable of the model's batch-norm layers (parameters and moving statistics)."""
    found = {}
    for layer in _sublayers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.weights:
                found[id(v)] = v
    return list(found.values())


def never_decayed(model: keras.Model) -> list:
    """Batch-norm parameters and biases: never decayed nor LARS-adapted (by layer type and role)."""
    excluded = {id(v): v for v in batch_norm_variables(model)}
    for layer in _sublayers(model):
        bias = getattr(layer, "bias", None)
        if bias is not None and isinstance(bias, keras.Variable):
            excluded[id(bias)] = bias
    return list(excluded.values())


def plan_weight_decay(model, weight_decay: float, optimizer_applies_decay: bool) -> WeightDecayPlan:
    """Decides which variables get the L2 penalty in the loss and which the optimizer must skip.

    Args:
        model: A built `SimCLRModel` (its `supervised_head` may be None).
        weight_decay: The coefficient (`--weight_decay`).
        optimizer_applies_decay: Whether the optimizer decays weights itself (LARS).
    """
    excluded = never_decayed(model)
    excluded_ids = {id(v) for v in excluded}
    if optimizer_applies_decay:
        head = model.supervised_head.trainable_weights if model.supervised_head is not None else []
        head_kernels = [v for v in head if id(v) not in excluded_ids]
        return WeightDecayPlan(frozenset(id(v) for v in head_kernels), excluded + head_kernels, float(weight_decay))
    batch_norm_ids = {id(v) for v in batch_norm_variables(model)}
    in_loss = frozenset(id(v) for v in model.trainable_weights if id(v) not in batch_norm_ids)
    return WeightDecayPlan(in_loss, excluded, float(weight_decay))
