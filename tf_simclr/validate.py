"""Checks a config before any work, so a typo costs seconds, not a run."""

from __future__ import annotations

import os

from tf_simclr.config import Config

VALID_DEPTHS = (18, 34, 50, 101, 152, 200)


def check_config(config: Config) -> None:
    """Raises ValueError naming the flag and the fix for the first contradiction found."""
    m, d, t = config.model, config.data, config.train
    if m.resnet_depth not in VALID_DEPTHS:
        raise ValueError(f"--resnet_depth must be one of {VALID_DEPTHS}. Received: {m.resnet_depth}")
    if m.width_multiplier <= 0:
        raise ValueError(f"--width_multiplier must be > 0 (fractions like 0.125 are fine). Received: {m.width_multiplier}")
    if m.image_size < 8:
        raise ValueError(f"--image_size must be at least 8 pixels. Received: {m.image_size}")
    if t.train_batch_size < 2 and t.train_mode == "pretrain":
        raise ValueError(f"--train_batch_size must be >= 2 for contrastive pretraining (negatives come from the batch). Received: {t.train_batch_size}")
    if t.temperature <= 0:
        raise ValueError(f"--temperature must be > 0. Received: {t.temperature}")
    if t.train_epochs <= 0 and t.train_steps <= 0:
        raise ValueError("Set --train_epochs or --train_steps to a positive number.")
    if t.train_mode == "pretrain" and t.fine_tune_after_block > -1:
        raise ValueError(f"--fine_tune_after_block={t.fine_tune_after_block} only applies to --train_mode=finetune; use -1 for pretraining.")
    if not -1 <= t.fine_tune_after_block <= 4:
        raise ValueError(f"--fine_tune_after_block must be in [-1, 4]. Received: {t.fine_tune_after_block}")
    if m.proj_head_mode == "nonlinear" and m.num_proj_layers < 1:
        raise ValueError(f"--num_proj_layers must be >= 1 with --proj_head_mode=nonlinear. Received: {m.num_proj_layers}")
    num_hiddens = {"none": 1, "linear": 2, "nonlinear": m.num_proj_layers + 1}[m.proj_head_mode]
    if not -num_hiddens <= m.ft_proj_selector < num_hiddens:
        raise ValueError(
            f"--ft_proj_selector={m.ft_proj_selector} is out of range for --proj_head_mode={m.proj_head_mode} "
            f"with {num_hiddens} selectable layers (use 0..{num_hiddens - 1} or -1)."
        )
    if d.color_jitter_strength < 0:
        raise ValueError(f"--color_jitter_strength must be >= 0. Received: {d.color_jitter_strength}")
    if t.checkpoint_steps < 0 or t.checkpoint_epochs < 1 and t.checkpoint_steps == 0:
        raise ValueError("--checkpoint_epochs must be >= 1 (or set --checkpoint_steps > 0).")
    if t.steps_per_execution < 1:
        raise ValueError(f"--steps_per_execution must be >= 1. Received: {t.steps_per_execution}")
    if not 0 <= t.train_label_fraction <= 1:
        raise ValueError(f"--train_label_fraction must be in [0, 1] (0 = all labels, 0.01 = 1%). Received: {t.train_label_fraction}")
    if t.train_subset_ids and t.train_label_fraction:
        raise ValueError("Pass --train_subset_ids or --train_label_fraction, not both.")
    if t.train_mode == "finetune" and not t.checkpoint and not os.path.isdir(t.model_dir):
        raise ValueError("--train_mode=finetune needs --checkpoint (a pretraining model_dir or ckpt-<step> folder).")
