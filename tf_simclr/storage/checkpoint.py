"""Checkpoints that survive crashes, live on any filesystem and load on any Keras backend.

A checkpoint is a folder `ckpt-<step>/` holding `variables.npz` (every model and
optimizer variable, keyed by part and position) and `meta.json` (step, config and
whatever the trainer wants to remember). `meta.json` is written last and is the
commit marker (`storage.atomic`): a folder without it is incomplete, ignored by
`latest_checkpoint` and deleted by `recover_interrupted`. On a local disk the
folder is also written under a temporary name and renamed into place. NumPy
arrays instead of `tf.train.Checkpoint` keep the format backend-neutral (a JAX
run can resume a TensorFlow one).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import numpy as np

from tf_simclr.storage import atomic, fs

CHECKPOINT_NAMES = r"ckpt-\d+"
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")
VARIABLES_FILE = "variables.npz"
META_FILE = "meta.json"
FORMAT = "tf_simclr-npz-1"


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a model of another shape or architecture."""


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in `directory`, oldest first."""
    names = atomic.complete_entries(directory, META_FILE, CHECKPOINT_NAMES)
    return sorted(int(_CKPT_RE.match(name).group(1)) for name in names)


def checkpoint_path(directory: str, step: int) -> str:
    return fs.join(directory, f"ckpt-{int(step)}")


def latest_checkpoint(directory: str) -> str | None:
    """Path of the newest complete checkpoint in `directory`, or None."""
    steps = checkpoint_steps(directory)
    return checkpoint_path(directory, steps[-1]) if steps else None


def is_checkpoint(path: str) -> bool:
    return atomic.is_complete(path, META_FILE)


def resolve_checkpoint(path: str) -> str:
    """Accepts a checkpoint folder or a model_dir holding checkpoints; returns the folder.

    Raises:
        FileNotFoundError: naming the path, when it holds no checkpoint.
    """
    if is_checkpoint(path):
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


def named_variables(model, optimizer=None) -> dict[str, Any]:
    """`<part>/<index>` -> variable, as checkpoints key them (optimizer slots as `optimizer/<index>`)."""
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


def snapshot(model, optimizer=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Copies of every variable's value now (and their Keras paths): what `write_checkpoint` saves."""
    named = named_variables(model, optimizer)
    return {k: _to_numpy(v) for k, v in named.items()}, {k: v.path for k, v in named.items()}


def write_checkpoint(directory: str, step: int, arrays: dict, paths: dict, meta: dict | None = None,
                     max_to_keep: int = 5) -> str:
    """Atomically writes `directory/ckpt-<step>` from a `snapshot` and prunes all but the newest `max_to_keep`."""
    fs.makedirs(directory)
    recover_interrupted(directory)
    final = checkpoint_path(directory, step)
    info = {"step": int(step), "format": FORMAT, "paths": paths}
    info.update(meta or {})
    with atomic.publishing(final, META_FILE) as folder:
        target = fs.join(folder, VARIABLES_FILE)
        if fs.is_url(target):
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            with fs.open_file(target, "wb") as f:
                f.write(buffer.getvalue())
        else:
            with open(target, "wb") as f:
                np.savez(f, **arrays)
        with fs.open_file(fs.join(folder, META_FILE), "w") as f:  # The commit marker: last.
            f.write(json.dumps(info, indent=1, sort_keys=True, default=str))
    if max_to_keep and max_to_keep > 0:
        for old in checkpoint_steps(directory)[:-max_to_keep]:
            atomic.remove(checkpoint_path(directory, old))
    return final


def save_checkpoint(directory: str, step: int, model, optimizer=None, meta: dict | None = None,
                    max_to_keep: int = 5) -> str:
    """Atomically writes `directory/ckpt-<step>` and prunes all but the newest `max_to_keep`.

    Args:
        directory: Where checkpoints live (the run's model_dir; any tf.io.gfile path).
        step: Global step the weights correspond to.
        model: A built Keras model (all of `model.variables` are saved).
        optimizer: Its optimizer, built; `None` to save the weights alone.
        meta: JSON-serializable extras stored in meta.json.
        max_to_keep: Older checkpoints beyond this many are deleted (0 keeps all).

    Returns:
        The path of the new checkpoint.
    """
    arrays, paths = snapshot(model, optimizer)
    return write_checkpoint(directory, step, arrays, paths, meta=meta, max_to_keep=max_to_keep)


def recover_interrupted(directory: str) -> list[str]:
    """Cleans up after a process killed while writing a checkpoint (a crash cannot run `finally`).

    Temporary folders and incomplete checkpoints are deleted; a checkpoint moved
    aside whose replacement never arrived is put back (see `storage.atomic.recover`).

    Returns:
        The names removed or restored.
    """
    return atomic.recover(directory, META_FILE, CHECKPOINT_NAMES)


def read_meta(path: str) -> dict:
    return atomic.read_json(fs.join(resolve_checkpoint(path), META_FILE))


def _load_arrays(folder: str) -> dict[str, np.ndarray]:
    with fs.open_file(fs.join(folder, VARIABLES_FILE), "rb") as f:
        data = f.read()
    with np.load(io.BytesIO(data)) as stored:
        return {k: stored[k] for k in stored.files}


def stored_shapes(folder: str) -> dict[str, tuple]:
    """Shape of every array in a checkpoint's variables.npz, read from the headers only."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes = {}
    with fs.open_file(fs.join(folder, VARIABLES_FILE), "rb") as raw, zipfile.ZipFile(raw) as archive:
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


def mismatches(targets: dict, shapes: dict, stored_paths: dict) -> list[str]:
    """The one rule for "does this checkpoint fit": every target stored with its shape, no extra variable.

    Args:
        targets: `<part>/<index>` -> variable of the model (the parts being compared).
        shapes: `<part>/<index>` -> stored shape.
        stored_paths: `<part>/<index>` -> the Keras path recorded when saving.
    """
    problems = []
    for key, variable in targets.items():
        shape = tuple(variable.shape)
        if key not in shapes:
            problems.append(f"missing in checkpoint: {variable.path} {shape}")
        elif tuple(shapes[key]) != shape:
            problems.append(f"shape differs: {variable.path} model {shape} vs checkpoint "
                            f"{stored_paths.get(key, key)} {tuple(shapes[key])}")
    parts = {key.split("/")[0] for key in targets}
    extra = sorted(k for k in shapes if k.split("/")[0] in parts and k not in targets)
    return problems + [f"not in model: {stored_paths.get(k, k)} {tuple(shapes[k])}" for k in extra]


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
    stored = _load_arrays(folder)
    meta = atomic.read_json(fs.join(folder, META_FILE))
    targets = {k: v for k, v in named_variables(model, optimizer).items() if k.split("/")[0] not in exclude_parts}
    problems = mismatches(targets, {k: v.shape for k, v in stored.items()}, meta.get("paths", {}))
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise CheckpointMismatchError(
            f"Checkpoint {folder} does not fit this model ({len(problems)} variables differ). "
            f"Was it written with other --backbone/--resnet_depth/--width_multiplier/--sk_ratio/--se_ratio/"
            f"--proj_head_mode flags?\n  {shown}"
        )
    for key, variable in targets.items():
        variable.assign(stored[key].astype(variable.dtype))
    return meta
