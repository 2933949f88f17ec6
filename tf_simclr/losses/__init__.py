"""Pretraining objectives by name (`--loss`), and the supervised head's loss.

    ntxent      NT-Xent, SimCLR's contrastive loss (`nt_xent`), with cross-replica negatives
    supervised  cross-entropy over labelled examples
    distillation  SimCLRv2's teacher-to-student loss (`--train_mode=distill`)

A pretraining loss is a class with `metric_names` and `__call__(outputs, labels)
-> (loss, logs)` (see `ntxent.NTXent`); `register_loss(name, factory)` makes
`--loss=name` build it with `factory(train_config)`. Backend-neutral (keras.ops).
"""

from __future__ import annotations

from typing import Callable

from tf_simclr.losses.distillation import Distillation, distillation_loss
from tf_simclr.losses.ntxent import NTXent, contrastive_loss, contrastive_metrics
from tf_simclr.losses.supervised import supervised_loss

LOSSES: dict[str, Callable] = {"nt_xent": NTXent.from_config}


def register_loss(name: str, factory: Callable, *, overwrite: bool = False) -> None:
    """Makes `--loss=name` (`TrainConfig(loss=name)`) pretrain with `factory(train_config)`."""
    if name in LOSSES and not overwrite:
        raise ValueError(f"A loss named {name!r} is already registered; pass overwrite=True to replace it.")
    LOSSES[name] = factory


def build_loss(train_config):
    """The pretraining loss `train_config.loss` names."""
    if train_config.loss not in LOSSES:
        raise ValueError(
            f"Unknown loss. Received: loss={train_config.loss!r}; registered: {sorted(LOSSES)} "
            "(add one with tf_simclr.register_loss)."
        )
    return LOSSES[train_config.loss](train_config)


__all__ = ["LOSSES", "register_loss", "build_loss", "NTXent", "contrastive_loss", "contrastive_metrics",
           "supervised_loss", "Distillation", "distillation_loss"]
