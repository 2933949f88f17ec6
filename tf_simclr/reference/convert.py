"""A reference model in tf_simclr's own formats: a checkpoint (loads on any Keras backend) and a TF-Hub export.

    tf_simclr convert --checkpoint=r50_1x_sk0/saved_model --model_dir=runs/r50_1x_sk0

The checkpoint is what `--checkpoint` and `--model_dir` take everywhere in
tf_simclr; the export (`export/hub_module.py`) has plain batch norm, so unlike
the reference's SavedModels trained with synchronized batch norm it fine-tunes
with `hub.KerasLayer(trainable=True)`, and its `encoder.keras` loads under
Keras 3 on TensorFlow or JAX.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from tf_simclr.config import Config, TrainConfig
from tf_simclr.reference import weights
from tf_simclr.reference.architecture import ReferenceArchitecture
from tf_simclr.storage import fs

log = logging.getLogger("tf_simclr")

EQUAL_OUTPUTS_TOLERANCE = 1e-4  # Largest difference to the reference's outputs, relative to their scale.


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What `convert` wrote."""

    architecture: ReferenceArchitecture
    config: Config
    checkpoint: str
    export: str
    step: int
    parts: tuple


def detected_selector(reference: weights.ReferenceModel) -> Optional[int]:
    """The `--ft_proj_selector` a reference SavedModel's supervised head was traced with (None: not known)."""
    if not reference.variables.files.saved_model_dir or not reference.architecture.has_supervised_head:
        return None
    from tf_simclr.reference.saved_model_graph import supervised_head_selector

    return supervised_head_selector(reference.variables.files.saved_model_dir)


def resolve_selector(reference: weights.ReferenceModel, requested: Optional[int], *, strict: bool = False) -> int:
    """`--ft_proj_selector` for the reference's supervised head: as asked, else what its graph used, else 0.

    Args:
        reference: The opened reference model.
        requested: The flag's value, or None to use what the SavedModel's graph used.
        strict: Refuse a selector other than the graph's (evaluating or exporting the head,
            whose logits would differ from the reference's); otherwise only warn.

    Raises:
        ValueError: a selector out of range, one whose width the head's kernel does not take, or
            (strict) one the SavedModel's head did not read.
    """
    arch = reference.architecture
    detected = detected_selector(reference)
    selector = requested if requested is not None else (detected if detected is not None else 0)
    widths = arch.hidden_widths()
    if not -len(widths) <= selector < len(widths):
        raise ValueError(f"--ft_proj_selector={selector} is out of range: the projection head has {len(widths)} "
                         f"selectable layers (0..{len(widths) - 1} or -1).")
    if arch.has_supervised_head and widths[selector] != arch.head_input_dim:
        fitting = [i for i, w in enumerate(widths) if w == arch.head_input_dim]
        raise ValueError(f"--ft_proj_selector={selector} feeds the supervised head {widths[selector]} features, but its "
                         f"kernel takes {arch.head_input_dim}; use one of {fitting}.")
    if detected is not None and selector % len(widths) != detected % len(widths):
        why = (f"--ft_proj_selector={selector} (found {detected}: the SavedModel's supervised head reads projection "
               f"layer {detected})")
        if strict:
            raise ValueError(f"{why}; its logits would differ from the reference's. Pass --ft_proj_selector={detected}.")
        log.warning("%s: the restored head is fed another layer than it was trained on.", why)
    return selector


def reference_config(reference: weights.ReferenceModel, model_dir: str, *, image_size: Optional[int] = None,
                     ft_proj_selector: Optional[int] = None) -> Config:
    """The `Config` of a converted model: the inferred architecture, trained as pretraining with a linear head."""
    selector = resolve_selector(reference, ft_proj_selector)
    model = reference.architecture.model_config(image_size, ft_proj_selector=selector)
    return Config(model=model, train=TrainConfig(model_dir=model_dir))


def _refuse_used_model_dir(model_dir: str) -> None:
    from tf_simclr.storage import checkpoint as ckpt_lib

    if ckpt_lib.checkpoint_steps(model_dir):
        raise ValueError(f"--model_dir={model_dir} already holds tf_simclr checkpoints; convert into an empty or new "
                         "folder, so the converted weights are the only checkpoint there.")


