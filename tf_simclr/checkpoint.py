"""Checkpoints that survive crashes and load on any Keras backend.

A checkpoint is a folder `ckpt-<step>/` holding `variables.npz` (every model and
optimizer variable, keyed by its Keras path) and `meta.json` (step and anything the
trainer wants to remember). It is written under a temporary name and renamed into
place, so a crash mid-write never leaves a partial `ckpt-*` behind, and the newest
complete checkpoint is always found by listing the folder: no index file can
disagree with what is on disk. NumPy arrays instead of `tf.train.Checkpoint` keep
the format backend-neutral (a JAX run can resume a TensorFlow one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np

_CKPT_RE = re.compile(r"^ckpt-(\d+)$")
VARIABLES_FILE = "variables.npz"
META_FILE = "meta.json"


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a model of another shape or architecture."""


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        match = _CKPT_RE.match(name)
        if match and os.path.exists(os.path.join(directory, name, META_FILE)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpoint(directory: str) -> str | None:
    """Path of the newest complete checkpoint in `directory`, or None."""
    steps = checkpoint_steps(directory)
    return os.path.join(directory, f"ckpt-{steps[-1]}") if steps else None


def resolve_checkpoint(path: str) -> str:
    """Accepts a checkpoint folder or a model_dir holding checkpoints; returns the folder.

    Raises:
        FileNotFoundError: naming the path, when it holds no checkpoint.
    """
    if os.path.exists(os.path.join(path, META_FILE)):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(
            f"No tf_simclr checkpoint at {path!r}: expected a `ckpt-<step>` folder or a "
            "model_dir that contains one (written by a pretraining run)."
        )
    return latest


def _parts(model) -> dict[str, Any]:
    """Named groups of variables; `SimCLRModel` splits into encoder and heads.

    Variables are keyed by part and position, not by name: Keras names auto-named
    layers from a process-wide counter (`dense_3`), so names differ between runs,
    while the order of a part's variables is fixed by its architecture. Parts let a
    fine-tuning model with a new supervised head load a pretraining checkpoint.
    """
    parts = getattr(model, "checkpoint_parts", None)
    return parts() if callable(parts) else {"model": model}


def _named_variables(model, optimizer=None) -> dict[str, Any]:
    named = {}
    for part, holder in _parts(model).items():
        for index, variable in enumerate(holder.variables):
            named[f"{part}/{index}"] = variable
    if optimizer is not None:
        for index, variable in enumerate(optimizer.variables):
            named[f"optimizer/{index}"] = variable
    return named


def _to_numpy(variable) -> np.ndarray:
    value = variable.numpy() if hasattr(variable, "numpy") else variable.value
    return np.asarray(value)


def save_checkpoint(directory: str, step: int, model, optimizer=None, meta: dict | None = None, max_to_keep: int = 5) -> str:
    """Atomically writes `directory/ckpt-<step>` and prunes all but the newest `max_to_keep`.

    Args:
        directory: Where checkpoints live (the run's model_dir).
        step: Global step the weights correspond to.
        model: A built Keras model (all of `model.variables` are saved).
        optimizer: Its optimizer, built; `None` to save the weights alone.
        meta: JSON-serializable extras stored in meta.json.
        max_to_keep: Older checkpoints beyond this many are deleted (0 keeps all).

    Returns:
        The path of the new checkpoint.
    """
    os.makedirs(directory, exist_ok=True)
    recover_interrupted(directory)
    named = _named_variables(model, optimizer)
    arrays = {k: _to_numpy(v) for k, v in named.items()}
    final = os.path.join(directory, f"ckpt-{int(step)}")
    tmp = tempfile.mkdtemp(prefix=f".tmp-ckpt-{int(step)}-", dir=directory)
    try:
        with open(os.path.join(tmp, VARIABLES_FILE), "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        info = {"step": int(step), "format": "tf_simclr-npz-1", "paths": {k: v.path for k, v in named.items()}}
        info.update(meta or {})
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if max_to_keep and max_to_keep > 0:
        for old in checkpoint_steps(directory)[:-max_to_keep]:
            shutil.rmtree(os.path.join(directory, f"ckpt-{old}"), ignore_errors=True)
    return final


def _fsync_dir(directory: str) -> None:
    """Makes a rename in `directory` durable (a power cut cannot undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: str, final: str) -> None:
    """Renames the complete `tmp` to `final`; a checkpoint already there is moved aside first.

    At every moment either the old or the new `final` is complete on disk; a crash
    between the two renames leaves `.old-ckpt-*`, which `recover_interrupted` puts back.
    """
    directory, name = os.path.split(final)
    old = None
    if os.path.exists(final):  # Same step saved twice (e.g. end of training): replace.
        old = os.path.join(directory, f".old-{name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def recover_interrupted(directory: str) -> list[str]:
    """Cleans up after a process killed while writing a checkpoint (a crash cannot run `finally`).

    Temporary `.tmp-ckpt-*` folders are deleted; a `.old-ckpt-<step>-*` folder whose
    replacement never arrived is renamed back to `ckpt-<step>`.

    Returns:
        The names removed or restored.
    """
    if not os.path.isdir(directory):
        return []
    touched = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(".tmp-ckpt-"):
            shutil.rmtree(path, ignore_errors=True)
            touched.append(entry)
        elif entry.startswith(".old-ckpt-"):
            final = os.path.join(directory, entry[len(".old-"):].rsplit("-", 1)[0])
            if not os.path.exists(final) and os.path.exists(os.path.join(path, META_FILE)):
                os.rename(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)
            touched.append(entry)
    return touched


def read_meta(path: str) -> dict:
    with open(os.path.join(resolve_checkpoint(path), META_FILE)) as f:
        return json.load(f)


def restore_checkpoint(path: str, model, optimizer=None, *, exclude_parts: tuple[str, ...] = ()) -> dict:
    """Loads a checkpoint into `model` (and `optimizer`), checking every shape first.

    Nothing is assigned unless every variable matches, so a wrong checkpoint never
    leaves a half-restored model behind.

    Args:
        path: A `ckpt-<step>` folder or a model_dir (its newest checkpoint).
        model: A built model of the same architecture.
        optimizer: Built optimizer whose slots to restore, or None for weights only.
        exclude_parts: Parts of the model not to restore (e.g. "supervised_head",
            trained afresh when fine-tuning a pretrained encoder on new classes).

    Returns:
        The checkpoint's meta.json contents.

    Raises:
        CheckpointMismatchError: listing the variables that are missing or differ.
    """
    folder = resolve_checkpoint(path)
    with np.load(os.path.join(folder, VARIABLES_FILE)) as stored:
        stored = {k: stored[k] for k in stored.files}
    with open(os.path.join(folder, META_FILE)) as f:
        meta = json.load(f)
    stored_paths = meta.get("paths", {})
    targets = {k: v for k, v in _named_variables(model, optimizer).items() if k.split("/")[0] not in exclude_parts}
    problems, assignments = [], []
    for key, variable in targets.items():
        if key not in stored:
            problems.append(f"missing in checkpoint: {variable.path} {tuple(variable.shape)}")
            continue
        if tuple(stored[key].shape) != tuple(variable.shape):
            problems.append(
                f"shape differs: {variable.path} model {tuple(variable.shape)} vs checkpoint "
                f"{stored_paths.get(key, key)} {tuple(stored[key].shape)}"
            )
            continue
        assignments.append((variable, stored[key]))
    parts = {k.split("/")[0] for k in targets}
    extra = sorted(k for k in stored if k.split("/")[0] in parts and k not in targets)
    problems += [f"not in model: {stored_paths.get(k, k)} {tuple(stored[k].shape)}" for k in extra]
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise CheckpointMismatchError(
            f"Checkpoint {folder} does not fit this model ({len(problems)} variables differ). "
            f"Was it written with other --resnet_depth/--width_multiplier/--sk_ratio/--se_ratio/"
            f"--proj_head_mode flags?\n  {shown}"
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return meta
