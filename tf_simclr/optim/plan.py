"""How long a run trains, when it checkpoints, and its learning rate: the one place that derives them.

The reference computes steps from epochs (`+ 1` for the last partial batch),
warmup from `--warmup_epochs` and scales the learning rate with the batch; the
trainer, the checks before a run and the eval loop all ask `make_plan`.
"""

from __future__ import annotations

import dataclasses
import logging

from tf_simclr.config import Config
from tf_simclr.optim import schedules

log = logging.getLogger("tf_simclr")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts and the learning rate derived from the config and the dataset size."""

    num_train_examples: int
    epoch_steps: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int
    summary_every: int
    peak_learning_rate: float


def make_plan(config: Config, num_train_examples: int, *, warn: bool = True) -> Plan:
    """Derives steps and the scaled learning rate the way the reference does.

    Raises:
        ValueError: `--steps_per_execution` does not divide the training steps and
            the steps between checkpoints (runs would overshoot them).
    """
    t = config.train
    epoch_steps = max(1, int(round(num_train_examples / t.train_batch_size)))
    total = schedules.total_train_steps(num_train_examples, t.train_batch_size, t.train_epochs, t.train_steps)
    every = t.checkpoint_steps or t.checkpoint_epochs * epoch_steps
    warmup = schedules.warmup_steps_for(num_train_examples, t.train_batch_size, t.warmup_epochs)
    if warmup > total:
        if warn:
            log.warning("--warmup_epochs=%g is %d steps, more than the %d training steps: warming up over all of them.",
                        t.warmup_epochs, warmup, total)
        warmup = total
    checkpoint_every = max(1, min(every, total))
    spe = t.steps_per_execution
    if spe > 1 and (total % spe or checkpoint_every % spe):
        raise ValueError(
            f"--steps_per_execution={spe} must divide both the training steps ({total}) and the steps between "
            f"checkpoints ({checkpoint_every}), or runs would overshoot them; set --train_steps and "
            f"--checkpoint_steps to multiples of {spe}, or lower --steps_per_execution."
        )
    return Plan(
        num_train_examples=num_train_examples,
        epoch_steps=epoch_steps,
        total_steps=total,
        warmup_steps=warmup,
        checkpoint_every=checkpoint_every,
        summary_every=t.summary_steps or checkpoint_every,
        peak_learning_rate=schedules.scale_learning_rate(t.learning_rate, t.train_batch_size, t.learning_rate_scaling),
    )
