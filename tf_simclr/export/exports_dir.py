"""Where exports live: `<export_dir>/<step>/` folders, which of them are complete, and keep-N.

An export folder is complete once its `export_meta.json` exists (written last:
the commit marker of `storage.atomic`). Needs no TensorFlow.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence

from tf_simclr.storage import atomic, fs

EXPORT_META_FILE = "export_meta.json"
SAVED_MODEL_FILE = "saved_model.pb"
ENCODER_FILE = "encoder.keras"
DEFAULT_EXPORT_ROOT = "exported_models"
STEP_NAMES = r"\d+"


def exported_steps(base_dir: str) -> list[int]:
    """Steps of the complete modules in `base_dir` (numeric sub-folders), oldest first."""
    return sorted(int(name) for name in atomic.complete_entries(base_dir, EXPORT_META_FILE, STEP_NAMES))


def is_export(path: str) -> bool:
    """Whether `path` is a complete exported module or a base folder of them (and not a training checkpoint)."""
    return atomic.is_complete(path, EXPORT_META_FILE) or bool(exported_steps(path))


def resolve_export(path: str) -> str:
    """Accepts a module folder or a base folder of `<step>/` modules; returns the (complete) module folder.

    A folder with `saved_model.pb` but no `export_meta.json` is an export whose
    writer died before committing it (on an object store it is written in place):
    refused, never loaded.
    """
    if atomic.is_complete(path, EXPORT_META_FILE):
        return path
    if fs.exists(fs.join(path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(
            f"{path!r} holds {SAVED_MODEL_FILE} but no {EXPORT_META_FILE}: an export that never finished (killed "
            "mid-write); export the checkpoint again, or pass the base folder to use its newest complete module."
        )
    steps = exported_steps(path)
    if not steps:
        raise FileNotFoundError(
            f"No exported module at {path!r}: expected a folder with saved_model.pb or numbered "
            "<step>/ sub-folders (written by tf_simclr's export)."
        )
    return fs.join(path, str(steps[-1]))


def read_export_meta(path: str) -> dict:
    """Reads `export_meta.json` of an export (or of the newest export under a base folder)."""
    return atomic.read_json(fs.join(resolve_export(path), EXPORT_META_FILE))


def prune_exports(base_dir: str, keep_max: int, keep: Sequence[int] = ()) -> list[int]:
    """Deletes all but the newest `keep_max` complete module folders (0 or less keeps all).

    Args:
        base_dir: Folder of `<step>/` modules.
        keep_max: How many to keep (the reference's `--keep_hub_module_max`).
        keep: Steps never deleted (the module just written, even if older).

    Returns:
        The deleted steps.
    """
    if keep_max is None or keep_max <= 0:
        return []
    steps = exported_steps(base_dir)
    kept = set(steps[-keep_max:]) | {int(s) for s in keep}
    deleted = [s for s in steps if s not in kept]
    for step in deleted:
        atomic.remove(fs.join(base_dir, str(step)))
    return deleted


def recover_interrupted(base_dir: str, name: Optional[str] = None) -> list[str]:
    """Cleans up after exports killed mid-way (`storage.atomic.recover`): any step's leftovers, and `name`'s."""
    names = STEP_NAMES if name is None else f"{STEP_NAMES}|{re.escape(name)}"
    return atomic.recover(base_dir, EXPORT_META_FILE, names)


def default_export_dir(model_dir: str, root: str = DEFAULT_EXPORT_ROOT) -> str:
    """`exported_models/<run name>` (the model_dir's base name) for a local run.

    A model_dir on a remote filesystem (`gs://...`) exports beside its checkpoints,
    to `<model_dir>/saved_model` (the reference's place), not to the machine's
    disk, which may be gone with the VM.
    """
    if fs.is_url(model_dir):
        return fs.join(model_dir.rstrip("/"), "saved_model")
    run_name = os.path.basename(os.path.normpath(model_dir))
    if not run_name or run_name in (".", "..") or run_name.endswith(":"):
        raise ValueError(f"Cannot name the export after model_dir={model_dir!r}: pass an explicit export folder.")
    return os.path.join(root, run_name)
