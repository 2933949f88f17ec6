"""LARS: layer-wise adaptive rate scaling, the optimizer SimCLR pretrains with.

Backend-neutral (keras + keras.ops only), modelled on `keras.optimizers.Lamb`.
The mathematics follow the SimCLR reference (`tf2/lars_optimizer.py`): weight
decay is added to the gradient *before* the trust ratio is computed, so it is
coupled L2 decay, not Keras's decoupled `weight_decay` (which this class keeps
switched off in the base class on purpose).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import keras
from keras import ops

EETA_DEFAULT = 0.001

# Float16/bfloat16 norms overflow or lose the trust ratio; do the maths in float32.
_LOW_PRECISION = ("float16", "bfloat16")


def _as_patterns(names: str | Iterable[str] | None, arg_name: str) -> tuple[str, ...] | None:
    """Normalizes a pattern argument to a tuple of regex strings (or None)."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"`{arg_name}` must be a list of name patterns (strings); to exclude "
                "variable objects call `optimizer.exclude_from_weight_decay("
                f"var_list=...)`. Received: {arg_name}={names}"
            )
        re.compile(name)  # Fail now, not at build time, on a bad regex.
    return tuple(names)


def _as_list(patterns: tuple[str, ...] | None) -> list[str] | None:
    return None if patterns is None else list(patterns)


def _variable_path(variable) -> str:
    """The full name patterns are matched against (`path` in Keras 3)."""
    # Keras 3's `variable.name` is only the last component ("kernel"), so the
    # reference's name-based filtering would miss layer names: use `path`.
    path = getattr(variable, "path", None)
    return path if path is not None else variable.name


def _matches(patterns: Sequence[str] | None, path: str) -> bool:
    return any(re.search(p, path) is not None for p in patterns or ())


def _guarded_ratio(numerator, denominator):
    """numerator / denominator where both are > 0, else 1 (as the reference)."""
    safe = ops.where(ops.greater(denominator, 0), denominator, ops.ones_like(denominator))
    ratio = ops.where(ops.greater(denominator, 0), numerator / safe, ops.ones_like(safe))
    return ops.where(ops.greater(numerator, 0), ratio, ops.ones_like(ratio))


def _l2_norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


