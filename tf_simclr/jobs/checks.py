"""Checks a config before any work, so a typo costs seconds, not a run.

`check_config` needs nothing but the config (no TensorFlow, no files).
`check_before_work` runs once the strategy exists: it looks at the file system,
the dataset's metadata and the architecture of checkpoints to resume or start
from, and still writes nothing. Both raise ValueError with a one-line message
that names the flag and the fix; the command line prints it as `error: ...`.
The rules themselves live with what they guard (the plan, the model factory,
the backbone, the augmentation spec, label subsets); this module only calls them
early.
"""

from __future__ import annotations

import logging
from typing import Optional

from tf_simclr.config import MODES, Config, check_label_subset

log = logging.getLogger("tf_simclr")

TRAINING_MODES = ("train", "train_then_eval")
# Flags that change variable shapes, as stored in a checkpoint's or export's meta "config".
ARCHITECTURE_FLAGS = ("backbone", "resnet_depth", "width_multiplier", "sk_ratio", "se_ratio", "proj_head_mode",
                      "proj_out_dim", "num_proj_layers")
_SHOWN_MISMATCHES = 3


# ------------------------------------------------------------------ Pure checks
def check_config(config: Config) -> None:
    """Raises ValueError naming the flag and the fix for the first contradiction found."""
    from tf_simclr import losses
    from tf_simclr.augment.spec import spec_from_config
    from tf_simclr.models import backbones, factory
    from tf_simclr.optim import optimizers

    m, d, t, r = config.model, config.data, config.train, config.run
    if r.mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}. Received: {r.mode}")
    backbone = backbones.get_backbone(m.backbone)
    if backbone.check is not None:
        backbone.check(m)
    if m.backbone != "resnet" and m.cifar_stem_stride != 1:
        raise ValueError(f"--cifar_stem_stride sets the stride of ResNet's CIFAR stem; --backbone={m.backbone} "
                         "has no such stem. Leave --cifar_stem_stride=1.")
    _check_image_size(config)
    if t.train_batch_size < 2 and t.train_mode == "pretrain":
        raise ValueError(f"--train_batch_size must be >= 2 for contrastive pretraining (negatives come from the batch). Received: {t.train_batch_size}")
    if t.temperature <= 0:
        raise ValueError(f"--temperature must be > 0. Received: {t.temperature}")
    if t.train_epochs <= 0 and t.train_steps <= 0:
        raise ValueError("Set --train_epochs or --train_steps to a positive number.")
    if r.few_label_baselines and (t.train_mode != "finetune" or r.mode not in TRAINING_MODES):
        raise ValueError("--few_label_baselines puts a fine-tune beside the same labels without pretraining; use it "
                         f"with --train_mode=finetune and --mode=train or train_then_eval. Received: --mode={r.mode} "
                         f"--train_mode={t.train_mode}")
    factory.check_fine_tune_after_block(config)
    if m.proj_head_mode == "nonlinear" and m.num_proj_layers < 1:
        raise ValueError(f"--num_proj_layers must be >= 1 with --proj_head_mode=nonlinear. Received: {m.num_proj_layers}")
    num_hiddens = {"none": 1, "linear": 2, "nonlinear": m.num_proj_layers + 1}[m.proj_head_mode]
    if not -num_hiddens <= m.ft_proj_selector < num_hiddens:
        raise ValueError(
            f"--ft_proj_selector={m.ft_proj_selector} is out of range for --proj_head_mode={m.proj_head_mode} "
            f"with {num_hiddens} selectable layers (use 0..{num_hiddens - 1} or -1)."
        )
    try:
        spec_from_config(d, m.image_size)
    except ValueError as e:
        raise ValueError(f"Augmentation flags: {e} (--color_jitter_strength, --min_crop_area, --image_size).") from None
    if t.checkpoint_steps < 0 or t.checkpoint_epochs < 1 and t.checkpoint_steps == 0:
        raise ValueError("--checkpoint_epochs must be >= 1 (or set --checkpoint_steps > 0).")
    if t.steps_per_execution < 1:
        raise ValueError(f"--steps_per_execution must be >= 1. Received: {t.steps_per_execution}")
    check_label_subset(t.train_label_fraction, t.train_subset_ids)
    if t.deterministic and t.seed is None:
        raise ValueError("--deterministic needs --seed (bit-exact runs draw weights and augmentation from it); pass e.g. --seed=0.")
    if d.augment_on == "device" and t.train_mode != "pretrain":
        raise ValueError(
            "--augment_on=device applies to pretraining only (fine-tuning's crop and flip run on the host); "
            "drop it or use --train_mode=pretrain."
        )
    if t.train_mode == "pretrain" and t.loss not in losses.LOSSES:
        raise ValueError(f"--loss={t.loss} is not a registered loss; choose one of {sorted(losses.LOSSES)}.")
    if t.microbatch_size and t.train_mode != "pretrain":
        raise ValueError(f"--microbatch_size chunks the contrastive loss of pretraining; --train_mode={t.train_mode} "
                         "has none. Drop it (or pass --microbatch_size=0).")
    if t.microbatch_size < 0:
        raise ValueError(f"--microbatch_size must be >= 0 (0 = off). Received: {t.microbatch_size}")
    if t.train_mode == "distill":
        _check_distill_flags(config)
    elif t.teacher:
        raise ValueError(f"--teacher is the teacher of --train_mode=distill; drop it or pass --train_mode=distill. "
                         f"Received: --train_mode={t.train_mode}")
    if t.optimizer not in optimizers.OPTIMIZERS:
        raise ValueError(f"--optimizer={t.optimizer} is not a registered optimizer; choose one of {sorted(optimizers.OPTIMIZERS)}.")


