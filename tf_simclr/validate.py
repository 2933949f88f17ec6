"""Checks a config before any work, so a typo costs seconds, not a run.

`check_config` needs nothing but the config (no TensorFlow, no files).
`check_before_work` runs once the strategy exists: it looks at the file system,
the dataset's metadata and the architecture of checkpoints to resume or start
from, and still writes nothing. Both raise ValueError with a one-line message
that names the flag and the fix; run.py prints it as `run.py: error: ...`.
"""

from __future__ import annotations

import logging
import os
import zipfile
from typing import Optional

import numpy as np

from tf_simclr.config import Config, ModelConfig

log = logging.getLogger("tf_simclr")

VALID_DEPTHS = (18, 34, 50, 101, 152, 200)
TRAINING_MODES = ("train", "train_then_eval")
# Total downsampling of `resnet.resnet`: the CIFAR stem (image_size <= 32) keeps the
# resolution and block groups 2-4 halve it; the ImageNet stem adds a stride-2 conv and
# a stride-2 max pool. Padding rounds every stage up, so the final map is never below
# 1x1; under one stride's worth of pixels it is made of padding instead of image.
CIFAR_STEM_STRIDE = 8
IMAGENET_STEM_STRIDE = 32
# `augment.random_blur` uses a kernel of image_size // 10 taps, one tap (no blur) below 20 px.
MIN_BLUR_IMAGE_SIZE = 20
# Flags that change variable shapes, as stored in a checkpoint's or export's meta "config".
ARCHITECTURE_FLAGS = ("resnet_depth", "width_multiplier", "sk_ratio", "se_ratio", "proj_head_mode", "proj_out_dim", "num_proj_layers")
_SHOWN_MISMATCHES = 3


def encoder_stride(model: ModelConfig) -> int:
    """How much the encoder the config describes downsamples (8 with the CIFAR stem, else 32)."""
    return CIFAR_STEM_STRIDE if model.cifar_stem else IMAGENET_STEM_STRIDE


# ------------------------------------------------------------------ Pure checks
def check_config(config: Config) -> None:
    """Raises ValueError naming the flag and the fix for the first contradiction found."""
    m, d, t = config.model, config.data, config.train
    if m.resnet_depth not in VALID_DEPTHS:
        raise ValueError(f"--resnet_depth must be one of {VALID_DEPTHS}. Received: {m.resnet_depth}")
    if m.width_multiplier <= 0:
        raise ValueError(f"--width_multiplier must be > 0 (fractions like 0.125 are fine). Received: {m.width_multiplier}")
    _check_image_size(m)
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
    if t.deterministic and t.seed is None:
        raise ValueError("--deterministic needs --seed (bit-exact runs draw weights and augmentation from it); pass e.g. --seed=0.")
    if d.augment_on == "device" and t.train_mode != "pretrain":
        raise ValueError(
            "--augment_on=device applies to pretraining only (fine-tuning's crop and flip run on the host); "
            "drop it or use --train_mode=pretrain."
        )
    if t.train_mode == "finetune" and not t.checkpoint and not os.path.isdir(t.model_dir):
        raise ValueError("--train_mode=finetune needs --checkpoint (a pretraining model_dir or ckpt-<step> folder).")


def _check_image_size(m: ModelConfig) -> None:
    """The final feature map must hold at least one stride's worth of image, not just padding."""
    stride = encoder_stride(m)
    if m.image_size < stride:
        raise ValueError(
            f"--image_size={m.image_size} is below the encoder's total stride of {stride} (CIFAR stem, used for "
            f"--image_size <= 32): its final 1x1 feature map would be padded up from a smaller image. "
            f"Use --image_size >= {stride}."
        )