def convert(path: str, model_dir: str, *, export_dir: Optional[str] = None, image_size: Optional[int] = None,
            ft_proj_selector: Optional[int] = None, keep_max: int = 1) -> Conversion:
    """Writes a reference model as `<model_dir>/ckpt-<step>/` and a TF-Hub module `<export_dir>/<step>/`.

    Args:
        path: A reference SavedModel folder, or a model_dir / `ckpt-N` prefix of its CheckpointManager.
        model_dir: Where the tf_simclr checkpoint goes (a new or empty folder).
        export_dir: Base folder of the export; defaults to `exported_models/<model_dir name>`.
        image_size: The training image size (the variables do not keep it); defaults to 224, or 32 for
            the CIFAR stem.
        ft_proj_selector: Which projection layer feeds the supervised head; defaults to what the
            SavedModel's graph used, else 0.
        keep_max: Modules kept in the export's base folder.

    Returns:
        The `Conversion`.
    """
    from tf_simclr.export import exports_dir, hub_module
    from tf_simclr.storage import checkpoint as ckpt_lib

    _refuse_used_model_dir(model_dir)
    reference = weights.open_reference(path)
    config = reference_config(reference, model_dir, image_size=image_size, ft_proj_selector=ft_proj_selector)
    model = weights.build_loaded_model(reference, config)
    parts = tuple(p for p in weights.MODEL_PARTS if getattr(model, p, None) is not None)
    meta = {"config": config.to_dict(), "num_classes": reference.architecture.num_classes or None,
            "converted_from": fs.absolute(reference.path), "reference_form": reference.variables.files.form}
    checkpoint = ckpt_lib.save_checkpoint(model_dir, reference.step, model, meta=meta, max_to_keep=0)
    base = export_dir or exports_dir.default_export_dir(model_dir)
    export = hub_module.export_to_hub_dir(model, base, reference.step, keep_max=keep_max,
                                          meta={**meta, "checkpoint": fs.absolute(checkpoint)})
    return Conversion(reference.architecture, config, checkpoint, export, reference.step, parts)


def export_reference(config: Config, path: str) -> str:
    """`--mode=export --checkpoint=<reference model>`: a TF-Hub module of the flags' model holding its weights."""
    from tf_simclr.export import exports_dir, hub_module

    t = config.train
    reference = weights.open_reference(path)
    model = weights.build_loaded_model(reference, config)
    base = t.export_dir or exports_dir.default_export_dir(t.model_dir)
    meta = {"config": config.to_dict(), "num_classes": reference.architecture.num_classes or None,
            "converted_from": fs.absolute(reference.path)}
    return hub_module.export_to_hub_dir(model, base, reference.step, keep_max=t.keep_hub_module_max, meta=meta)


def relative_differences(outputs: dict, expected: dict) -> dict:
    """max |a - b| / max |b| for each key both have: the error relative to the output's scale."""
    found = {}
    for key in sorted(set(outputs) & set(expected)):
        want = np.asarray(expected[key], np.float64)
        got = np.asarray(outputs[key], np.float64)
        found[key] = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))
    return found


def compare_with_saved_model(saved_model_dir: str, export_dir: str, image_size: int, num_images: int = 2,
                             seed: int = 0) -> dict:
    """A converted export's outputs against the reference SavedModel's (`trainable=False`) on random images.

    Both are loaded with `tf.saved_model.load` (the reference's is slow to load for the big models).

    Returns:
        `relative_differences` of the export's outputs to the reference's.
    """
    import tensorflow as tf

    images = tf.constant(np.random.default_rng(seed).uniform(size=(num_images, image_size, image_size, 3)),
                         tf.float32)
    expected = {k: v.numpy() for k, v in tf.saved_model.load(saved_model_dir)(images, trainable=False).items()}
    outputs = {k: v.numpy() for k, v in tf.saved_model.load(export_dir)(images, training=False).items()}
    return relative_differences(outputs, expected)