def _check_distill_flags(config: Config) -> None:
    """Distillation's own flags, without reading the teacher (`_check_teacher` does, before work)."""
    t = config.train
    if not t.teacher:
        raise ValueError("--train_mode=distill needs --teacher=<fine-tuned model_dir, ckpt-<step> folder, export or "
                         "google-research/simclr SavedModel>: the classifier the student learns from.")
    if t.distill_temperature <= 0:
        raise ValueError(f"--distill_temperature must be > 0 (1.0 is SimCLRv2's). Received: {t.distill_temperature}")
    if not 0 <= t.distill_label_weight <= 1:
        raise ValueError(f"--distill_label_weight must be in [0, 1] (0 = distillation only). Received: "
                         f"{t.distill_label_weight}")
    if (t.train_label_fraction or t.train_subset_ids) and not t.distill_label_weight:
        raise ValueError("--train_label_fraction/--train_subset_ids choose which labels distillation reads, but "
                         "--distill_label_weight=0 reads none (every image is distilled); drop them, or pass "
                         "--distill_label_weight > 0.")


def _check_image_size(config: Config) -> None:
    """The final feature map must hold at least one stride's worth of image, not just padding."""
    from tf_simclr.models import backbones

    m = config.model
    stride = backbones.total_stride(m)
    if m.image_size < stride:
        what = "CIFAR stem, used for --image_size <= 32" if m.backbone == "resnet" and m.cifar_stem else m.backbone
        raise ValueError(
            f"--image_size={m.image_size} is below the encoder's total stride of {stride} ({what}): its final "
            f"feature map would be padded up from a smaller image. Use --image_size >= {stride}."
        )