def steps_per_execution_problem(config: Config, num_train_examples: Optional[int]) -> Optional[str]:
    """The `train.make_plan` divisibility rule, checked early; None when fine or not yet knowable.

    Args:
        config: The run's configuration.
        num_train_examples: Size of the training split, or None when unknown (then
            only --train_steps with --checkpoint_steps can be checked).
    """
    from tf_simclr import schedule  # Pure Python.

    t = config.train
    spe = t.steps_per_execution
    if spe <= 1:
        return None
    if num_train_examples is None:
        if not (t.train_steps > 0 and t.checkpoint_steps > 0):
            return None
        total, every = t.train_steps, t.checkpoint_steps
    else:
        epoch_steps = max(1, int(round(num_train_examples / t.train_batch_size)))
        total = schedule.total_train_steps(num_train_examples, t.train_batch_size, t.train_epochs, t.train_steps)
        every = t.checkpoint_steps or t.checkpoint_epochs * epoch_steps
    checkpoint_every = max(1, min(every, total))
    if total % spe == 0 and checkpoint_every % spe == 0:
        return None
    return (
        f"--steps_per_execution={spe} must divide both the training steps ({total}) and the steps between "
        f"checkpoints ({checkpoint_every}); set --train_steps and --checkpoint_steps to multiples of {spe}, "
        "or lower --steps_per_execution."
    )


# ------------------------------------------------------------------ Checks before work
def check_before_work(config: Config, *, mode: str, num_replicas: int, feature_eval: bool = False) -> None:
    """Checks that need the strategy, the file system or the dataset, still before anything is written.

    Args:
        config: The run's configuration (already through `check_config`).
        mode: run.py's --mode: train, eval, train_then_eval or export.
        num_replicas: The strategy's replicas in sync.
        feature_eval: run.py's --feature_eval (something to evaluate without a supervised head).

    Raises:
        ValueError: naming the flag and the fix.
    """
    t = config.train
    training = mode in TRAINING_MODES
    if training and t.train_batch_size % num_replicas:
        lower = t.train_batch_size // num_replicas * num_replicas
        raise ValueError(
            f"--train_batch_size={t.train_batch_size} must be a multiple of the {num_replicas} replicas; "
            f"use {max(lower, num_replicas)} or {lower + num_replicas}."
        )
    if mode == "eval" and t.train_mode == "pretrain" and not t.lineareval_while_pretraining and not feature_eval:
        raise ValueError(
            "--mode=eval has nothing to evaluate: --train_mode=pretrain with --lineareval_while_pretraining=false "
            "trains no supervised head. Pass --lineareval_while_pretraining=true (for the run that trains) or --feature_eval."
        )
    if training or mode == "eval":
        check_writable("--model_dir", t.model_dir)
    export_base = _export_base(config, mode)
    if export_base is not None:
        check_writable("--export_dir", export_base)
    source = _source_or_none(config) if training else None
    if training:
        problem = steps_per_execution_problem(config, _num_train_examples(config, source))
        if problem:
            raise ValueError(problem)
        _warn_ineffective_blur(config)
    if training or mode == "export":
        _check_weights_source(config, mode, source)


def check_writable(flag: str, path: str) -> None:
    """Raises unless `path` is, or could be created as, a writable folder; creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}={path} is a file, not a folder; pass a folder path (or remove the file).")
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{flag}={path} cannot be created: {ancestor} is a file, not a folder; pick another path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        where = "it" if ancestor == os.path.abspath(path) else f"its parent {ancestor}"
        raise ValueError(f"{flag}={path} is not writable ({where} denies write access); pick a folder you can write to.")


def _export_base(config: Config, mode: str) -> Optional[str]:
    """The folder exports will be written to in this run, or None when nothing is exported."""
    t = config.train
    exports = mode == "export" or (mode in TRAINING_MODES and (t.export_at_end or t.export_every_checkpoint))
    if not exports:
        return None
    if t.export_dir:
        return t.export_dir
    from tf_simclr import export  # TensorFlow is loaded by now (the strategy exists).

    try:
        return export.default_export_dir(t.model_dir)
    except ValueError as e:
        raise ValueError(f"{e} (pass --export_dir, or --export_at_end=false).") from None


def _source_or_none(config: Config):
    """The training dataset's metadata without preparing it; None if it cannot be opened cheaply."""
    from tf_simclr import data

    try:
        return data.load_source(config.data.dataset, config.data.data_dir, prepare=False)
    except (ValueError, RuntimeError, OSError):
        return None