@keras.saving.register_keras_serializable(package="tf_simclr")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017).

    Paper: "Large Batch Training of Convolutional Networks",
    https://arxiv.org/abs/1708.03888. SimCLR (Chen et al., 2020) trains with it
    at batch sizes up to 8192.

    Per variable `w` with gradient `g`, momentum buffer `v`, learning rate `lr`:

    ```
    g = g + weight_decay * w                       # unless excluded from decay
    # classic_momentum=True: the trust ratio scales the learning rate.
    r = eeta * |w| / |g|                           # 1 if excluded or a norm is 0
    v = momentum * v + lr * r * g
    w = w - (momentum * v + lr * r * g if use_nesterov else v)
    # classic_momentum=False: the trust ratio scales the momentum update.
    v = momentum * v + g
    u = momentum * v + g if use_nesterov else v
    w = w - lr * (eeta * |w| / |u|) * u
    ```

    Exclusions are regular expressions searched in the variable's full
    `variable.path` (e.g. `"resnet/block_group1_block0_bn1/gamma"`), falling
    back to `variable.name` for raw backend variables. Variables can also be
    excluded by object with `exclude_from_weight_decay(var_list=...)` before the
    optimizer is built.

    Args:
        learning_rate: A float or a
            `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: Momentum coefficient. Defaults to `0.9`.
        use_nesterov: Whether to use Nesterov momentum. Defaults to `False`.
        weight_decay: Coefficient of the L2 penalty added to the gradient.
            Defaults to `0.0`.
        exclude_from_weight_decay: Name patterns of variables that get no weight
            decay (e.g. `["batch_norm", "bias"]`). Defaults to `None`.
        exclude_from_layer_adaptation: Name patterns of variables that get no
            trust ratio. Defaults to `None`, meaning "the same variables as the
            weight-decay exclusions" (as the reference does); pass `[]` to
            adapt every variable.
        classic_momentum: If True the learning rate (and trust ratio) enter the
            momentum buffer; if False they are applied after momentum.
            Defaults to `True`.
        eeta: Trust coefficient of the trust ratio. Defaults to `0.001`.
        name: Optimizer name. Defaults to `"lars"`.
        **kwargs: Other base `keras.optimizers.Optimizer` arguments
            (`clipnorm`, `use_ema`, `loss_scale_factor`, ...).
    """

    def __init__(
        self,
        learning_rate,
        momentum: float = 0.9,
        use_nesterov: bool = False,
        weight_decay: float = 0.0,
        exclude_from_weight_decay: Iterable[str] | None = None,
        exclude_from_layer_adaptation: Iterable[str] | None = None,
        classic_momentum: bool = True,
        eeta: float = EETA_DEFAULT,
        name: str = "lars",
        **kwargs,
    ):
        # The base class's weight_decay is *decoupled* decay applied on its own;
        # LARS couples decay with the trust ratio, so keep it out of the base.
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if momentum < 0:
            raise ValueError(f"`momentum` must be >= 0. Received: momentum={momentum}")
        if weight_decay is None:
            weight_decay = 0.0
        if weight_decay < 0:
            raise ValueError(
                f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay}"
            )
        if eeta <= 0:
            raise ValueError(f"`eeta` must be > 0. Received: eeta={eeta}")
        self.momentum = float(momentum)
        self.use_nesterov = bool(use_nesterov)
        self.lars_weight_decay = float(weight_decay)
        self.classic_momentum = bool(classic_momentum)
        self.eeta = float(eeta)
        # Stored under private names: a public attribute called
        # `exclude_from_weight_decay` would hide the base-class method.
        self._decay_exclusion_patterns = _as_patterns(
            exclude_from_weight_decay, "exclude_from_weight_decay"
        )
        self._adaptation_exclusion_patterns = _as_patterns(
            exclude_from_layer_adaptation, "exclude_from_layer_adaptation"
        )
        self._extra_decay_patterns: tuple[str, ...] = ()
        self._decay_excluded_ids: set = set()
        self._lars_flags: dict = {}

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Excludes variables (objects and/or name patterns) from weight decay.

        Same signature as the Keras base method, but the patterns are matched
        against `variable.path`. Unless `exclude_from_layer_adaptation` was
        given, these variables are also excluded from the trust ratio. A second
        call replaces what the first one set; constructor patterns always apply.
        Must be called before the optimizer is built.

        Args:
            var_list: Variables to exclude. Defaults to `None`.
            var_names: Regex patterns searched in `variable.path`.
                Defaults to `None`.
        """
        if self.built:
            raise ValueError(
                "`exclude_from_weight_decay()` must be called before the optimizer "
                f"is built (optimizer '{self.name}' already is). Create a new "
                "optimizer, or call it before the first `apply`/`fit` step."
            )
        self._decay_excluded_ids = {self._var_key(v) for v in var_list or ()}
        self._extra_decay_patterns = _as_patterns(var_names, "var_names") or ()

    def _excluded_from_decay(self, variable) -> bool:
        if self._var_key(variable) in self._decay_excluded_ids:
            return True
        path = _variable_path(variable)
        return _matches(self._decay_exclusion_patterns, path) or _matches(
            self._extra_decay_patterns, path
        )

    def _use_lars_weight_decay(self, variable) -> bool:
        return bool(self.lars_weight_decay) and not self._excluded_from_decay(variable)

    def _do_layer_adaptation(self, variable) -> bool:
        if self._adaptation_exclusion_patterns is None:
            return not self._excluded_from_decay(variable)
        return not _matches(self._adaptation_exclusion_patterns, _variable_path(variable))

    def build(self, var_list):
        """Creates one momentum buffer per variable and fixes the exclusions.

        The decisions are taken here, on the Keras variables, because under the
        TensorFlow backend `update_step` only sees the underlying `tf.Variable`
        (or a per-replica component), which has no `path`.

        Args:
            var_list: The model variables to optimize.
        """
        if self.built:
            return
        super().build(var_list)
        self._momentums = self.add_optimizer_variables(var_list, "momentum")
        self._lars_flags = {
            self._var_key(v): (
                self._use_lars_weight_decay(v),
                self._do_layer_adaptation(v),
            )
            for v in var_list
        }

    def update_step(self, gradient, variable, learning_rate):
        """Applies one LARS update to `variable` (see the class docstring)."""
        var_dtype = variable.dtype
        low_precision = keras.backend.standardize_dtype(var_dtype) in _LOW_PRECISION
        dtype = "float32" if low_precision else var_dtype
        use_decay, adapt = self._lars_flags[self._var_key(variable)]
        v_slot = self._momentums[self._get_variable_index(variable)]

        lr = ops.cast(learning_rate, dtype)
        w = ops.cast(variable, dtype)
        g = ops.cast(gradient, dtype)
        v = ops.cast(v_slot, dtype)
        momentum = ops.cast(self.momentum, dtype)
        if use_decay:
            g = g + ops.cast(self.lars_weight_decay, dtype) * w

        def trust_ratio(direction):
            if not adapt:
                return ops.cast(1.0, dtype)
            return _guarded_ratio(ops.cast(self.eeta, dtype) * _l2_norm(w), _l2_norm(direction))

        if self.classic_momentum:
            scaled_lr = lr * trust_ratio(g)
            next_v = momentum * v + scaled_lr * g
            update = momentum * next_v + scaled_lr * g if self.use_nesterov else next_v
            next_w = w - update
        else:
            next_v = momentum * v + g
            update = momentum * next_v + g if self.use_nesterov else next_v
            next_w = w - lr * trust_ratio(update) * update

        self.assign(v_slot, ops.cast(next_v, v_slot.dtype))
        self.assign(variable, ops.cast(next_w, var_dtype))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "use_nesterov": self.use_nesterov,
                # Ours (coupled L2), not the base class's decoupled decay.
                "weight_decay": self.lars_weight_decay,
                "exclude_from_weight_decay": _as_list(self._decay_exclusion_patterns),
                "exclude_from_layer_adaptation": _as_list(
                    self._adaptation_exclusion_patterns
                ),
                "classic_momentum": self.classic_momentum,
                "eeta": self.eeta,
            }
        )
        return config