# ------------------------------------------------------------------ Checks before work
def check_before_work(config: Config, *, num_replicas: int, source=None) -> None:
    """Checks that need the strategy, the file system or the dataset, still before anything is written.

    Args:
        config: The run's configuration (already through `check_config`).
        num_replicas: The strategy's replicas in sync.
        source: The dataset's `ImageSource` (metadata only; None if it cannot be
            opened without preparing it).

    Raises:
        ValueError: naming the flag and the fix.
    """
    from tf_simclr.data.views import check_batch_divides
    from tf_simclr.distribute.jax_parallel import check_without_tensorflow

    check_without_tensorflow(config, source)  # The rule lives with JAX's devices; here it only runs early.
    t, mode = config.train, config.run.mode
    training = mode in TRAINING_MODES
    if training:
        from tf_simclr.steps.gradient_cache import check_microbatch

        check_batch_divides(t.train_batch_size, num_replicas)
        check_microbatch(t.microbatch_size, t.train_batch_size // num_replicas, batch_norm=t.microbatch_bn)
    if mode == "eval" and t.train_mode == "pretrain" and not t.lineareval_while_pretraining and not config.run.feature_eval:
        raise ValueError(
            "--mode=eval has nothing to evaluate: --train_mode=pretrain with --lineareval_while_pretraining=false "
            "trains no supervised head. Pass --lineareval_while_pretraining=true (for the run that trains) or --feature_eval."
        )
    if training or mode == "eval":
        check_writable("--model_dir", t.model_dir)
    export_base = _export_base(config)
    if export_base is not None:
        check_writable("--export_dir", export_base)
    if training:
        _check_plan(config, source)
        _warn_ineffective_blur(config)
    if training and t.train_mode == "distill":
        _check_teacher(config, source)
    if training or mode == "export":
        _check_weights_source(config, source)
    elif mode == "eval":
        _check_reference_to_evaluate(config, source)


def _check_teacher(config: Config, source) -> None:
    """The teacher exists, is a classifier, and has the dataset's classes (metadata only)."""
    from tf_simclr.models.teacher import describe_teacher

    d, t = config.data, config.train
    teacher = describe_teacher(t.teacher)
    num_classes = getattr(source, "num_classes", 0) or 0
    if num_classes and teacher.num_classes != num_classes:
        raise ValueError(
            f"--teacher={t.teacher} predicts {teacher.num_classes} classes, --dataset={d.dataset} has {num_classes}; "
            "distil on the teacher's own classes (its dataset, or unlabelled images)."
        )
    labelled = source is not None and source.is_labeled(d.train_split)
    if t.distill_label_weight and source is not None and not labelled:
        raise ValueError(f"--distill_label_weight={t.distill_label_weight} needs labels, and --train_split="
                         f"{d.train_split} of {d.dataset} has none; pass --distill_label_weight=0.")
    if teacher.image_size and teacher.image_size != config.model.image_size:
        log.warning("--teacher was trained at %d px; it sees the student's %d px views (--image_size).",
                    teacher.image_size, config.model.image_size)


def check_writable(flag: str, path: str) -> None:
    """Raises unless `path` is, or could be created as, a writable folder; creates nothing.

    Remote paths (`gs://...`) are checked when the first file is written.
    """
    import os

    from tf_simclr.storage import fs

    if fs.is_url(path):
        return
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


def _export_base(config: Config) -> Optional[str]:
    """The folder exports will be written to in this run, or None when nothing is exported."""
    from tf_simclr.export import exports_dir

    t, mode = config.train, config.run.mode
    exports = mode == "export" or (mode in TRAINING_MODES and (t.export_at_end or t.export_every_checkpoint))
    if not exports:
        return None
    if t.export_dir:
        return t.export_dir
    try:
        return exports_dir.default_export_dir(t.model_dir)
    except ValueError as e:
        raise ValueError(f"{e} (pass --export_dir, or --export_at_end=false).") from None


def _num_train_examples(config: Config, source) -> Optional[int]:
    """Size of the training split, or None when it needs preparing or a subset draw to know."""
    t = config.train
    if source is None or t.train_label_fraction or t.train_subset_ids:
        return None
    try:
        return int(source.num_examples(config.data.train_split))
    except (ValueError, RuntimeError, OSError, KeyError, FileNotFoundError):
        return None


def _check_plan(config: Config, source) -> None:
    """The plan's own rule (`optim.plan.make_plan`), early: with the dataset's size, or the explicit steps."""
    from tf_simclr.optim.plan import make_plan

    t = config.train
    examples = _num_train_examples(config, source)
    if examples is None:
        if not (t.train_steps > 0 and t.checkpoint_steps > 0):
            return  # Not knowable yet; the trainer checks again.
        examples = t.train_batch_size  # Any size: steps and checkpoint period are explicit.
    make_plan(config, examples, warn=False)


def _warn_ineffective_blur(config: Config) -> None:
    """--use_blur below 20 px is a no-op (one-tap kernel), not an error: it is the default."""
    from tf_simclr.augment.spec import spec_from_config

    d, t = config.data, config.train
    spec = spec_from_config(d, config.model.image_size)
    if t.train_mode == "pretrain" and d.use_blur and spec.blur_kernel_size // 2 == 0:
        log.warning(
            "--use_blur has no effect at --image_size=%d: the blur kernel is image_size // 10 = %d tap(s), the "
            "identity below 20 px. Pass --use_blur=false to say so (the reference does for CIFAR-10).",
            spec.image_size, spec.blur_kernel_size,
        )


# ------------------------------------------------------------------ Checkpoint architecture
def _check_weights_source(config: Config, source) -> None:
    """The checkpoint to resume from, or --checkpoint to start from, exists and fits the flags' model."""
    from tf_simclr.models import factory
    from tf_simclr.storage import checkpoint as ckpt_lib
    from tf_simclr.training import restore

    t = config.train
    resume = ckpt_lib.latest_checkpoint(t.model_dir)
    if config.run.mode == "export":
        if not resume and t.checkpoint and restore.weights_source_kind(t.checkpoint) == "reference":
            _check_reference_architecture(t.checkpoint, config, head_evaluated=True)
        return
    num_classes = getattr(source, "num_classes", 0) or None
    with_head = factory.has_supervised_head(config, num_classes or 2)
    if resume:
        unknown_head = with_head and num_classes is None  # Compare the rest; restore checks the head later.
        model = factory.model_from_config(config, (num_classes or 2) if with_head else None, plain_batch_norm=True)
        skipped = ("supervised_head",) if unknown_head else ()
        _raise_on_mismatch(f"--model_dir={t.model_dir} holds {resume}", resume, model, skipped, config)
        stored = ckpt_lib.read_meta(resume).get("config")
        _refuse_other_stem_stride(f"--model_dir={t.model_dir} holds {resume}, which", stored, config)
        return
    if not t.checkpoint:
        if t.train_mode == "finetune":
            raise ValueError(
                f"--train_mode=finetune needs --checkpoint: --model_dir={t.model_dir} holds no checkpoint to resume."
            )
        return
    kind = restore.weights_source_kind(t.checkpoint)
    if kind == "reference":
        _check_reference_architecture(t.checkpoint, config)
    elif kind == "export":
        _check_export_architecture(t.checkpoint, config)
    else:
        model = factory.model_from_config(config, (num_classes or 2) if t.train_mode != "pretrain" else None,
                                          plain_batch_norm=True)
        folder = ckpt_lib.resolve_checkpoint(t.checkpoint)
        _raise_on_mismatch(f"--checkpoint={t.checkpoint}", folder, model, ("supervised_head",), config)
        _refuse_other_stem_stride(f"--checkpoint={t.checkpoint}", ckpt_lib.read_meta(folder).get("config"), config)


def checkpoint_mismatches(folder: str, model, exclude_parts: tuple[str, ...] = ()) -> list[str]:
    """The variables `checkpoint.restore_checkpoint` would refuse, by its rule, without loading any array."""
    from tf_simclr.storage import atomic, fs
    from tf_simclr.storage import checkpoint as ckpt_lib

    paths = atomic.read_json(fs.join(folder, ckpt_lib.META_FILE)).get("paths", {})
    targets = {k: v for k, v in ckpt_lib.named_variables(model).items() if k.split("/")[0] not in exclude_parts}
    return ckpt_lib.mismatches(targets, ckpt_lib.stored_shapes(folder), paths)


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
    stride = _stem_stride_difference(stored, here)
    if stride:
        diffs.append(stride)
    return diffs


def _stem_stride_difference(stored: dict, here) -> str:
    """`--cifar_stem_stride=<stored> (here <ours>)` when they differ (absent means 1, as before the flag), else ''."""
    stored_stride = stored.get("cifar_stem_stride", 1)
    if stored_stride == here.cifar_stem_stride:
        return ""
    return f"--cifar_stem_stride={stored_stride} (here {here.cifar_stem_stride})"


def _refuse_other_stem_stride(what: str, meta_config: dict, config: Config) -> None:
    """The stem's stride changes the model but no variable's shape, so shape checks cannot see it: compare the meta."""
    difference = _stem_stride_difference((meta_config or {}).get("model") or {}, config.model)
    if difference:
        raise ValueError(f"{what} was trained with {difference}: its weights fit either stride but compute another "
                         "model; pass the same --cifar_stem_stride.")


def _raise_on_mismatch(what: str, folder: str, model, exclude_parts: tuple[str, ...], config: Config) -> None:
    problems = checkpoint_mismatches(folder, model, exclude_parts)
    if not problems:
        return
    from tf_simclr.storage import checkpoint as ckpt_lib

    diffs = _flag_differences(ckpt_lib.read_meta(folder).get("config"), config)
    shown = "; ".join(problems[:_SHOWN_MISMATCHES]) + ("; ..." if len(problems) > _SHOWN_MISMATCHES else "")
    hint = f"It was written with {', '.join(diffs)}" if diffs else "Was it written with other architecture flags?"
    raise ValueError(
        f"{what}, written by a different architecture: {len(problems)} variables do not match ({shown}). "
        f"{hint}; pass the same architecture flags, or another --model_dir/--checkpoint."
    )


def _check_export_architecture(path: str, config: Config) -> None:
    """Compares the architecture flags recorded in an export's meta (no weights are loaded)."""
    from tf_simclr.export import exports_dir

    meta = exports_dir.read_export_meta(path)
    diffs = _flag_differences(meta.get("config"), config)
    if diffs:
        raise ValueError(
            f"--checkpoint={path} is an export of a different architecture: it was trained with "
            f"{', '.join(diffs)}; pass the same architecture flags."
        )


# ------------------------------------------------------------------ Reference models (google-research/simclr)
def _check_reference_architecture(path: str, config: Config, *, head_evaluated: bool = False):
    """Architecture flags against what a reference model's variables hold (names and shapes only).

    With `head_evaluated` (eval, export) `--ft_proj_selector` must also feed the supervised
    head what it was trained on; a training run only hears a warning (its head may start fresh).
    """
    from tf_simclr.reference import convert
    from tf_simclr.reference import weights as reference_weights
    from tf_simclr.reference.architecture import contradictions

    reference = reference_weights.open_reference(path)
    found = contradictions(reference.architecture, config.model)
    if found:
        raise ValueError(
            f"--checkpoint={path} is a google-research/simclr model whose variables contradict the flags: "
            f"{', '.join(found)}; pass its architecture: {reference.architecture.flags()}."
        )
    if head_evaluated and reference.architecture.has_supervised_head:
        convert.resolve_selector(reference, config.model.ft_proj_selector, strict=True)
    elif (reference.architecture.has_supervised_head and config.train.train_mode == "finetune"
          and not config.train.zero_init_logits_layer):
        widths = reference.architecture.hidden_widths()
        if widths[config.model.ft_proj_selector] == reference.architecture.head_input_dim:  # The head is restored.
            convert.resolve_selector(reference, config.model.ft_proj_selector)  # Warns on another layer.
    return reference


def _check_reference_to_evaluate(config: Config, source) -> None:
    """--mode=eval with a reference --checkpoint (and no checkpoint to follow): its supervised head must fit."""
    from tf_simclr.models import factory
    from tf_simclr.reference import files as reference_files
    from tf_simclr.storage import checkpoint as ckpt_lib

    t = config.train
    if not t.checkpoint or ckpt_lib.latest_checkpoint(t.model_dir) or not reference_files.is_reference(t.checkpoint):
        return
    num_classes = getattr(source, "num_classes", 0) or 0
    head_evaluated = factory.has_supervised_head(config, num_classes or 2)  # Else --feature_eval reads the encoder.
    arch = _check_reference_architecture(t.checkpoint, config, head_evaluated=head_evaluated).architecture
    if not head_evaluated:
        return
    if not arch.has_supervised_head:
        raise ValueError(f"--mode=eval: --checkpoint={t.checkpoint} has no supervised head to evaluate; fine-tune it "
                         "first (--mode=train --train_mode=finetune) or use --feature_eval.")
    if num_classes and arch.num_classes != num_classes:
        raise ValueError(f"--mode=eval: --checkpoint={t.checkpoint}'s supervised head has {arch.num_classes} classes, "
                         f"--dataset={config.data.dataset} has {num_classes}; evaluate it on its own dataset.")
