"""Checkpoints that survive crashes, live on any filesystem and load on any Keras backend.

A checkpoint is a folder `ckpt-<step>/` holding `variables.npz` (every model and
optimizer variable, keyed by part and position) and `meta.json` (step, config and
whatever the trainer wants to remember). `meta.json` is written last and is the
commit marker (`storage.atomic`): a folder without it is incomplete, ignored by
`latest_checkpoint` and deleted by `recover_interrupted`. On a local disk the
folder is also written under a temporary name and renamed into place. NumPy
arrays instead of `tf.train.Checkpoint` keep the format backend-neutral (a JAX
run can resume a TensorFlow one).

Training saves through `CheckpointWriter`: the values are copied to host memory
at the step boundary and the files are written in one background thread, so a
ResNet-50 checkpoint stalls the run for the copy, not for the write (figures in
docs/reliability.md, "Checkpoint format: ours or Orbax").
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import zipfile
from typing import Any, Optional

import numpy as np

from tf_simclr.storage import atomic, fs

CHECKPOINT_NAMES = r"ckpt-\d+"
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")
VARIABLES_FILE = "variables.npz"
META_FILE = "meta.json"
FORMAT = "tf_simclr-npz-1"

log = logging.getLogger("tf_simclr")


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
    value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable.value)
    # An array that views a framework buffer (a CPU tensor's memory) could change under a background
    # write, or block buffer donation: copy it. Arrays that own their memory are copies already.
    return value if value.flags.owndata else value.copy()


def snapshot(model, optimizer=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Copies of every variable's value now (and their Keras paths): what `write_checkpoint` saves.

    The arrays own their memory, so training may go on while they are written.
    """
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
                    max_to_keep: int = 5, *, writer: Optional["CheckpointWriter"] = None) -> str:
    """Atomically writes `directory/ckpt-<step>` and prunes all but the newest `max_to_keep`.

    Args:
        directory: Where checkpoints live (the run's model_dir; any tf.io.gfile path).
        step: Global step the weights correspond to.
        model: A built Keras model (all of `model.variables` are saved).
        optimizer: Its optimizer, built; `None` to save the weights alone.
        meta: JSON-serializable extras stored in meta.json.
        max_to_keep: Older checkpoints beyond this many are deleted (0 keeps all).
        writer: A `CheckpointWriter` to write the files in the background: this call
            returns once the values are copied, `writer.flush()` waits for the files.

    Returns:
        The path of the new checkpoint (committed once `writer.flush()` returns, if a writer is given).
    """
    if writer is not None:
        return writer.save(directory, step, model, optimizer, meta=meta, max_to_keep=max_to_keep)
    arrays, paths = snapshot(model, optimizer)
    return write_checkpoint(directory, step, arrays, paths, meta=meta, max_to_keep=max_to_keep)


class CheckpointWriteError(RuntimeError):
    """A checkpoint written in the background failed (raised in the caller's thread at the next save or flush)."""

    def __init__(self, path: str, error: BaseException):
        self.path = path
        super().__init__(f"Writing checkpoint {path} failed: {type(error).__name__}: {error}. The checkpoints "
                         "before it are intact; fix the cause (disk space, permissions, the filesystem) and rerun "
                         "the same command to resume from the newest one.")


class CheckpointWriter:
    """`save_checkpoint` whose file writing runs in one background thread.

    `save` blocks only while it copies every variable's value to host memory
    (`snapshot`, at the step boundary, so the checkpoint holds exactly that step);
    `write_checkpoint` then writes the same files in a thread: the same temporary
    folder or commit marker (`storage.atomic.publishing`), keep-N pruning once the
    new checkpoint is committed. At most one write is in flight: a save first
    waits for the previous one (so at most one snapshot waits in memory). An
    error in the background is raised by the next `save` or `flush`, in the
    caller's thread, as a `CheckpointWriteError`.

    Call `flush()` before anything reads the checkpoints (an export, an
    evaluation, the end of training). The thread is not a daemon: a process that
    exits normally finishes the pending write first; a killed one leaves a
    temporary folder that the next start removes, as with a synchronous save.
    """

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[tuple[str, BaseException]] = None
        self.last_committed: Optional[str] = None

    @property
    def pending(self) -> bool:
        """Whether a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def save(self, directory: str, step: int, model, optimizer=None, meta: Optional[dict] = None,
             max_to_keep: int = 5) -> str:
        """Snapshots the variables now and writes `directory/ckpt-<step>` in the background (see the class).

        Returns:
            The path the checkpoint will have once committed.

        Raises:
            CheckpointWriteError: the previous background write failed (this save is not started).
        """
        self.flush()
        arrays, paths = snapshot(model, optimizer)
        path = checkpoint_path(directory, step)
        self._thread = threading.Thread(
            target=self._write, args=(path, directory, step, arrays, paths, dict(meta or {}), max_to_keep),
            name=f"tf_simclr-checkpoint-{int(step)}", daemon=False)
        self._thread.start()
        return path

    def _write(self, path, directory, step, arrays, paths, meta, max_to_keep) -> None:
        try:
            write_checkpoint(directory, step, arrays, paths, meta=meta, max_to_keep=max_to_keep)
        except BaseException as error:  # Kept for the caller's thread: an exception here would only be printed.
            self._error = (path, error)
            return
        self.last_committed = path
        log.info("Saved checkpoint %s", path)

    def flush(self) -> Optional[str]:
        """Waits for the pending write; returns the newest committed path.

        Raises:
            CheckpointWriteError: the background write failed (raised once).
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._error is not None:
            (path, error), self._error = self._error, None
            raise CheckpointWriteError(path, error) from error
        return self.last_committed

    wait = flush


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