def _num_train_examples(config: Config, source) -> Optional[int]:
    """Size of the training split, or None when it needs preparing or a subset draw to know."""
    t = config.train
    if source is None or t.train_label_fraction or t.train_subset_ids:
        return None
    try:
        return int(source.num_examples(config.data.train_split))
    except (ValueError, RuntimeError, OSError, KeyError):
        return None


def _warn_ineffective_blur(config: Config) -> None:
    """--use_blur below 20 px is a no-op (one-tap kernel), not an error: it is the default."""
    d = config.data
    if config.train.train_mode == "pretrain" and d.use_blur and d.image_size < MIN_BLUR_IMAGE_SIZE:
        log.warning(
            "--use_blur has no effect at --image_size=%d: the blur kernel is image_size // 10 = %d tap(s), the "
            "identity below %d px. Pass --use_blur=false to say so (the reference does for CIFAR-10).",
            d.image_size, d.image_size // 10, MIN_BLUR_IMAGE_SIZE,
        )


# ------------------------------------------------------------------ Checkpoint architecture
def _check_weights_source(config: Config, mode: str, source) -> None:
    """The checkpoint to resume from, or --checkpoint to start from, exists and fits the flags' model."""
    from tf_simclr import checkpoint as ckpt_lib

    t = config.train
    resume = ckpt_lib.latest_checkpoint(t.model_dir)
    if mode == "export":
        if not resume and t.checkpoint:
            _resolve_weights_path(t.checkpoint)
        return
    num_classes = getattr(source, "num_classes", 0) or None
    if resume:
        with_head = t.train_mode == "finetune" or t.lineareval_while_pretraining
        unknown_head = with_head and num_classes is None  # Compare the rest; restore checks the head later.
        model = _model_from_flags(config, (num_classes or 2) if with_head else None)
        skipped = ("supervised_head",) if unknown_head else ()
        _raise_on_mismatch(f"--model_dir={t.model_dir} holds {resume}", resume, model, skipped, config)
        return
    if not t.checkpoint:
        if t.train_mode == "finetune":
            raise ValueError(
                f"--train_mode=finetune needs --checkpoint: --model_dir={t.model_dir} holds no checkpoint to resume."
            )
        return
    kind, folder = _resolve_weights_path(t.checkpoint)
    if kind == "export":
        _check_export_architecture(folder, config)
    else:
        model = _model_from_flags(config, (num_classes or 2) if t.train_mode == "finetune" else None)
        _raise_on_mismatch(f"--checkpoint={t.checkpoint}", folder, model, ("supervised_head",), config)


def _resolve_weights_path(path: str) -> tuple[str, str]:
    """('checkpoint' or 'export', folder) for --checkpoint; raises for a missing or foreign path."""
    from tf_simclr import checkpoint as ckpt_lib
    from tf_simclr import export as export_lib

    if not os.path.exists(path):
        raise ValueError(f"--checkpoint={path} does not exist; pass a pretraining model_dir, a ckpt-<step> folder or an exported module.")
    if not ckpt_lib.checkpoint_steps(path) and export_lib.is_export(path):
        return "export", export_lib.resolve_export(path)
    try:
        return "checkpoint", ckpt_lib.resolve_checkpoint(path)
    except FileNotFoundError:
        raise ValueError(
            f"--checkpoint={path} holds no tf_simclr checkpoint (ckpt-<step>/meta.json) nor exported module "
            "(saved_model.pb); pass a pretraining model_dir, a ckpt-<step> folder or an exported module."
        ) from None


def _model_from_flags(config: Config, num_classes: Optional[int]):
    """The model the flags describe, built (variables only matter) but never trained."""
    import dataclasses

    from tf_simclr import model as model_lib

    t = config.train
    return model_lib.build_model(
        dataclasses.replace(config.model, global_bn=False),  # Same shapes; no strategy needed.
        num_classes=num_classes,
        train_mode=t.train_mode,
        temperature=t.temperature,
        hidden_norm=t.hidden_norm,
    )


