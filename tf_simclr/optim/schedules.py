"""Learning-rate scaling, step counts and the warmup + cosine schedule of SimCLR.

The formulas are those of the SimCLR reference (`tf2/model.py`), taken apart
into pure functions so nothing reads global flags: the caller scales the base
rate once (`scale_learning_rate`) and hands the schedule plain step counts.
Backend-neutral (keras + keras.ops only).
"""

from __future__ import annotations

import math

import keras
from keras import ops

LEARNING_RATE_SCALINGS = ("linear", "sqrt")


def scale_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
    """Scales the base learning rate with the batch size (SimCLR appendix B.1).

    Args:
        base_learning_rate: Learning rate before scaling (flag `learning_rate`).
        batch_size: Global training batch size.
        scaling: `"linear"` gives `lr * batch_size / 256` (the paper's LARS
            recipe); `"sqrt"` gives `lr * sqrt(batch_size)` (better for small
            batches and long training).

    Returns:
        The peak learning rate.
    """
    if batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive. Received: batch_size={batch_size}")
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    raise ValueError(
        f"Unknown learning rate scaling. Expected one of {LEARNING_RATE_SCALINGS}. "
        f"Received: scaling={scaling!r}"
    )


def total_train_steps(
    num_examples: int, train_batch_size: int, train_epochs: int | float, train_steps: int = 0
) -> int:
    """Number of optimizer steps: `train_steps` if set, else from the epochs.

    The `+ 1` is the reference's: it makes the last partial batch count.

    Args:
        num_examples: Size of the training split.
        train_batch_size: Global batch size.
        train_epochs: Epochs to train when `train_steps` is 0.
        train_steps: Explicit step count; overrides the epochs when non-zero.
            Defaults to `0`.

    Returns:
        The total step count.
    """
    if train_steps:
        return int(train_steps)
    if train_batch_size <= 0:
        raise ValueError(
            f"`train_batch_size` must be positive. Received: train_batch_size={train_batch_size}"
        )
    return int(num_examples * train_epochs // train_batch_size + 1)


def warmup_steps_for(num_examples: int, train_batch_size: int, warmup_epochs: float) -> int:
    """Number of linear-warmup steps for `warmup_epochs` (may be fractional).

    Args:
        num_examples: Size of the training split.
        train_batch_size: Global batch size.
        warmup_epochs: Warmup length in epochs.

    Returns:
        `round(floor(warmup_epochs * num_examples / train_batch_size))`, as the
        reference computes it.
    """
    if train_batch_size <= 0:
        raise ValueError(
            f"`train_batch_size` must be positive. Received: train_batch_size={train_batch_size}"
        )
    if warmup_epochs < 0:
        raise ValueError(f"`warmup_epochs` must be >= 0. Received: warmup_epochs={warmup_epochs}")
    return int(round(warmup_epochs * num_examples // train_batch_size))


@keras.saving.register_keras_serializable(package="tf_simclr")
class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to the peak, then cosine decay to 0 (SimCLR).

    ```
    lr(step) = peak * step / warmup_steps                      step < warmup_steps
    lr(step) = peak * 0.5 * (1 + cos(pi * min(step - warmup_steps, D) / D))
                                                               otherwise,
    ```
    with `D = total_steps - warmup_steps`; the rate stays 0 after `total_steps`.
    Unlike the reference, `D = 0` gives 0 rather than NaN.

    Args:
        peak_learning_rate: The rate reached at the end of warmup (already
            scaled with the batch size, see `scale_learning_rate`).
        warmup_steps: Length of the linear warmup. `0` starts at the peak.
        total_steps: Step at which the rate reaches 0.
        name: Optional name scope. Defaults to `None`.
    """

    def __init__(
        self,
        peak_learning_rate: float,
        warmup_steps: int,
        total_steps: int,
        name: str | None = None,
    ):
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0. Received: warmup_steps={warmup_steps}")
        if total_steps < warmup_steps:
            raise ValueError(
                "`total_steps` must be >= `warmup_steps` (the cosine phase cannot be "
                f"negative). Received: warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name or "WarmUpAndCosineDecay"):
            step = ops.cast(step, "float32")
            peak = ops.cast(self.peak_learning_rate, "float32")
            warmup = float(self.warmup_steps)
            decay_steps = float(self.total_steps - self.warmup_steps)

            warmup_lr = peak * step / warmup if self.warmup_steps else peak * ops.ones_like(step)
            if decay_steps > 0:
                progress = ops.clip(step - warmup, 0.0, decay_steps) / decay_steps
                cosine_lr = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
            else:
                cosine_lr = ops.zeros_like(step)
            return ops.where(step < warmup, warmup_lr, cosine_lr)

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "name": self.name,
        }
