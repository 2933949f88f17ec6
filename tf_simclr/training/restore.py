"""Where a model's weights come from: the run's own newest checkpoint, `--checkpoint`, or nowhere.

A run resumes from the newest complete checkpoint in its model_dir (step,
optimizer slots and schedule intact). Otherwise `--checkpoint` initializes it:
a tf_simclr checkpoint or model_dir (encoder and projection head; a new
supervised head trains from scratch), an export of one, or a model written by the
reference implementation (google-research/simclr: an official SavedModel or its own
training checkpoint; `tf_simclr.reference`), whose supervised head is kept when it fits.
"""

from __future__ import annotations

import logging
from tf_simclr.config import Config
from tf_simclr.storage import checkpoint as ckpt_lib

log = logging.getLogger("tf_simclr")


def weights_source_kind(path: str, flag: str = "--checkpoint") -> str:
    """'checkpoint', 'export' or 'reference' for a `--checkpoint` (or `--teacher`) path; ValueError naming what is accepted otherwise."""
    from tf_simclr.export import exports_dir
    from tf_simclr.reference import files as reference_files
    from tf_simclr.storage import fs

    if reference_files.is_reference(path):  # Before exports: the reference's SavedModels have saved_model.pb too.
        return "reference"
    if not fs.exists(path):
        raise ValueError(f"{flag}={path} does not exist; pass a pretraining model_dir, a ckpt-<step> folder, "
                         "an exported module or a google-research/simclr model (SavedModel, model_dir or ckpt-N).")
    if not ckpt_lib.checkpoint_steps(path) and exports_dir.is_export(path):
        return "export"
    try:
        ckpt_lib.resolve_checkpoint(path)
    except FileNotFoundError:
        raise ValueError(
            f"{flag}={path} holds no tf_simclr checkpoint (ckpt-<step>/meta.json) nor exported module "
            "(saved_model.pb); pass a pretraining model_dir, a ckpt-<step> folder or an exported module."
        ) from None
    return "checkpoint"


def restore(model, config: Config, *, chief: bool = True) -> int:
    """Resumes from the newest checkpoint in model_dir, else loads `--checkpoint` weights.

    Returns:
        The global step training resumes from.
    """
    t = config.train
    if chief:
        ckpt_lib.recover_interrupted(t.model_dir)  # A checkpoint moved aside by a crash counts too.
    latest = ckpt_lib.latest_checkpoint(t.model_dir)
    if latest:
        meta = ckpt_lib.restore_checkpoint(latest, model, model.optimizer)
        log.info("Resumed from %s (step %d)", latest, meta["step"])
        return int(meta["step"])
    if t.checkpoint:
        kind = weights_source_kind(t.checkpoint)
        if kind == "export":
            from tf_simclr.export import load

            load.restore_from_export(model, t.checkpoint)  # A TF-Hub module written by tf_simclr.
        elif kind == "reference":
            from tf_simclr.reference import weights as reference_weights

            reference_weights.initialize(model, t.checkpoint, zero_init_logits_layer=t.zero_init_logits_layer)
        else:
            ckpt_lib.restore_checkpoint(t.checkpoint, model, None, exclude_parts=("supervised_head",))
        log.info("Initialized the model from %s", t.checkpoint)
    elif t.train_mode == "finetune":
        raise ValueError("--train_mode=finetune needs --checkpoint (a pretraining model_dir or checkpoint folder).")
    return 0