def stored_shapes(folder: str) -> dict[str, tuple]:
    """Shape of every array in a checkpoint's variables.npz, read from the headers only."""
    from tf_simclr import checkpoint as ckpt_lib

    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes = {}
    with zipfile.ZipFile(os.path.join(folder, ckpt_lib.VARIABLES_FILE)) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version in readers:
                    shape = readers[version](f)[0]
                else:  # Rare header versions: read the array itself.
                    f.seek(0)
                    shape = np.lib.format.read_array(f).shape
            shapes[name[: -len(".npy")]] = tuple(shape)
    return shapes


def checkpoint_mismatches(folder: str, model, exclude_parts: tuple[str, ...] = ()) -> list[str]:
    """The variables `checkpoint.restore_checkpoint` would refuse, by its rule, without loading any array.

    Model variables are keyed `<part>/<index>` like the checkpoint's; each must be
    stored with its shape, and a stored variable of a compared part must exist in
    the model. Optimizer slots are not compared.
    """
    import json

    from tf_simclr import checkpoint as ckpt_lib

    stored = stored_shapes(folder)
    with open(os.path.join(folder, ckpt_lib.META_FILE)) as f:
        paths = json.load(f).get("paths", {})
    targets = {
        f"{part}/{i}": v
        for part, holder in model.checkpoint_parts().items()
        if part not in exclude_parts
        for i, v in enumerate(holder.variables)
    }
    problems = []
    for key, variable in targets.items():
        shape = tuple(variable.shape)
        if key not in stored:
            problems.append(f"{variable.path} {shape} missing in checkpoint")
        elif stored[key] != shape:
            problems.append(f"{variable.path} is {shape} here but {stored[key]} in checkpoint")
    parts = {key.split("/")[0] for key in targets}
    extra = sorted(k for k in stored if k.split("/")[0] in parts and k not in targets)
    problems += [f"{paths.get(k, k)} {stored[k]} not in this model" for k in extra]
    return problems


def _flag_differences(meta_config: dict, config: Config) -> list[str]:
    """Architecture flags whose value in a checkpoint's/export's meta differs from these flags."""
    stored = (meta_config or {}).get("model") or {}
    here = config.model
    names = list(ARCHITECTURE_FLAGS)
    if stored.get("proj_head_mode") == here.proj_head_mode != "nonlinear":  # Head sizes unused or partly used.
        names.remove("num_proj_layers")
        if here.proj_head_mode == "none":
            names.remove("proj_out_dim")
    diffs = [
        f"--{name}={stored[name]} (here {getattr(here, name)})"
        for name in names
        if name in stored and stored[name] != getattr(here, name)
    ]
    if "image_size" in stored and (stored["image_size"] <= 32) != here.cifar_stem:
        diffs.append(f"--image_size={stored['image_size']} (here {here.image_size}: the stem differs at 32 px)")
    return diffs


def _raise_on_mismatch(what: str, folder: str, model, exclude_parts: tuple[str, ...], config: Config) -> None:
    problems = checkpoint_mismatches(folder, model, exclude_parts)
    if not problems:
        return
    import json

    from tf_simclr import checkpoint as ckpt_lib

    with open(os.path.join(folder, ckpt_lib.META_FILE)) as f:
        diffs = _flag_differences(json.load(f).get("config"), config)
    shown = "; ".join(problems[:_SHOWN_MISMATCHES]) + ("; ..." if len(problems) > _SHOWN_MISMATCHES else "")
    hint = f"It was written with {', '.join(diffs)}" if diffs else "Was it written with other architecture flags?"
    raise ValueError(
        f"{what}, written by a different architecture: {len(problems)} variables do not match ({shown}). "
        f"{hint}; pass the same architecture flags, or another --model_dir/--checkpoint."
    )


def _check_export_architecture(folder: str, config: Config) -> None:
    """Compares the architecture flags recorded in an export's meta (no weights are loaded)."""
    from tf_simclr import export as export_lib

    meta = export_lib.read_export_meta(folder)
    diffs = _flag_differences(meta.get("config"), config)
    if diffs:
        raise ValueError(
            f"--checkpoint={config.train.checkpoint} is an export of a different architecture: it was trained with "
            f"{', '.join(diffs)}; pass the same architecture flags."
        )
