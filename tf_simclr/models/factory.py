"""The one model factory: a `SimCLRModel` from a `Config`, with the rules every user of it shares.

Training, export, the checks before a run, evaluation and fine-tuning all build
their model here, so the rules below exist once:

* which runs have a supervised head (`has_supervised_head`);
* which layers a fine-tuning run freezes (`freeze`): the encoder's stages up to
  `--fine_tune_after_block`, and the projection-head layers after the one
  `--ft_proj_selector` feeds to the head.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
from keras import ops

from tf_simclr.config import Config, ModelConfig
from tf_simclr.models import backbones
from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.simclr import SimCLRModel


def has_supervised_head(config: Config, num_classes: Optional[int]) -> bool:
    """Fine-tuning and distillation train a supervised head; pretraining has one with --lineareval_while_pretraining."""
    wanted = config.train.train_mode in ("finetune", "distill") or config.train.lineareval_while_pretraining
    return bool(wanted and num_classes)


def build_model(
    config: ModelConfig,
    *,
    num_classes: Optional[int] = None,
    train_mode: str = "pretrain",
    objective=None,
    zero_init_logits_layer: bool = False,
    skip_nonfinite: bool = False,
    device_augment: Optional[keras.layers.Layer] = None,
    teacher: Optional[keras.Model] = None,
    microbatch_size: int = 0,
    microbatch_bn: str = "paired",
) -> SimCLRModel:
    """Builds (and initializes) a SimCLR model from a `ModelConfig`.

    Args:
        config: Encoder and head shapes.
        num_classes: Adds a supervised head with this many classes (needed for
            fine-tuning and for linear eval while pretraining). Defaults to None.
        train_mode: 'pretrain', 'finetune' or 'distill'.
        objective: The pretraining loss, defaults to NT-Xent (temperature 0.1);
            in distillation, `losses.Distillation`, which it defaults to.
        zero_init_logits_layer: Start the supervised head at zero.
        skip_nonfinite, device_augment, teacher, microbatch_size, microbatch_bn: See
            `SimCLRModel`.
    """
    if objective is None and train_mode == "pretrain":
        from tf_simclr.losses import NTXent

        objective = NTXent()
    if objective is None and train_mode == "distill":
        from tf_simclr.losses import Distillation

        objective = Distillation()
    encoder = backbones.build_encoder(config)
    projection_head = ProjectionHead(
        mode=config.proj_head_mode, out_dim=config.proj_out_dim, num_layers=config.num_proj_layers,
        batch_norm_decay=config.batch_norm_decay, global_bn=config.global_bn, name="projection_head",
    )
    supervised_head = None
    if num_classes:
        supervised_head = SupervisedHead(num_classes, zero_init=zero_init_logits_layer, name="head_supervised")
    model = SimCLRModel(
        encoder, projection_head, supervised_head, objective=objective, train_mode=train_mode,
        ft_proj_selector=config.ft_proj_selector, skip_nonfinite=skip_nonfinite, device_augment=device_augment,
        teacher=teacher, microbatch_size=microbatch_size, microbatch_bn=microbatch_bn,
    )
    if device_augment is not None:
        device_augment.build((None, None, None, 3))
    model(ops.zeros((1, config.image_size, config.image_size, 3)), training=False)
    return model


def model_from_config(config: Config, num_classes: Optional[int], *, plain_batch_norm: bool = False,
                      device_augment: bool = False, teacher: Optional[keras.Model] = None) -> SimCLRModel:
    """The model a run's config describes, with its head and freezing rules applied.

    Args:
        config: The run's config.
        num_classes: Classes of the dataset (0 or None: no labels, so no head).
        plain_batch_norm: Per-replica batch norm whatever `--global_bn` says (the
            same variables; for models built outside a strategy: exports, checks).
        device_augment: Add the `--augment_on=device` layer (pretraining runs only).
        teacher: The frozen teacher of a distillation run that trains (`models.teacher`).
    """
    t, model_config = config.train, config.model
    if plain_batch_norm:
        model_config = dataclasses.replace(model_config, global_bn=False)
    augment_layer = None
    if device_augment and t.train_mode == "pretrain":
        from tf_simclr.augment.device import DeviceAugment
        from tf_simclr.augment.spec import spec_from_config

        augment_layer = DeviceAugment(spec_from_config(config.data, model_config.image_size), seed=t.seed,
                                      name="device_augment")
    model = build_model(
        model_config,
        num_classes=num_classes if has_supervised_head(config, num_classes) else None,
        train_mode=t.train_mode,
        objective=objective_from_config(t),
        zero_init_logits_layer=t.zero_init_logits_layer,
        skip_nonfinite=t.skip_nonfinite_steps,
        device_augment=augment_layer,
        teacher=teacher,
        microbatch_size=t.microbatch_size,
        microbatch_bn=t.microbatch_bn,
    )
    if t.train_mode == "finetune":
        freeze(model, config)
    elif t.train_mode == "distill":
        freeze_unused_head_layers(model, model_config.ft_proj_selector)
    return model


def objective_from_config(train_config):
    """What a run minimizes besides the supervised head: `--loss` in pretraining, distillation in `distill`."""
    from tf_simclr import losses

    if train_config.train_mode == "pretrain":
        return losses.build_loss(train_config)
    if train_config.train_mode == "distill":
        return losses.Distillation.from_config(train_config)
    return None


def check_fine_tune_after_block(config: Config, num_stages: Optional[int] = None) -> None:
    """The one rule for --fine_tune_after_block: -1..stages-1, and only when fine-tuning."""
    k = config.train.fine_tune_after_block
    last = (num_stages - 1) if num_stages is not None else 4
    if config.train.train_mode != "finetune" and k > -1:
        raise ValueError(
            f"--fine_tune_after_block={k} freezes layers, which only --train_mode=finetune does; "
            f"use --fine_tune_after_block=-1 with --train_mode={config.train.train_mode}."
        )
    if not -1 <= k <= last:
        raise ValueError(
            f"--fine_tune_after_block must be in [-1, {last}] (-1 trains everything, {last} freezes the whole "
            f"encoder). Received: {k}"
        )


def freeze(model: SimCLRModel, config: Config) -> None:
    """A fine-tuning run's frozen layers (frozen batch norm runs in inference mode, statistics fixed).

    The encoder's stages 0..k for `--fine_tune_after_block=k` (-1 trains the whole
    encoder; the last stage freezes all of it, linear evaluation), and the
    projection-head layers after the one `--ft_proj_selector` feeds to the head:
    they get no gradient, and their batch-norm statistics must not drift either.
    """
    stages = backbones.encoder_stages(config.model, model.encoder)
    check_fine_tune_after_block(config, len(stages))
    for stage in stages[: config.train.fine_tune_after_block + 1]:
        for layer in stage:
            layer.trainable = False
    freeze_unused_head_layers(model, config.model.ft_proj_selector)


def freeze_unused_head_layers(model: SimCLRModel, ft_proj_selector: int) -> None:
    """Freezes the projection-head layers after the one that feeds the supervised head (fine-tuning, distillation)."""
    head = model.projection_head
    pairs = list(zip(head.dense_layers, head.bn_layers))
    first_unused = ft_proj_selector % (len(pairs) + 1)
    for dense, bn in pairs[first_unused:]:
        dense.trainable = False
        bn.trainable = False
