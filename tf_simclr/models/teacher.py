"""The teacher of a distillation run (`--teacher`): a frozen classifier `images -> logits`, from any saved model.

SimCLRv2's third stage distils a fine-tuned network into a student on unlabelled
images. The teacher may be a tf_simclr run (model_dir or `ckpt-<step>` folder), a
tf_simclr export, or a google-research/simclr SavedModel or checkpoint (the
official SimCLRv2 models); whatever it is, it becomes the same plain functional
Keras network (`export.network.export_network`): float32, batch norm never
synchronized, called in inference mode. Its architecture comes from the files,
not from the student's flags.

`describe_teacher` reads only metadata (for the checks before any work);
`load_teacher` builds the network and loads the weights.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import keras

log = logging.getLogger("tf_simclr")

FLAG = "--teacher"


@dataclasses.dataclass(frozen=True)
class TeacherInfo:
    """What a `--teacher` path holds, read from metadata alone.

    Attributes:
        path: The path as given.
        kind: 'checkpoint', 'export' or 'reference'.
        num_classes: Classes of its supervised head (0 when it has none).
        image_size: The image size it was trained at (None when unknown).
        architecture: Its architecture, in words (for logs and errors).
    """

    path: str
    kind: str
    num_classes: int
    image_size: Optional[int]
    architecture: str


def _model_words(model: dict) -> str:
    parts = [f"{model.get('backbone', 'resnet')}-{model.get('resnet_depth')}",
             f"width {model.get('width_multiplier')}"]
    if model.get("sk_ratio"):
        parts.append(f"sk {model['sk_ratio']}")
    return ", ".join(parts)


def describe_teacher(path: str) -> TeacherInfo:
    """Reads `--teacher`'s metadata; ValueError naming the fix when it is no classifier."""
    from tf_simclr.training.restore import weights_source_kind

    kind = weights_source_kind(path, flag=FLAG)
    if kind == "reference":
        from tf_simclr.reference import weights as reference_weights

        arch = reference_weights.open_reference(path).architecture
        info = TeacherInfo(path, kind, int(arch.num_classes or 0) if arch.has_supervised_head else 0,
                           None, arch.flags())
    else:
        if kind == "export":
            from tf_simclr.export.exports_dir import read_export_meta, resolve_export

            meta = read_export_meta(resolve_export(path))
            has_head = "logits_sup" in (meta.get("output_keys") or ())
        else:
            from tf_simclr.storage import checkpoint as ckpt_lib

            meta = ckpt_lib.read_meta(path)
            has_head = any(key.startswith("supervised_head/") for key in meta.get("paths", {}))
        model = (meta.get("config") or {}).get("model") or {}
        info = TeacherInfo(path, kind, int(meta.get("num_classes") or 0) if has_head else 0,
                           model.get("image_size"), _model_words(model))
    if not info.num_classes:
        raise ValueError(
            f"{FLAG}={path} has no supervised head, so it gives no class distribution to distil; pass a fine-tuned "
            "model (--train_mode=finetune), or a pretraining run with --lineareval_while_pretraining."
        )
    return info


def load_teacher(path: str) -> tuple[keras.Model, TeacherInfo]:
    """`(network images -> logits, info)`: the teacher's weights in a frozen functional model.

    Call inside the run's `strategy.scope()`, so its variables live where the student's do.
    """
    from tf_simclr.export.network import export_network

    info = describe_teacher(path)
    if info.kind == "export":
        from tf_simclr.export import load

        network = load.load_network(load.resolve_export(path))
    else:
        network = export_network(_built_model(info))
    teacher = keras.Model(network.input, network.output["logits_sup"], name="teacher")
    teacher.trainable = False
    log.info("Teacher: %s (%s, %d classes) from %s", info.kind, info.architecture, info.num_classes, path)
    return teacher, info


def _built_model(info: TeacherInfo):
    """A `SimCLRModel` of the teacher's own architecture with its weights (checkpoint or reference)."""
    from tf_simclr.models import factory

    if info.kind == "reference":
        from tf_simclr.reference import convert
        from tf_simclr.reference import weights as reference_weights

        reference = reference_weights.open_reference(info.path)
        selector = convert.resolve_selector(reference, None)  # The layer its head was trained on.
        model_config = reference.architecture.model_config(ft_proj_selector=selector, global_bn=False)
        model = factory.build_model(model_config, num_classes=info.num_classes, train_mode="finetune")
        if "supervised_head" not in reference_weights.load_into(model, reference, supervised_head=True):
            raise ValueError(f"{FLAG}={info.path}: its supervised head does not fit its projection head's layers; "
                             "the SavedModel's head cannot be read as a classifier.")
        return model
    from tf_simclr.config import config_from_dict
    from tf_simclr.storage import checkpoint as ckpt_lib

    meta = ckpt_lib.read_meta(info.path)
    model_config = dataclasses.replace(config_from_dict(meta.get("config")).model, global_bn=False)
    model = factory.build_model(model_config, num_classes=info.num_classes, train_mode="finetune")
    ckpt_lib.restore_checkpoint(info.path, model, None)
    return model
