"""The optimizers `--optimizer` can name, and where each one's weight decay lives.

As in the SimCLR reference (`tf2/model.py`): LARS applies the weight decay
itself (coupled with its trust ratio), while `momentum` and `adam` get it as an
L2 penalty added to the loss (`l2_weight_decay_loss`). `register_optimizer` adds
one by name. Backend-neutral.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence

import keras
from keras import ops

from tf_simclr.optim.lars import LARS

# Name patterns the reference excludes from LARS weight decay and trust ratio.
# They only make sense for models whose variable paths use these words; callers
# pass their own `excluded_names` / `excluded_variables`.
REFERENCE_EXCLUDED_NAMES = ("batch_normalization", "bias", "head_supervised")


def _lars(learning_rate, momentum, weight_decay, excluded_variables, excluded_names):
    optimizer = LARS(learning_rate, momentum=momentum, weight_decay=weight_decay)
    # Through the method, so variable objects and path patterns are both
    # excluded from the decay and (by LARS's default) from the trust ratio.
    optimizer.exclude_from_weight_decay(
        var_list=list(excluded_variables), var_names=list(excluded_names)
    )
    return optimizer


def _momentum(learning_rate, momentum, weight_decay, excluded_variables, excluded_names):
    del weight_decay, excluded_variables, excluded_names  # Decay goes in the loss.
    # The reference uses Nesterov momentum for its plain-momentum option.
    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)


def _adam(learning_rate, momentum, weight_decay, excluded_variables, excluded_names):
    del momentum, weight_decay, excluded_variables, excluded_names  # Decay goes in the loss.
    return keras.optimizers.Adam(learning_rate)


OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "lars": _lars,
    "momentum": _momentum,
    "adam": _adam,
}

# Optimizers that apply the weight decay themselves (no L2 term in the loss).
_DECAY_IN_OPTIMIZER = {"lars"}


def register_optimizer(name: str, factory: Callable[..., keras.optimizers.Optimizer], *,
                       applies_weight_decay: bool = False, overwrite: bool = False) -> None:
    """Makes `--optimizer=name` build `factory(learning_rate, momentum, weight_decay, excluded_variables,
    excluded_names)`; `applies_weight_decay` says whether it decays weights itself (like LARS) or the loss
    carries an L2 penalty (like momentum and Adam)."""
    if name in OPTIMIZERS and not overwrite:
        raise ValueError(f"An optimizer named {name!r} is already registered; pass overwrite=True to replace it.")
    OPTIMIZERS[name] = factory
    if applies_weight_decay:
        _DECAY_IN_OPTIMIZER.add(name)
    else:
        _DECAY_IN_OPTIMIZER.discard(name)


def _check_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer. Expected one of {sorted(OPTIMIZERS)} (or one registered with "
            f"tf_simclr.register_optimizer). Received: optimizer={name!r}"
        )


def uses_optimizer_weight_decay(name: str) -> bool:
    """Whether optimizer `name` applies weight decay itself.

    When False, add `l2_weight_decay_loss(...)` to the training loss instead.

    Args:
        name: A key of `OPTIMIZERS`.

    Returns:
        True for `"lars"`, False for `"momentum"` and `"adam"`.
    """
    _check_name(name)
    return name in _DECAY_IN_OPTIMIZER


def build_optimizer(
    name: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    excluded_variables: Iterable = (),
    excluded_names: Sequence[str] = (),
) -> keras.optimizers.Optimizer:
    """Builds the optimizer the reference's `--optimizer` flag selects.

    Args:
        name: `"lars"`, `"momentum"` (SGD with Nesterov momentum) or `"adam"`.
        learning_rate: A float or a learning-rate schedule.
        momentum: Momentum for `"lars"` and `"momentum"`. Defaults to `0.9`.
        weight_decay: L2 coefficient. Only LARS uses it here; for the others
            add `l2_weight_decay_loss` to the loss. Defaults to `0.0`.
        excluded_variables: Variables LARS must not decay nor trust-scale
            (e.g. batch-norm and bias variables). Defaults to `()`.
        excluded_names: Regex patterns searched in `variable.path` with the
            same effect. Defaults to `()`.

    Returns:
        A new, unbuilt Keras optimizer.
    """
    _check_name(name)
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        learning_rate = float(learning_rate)  # Keras rejects ints and numpy floats.
    return OPTIMIZERS[name](
        learning_rate, float(momentum), float(weight_decay), excluded_variables, excluded_names
    )


def l2_weight_decay_loss(variables: Iterable, weight_decay: float):
    """`weight_decay * sum(||v||^2 / 2)`: the reference's L2 penalty.

    Same convention as `tf.nn.l2_loss` (half the squared norm). Computed in
    float32 so float16 variables cannot overflow.

    Args:
        variables: The variables to penalize (choose them: the reference skips
            batch-norm variables).
        weight_decay: The L2 coefficient.

    Returns:
        A float32 scalar tensor (0 when `variables` is empty).
    """
    total = ops.convert_to_tensor(0.0, dtype="float32")
    for variable in variables:
        total = total + 0.5 * ops.sum(ops.square(ops.cast(variable, "float32")))
    return ops.cast(weight_decay, "float32") * total
