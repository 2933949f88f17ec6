"""Paths on any filesystem a run may write to: the local disk, or a URL that `tf.io.gfile` opens.

Checkpoints, exports and results go wherever `--model_dir` points: a local folder,
`gs://bucket/run` on Google Cloud, or TensorFlow's in-memory `ram://` filesystem
(tests). Local paths use `os` and `shutil`, so the package still works without
TensorFlow (a JAX-only machine); URLs (`scheme://...`) go through `tf.io.gfile`.
"""

from __future__ import annotations

import os
import shutil
from typing import IO


def is_url(path: str) -> bool:
    """Whether `path` names a filesystem by scheme (`gs://`, `ram://`, `s3://`, ...), not the local disk."""
    return "://" in str(path)


def _gfile():
    try:
        import tensorflow as tf
    except ImportError as e:  # A JAX-only install has no TensorFlow filesystems.
        raise ValueError(
            f"Paths with a scheme (gs://, ram://, ...) need TensorFlow's filesystems, and TensorFlow is not "
            f"installed ({e}); use a local folder or install tensorflow."
        ) from None
    return tf.io.gfile


def join(path: str, *parts: str) -> str:
    """`os.path.join`, which is also right for URLs (`gs://b/run` + `ckpt-1`)."""
    return os.path.join(path, *parts)


def absolute(path: str) -> str:
    """An absolute local path, or the URL as it is (without a trailing slash)."""
    return str(path).rstrip("/") if is_url(path) else os.path.abspath(path)


def parent(path: str) -> str:
    """The folder holding `path` (local or URL)."""
    path = absolute(path)
    return path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return absolute(path).rsplit("/", 1)[-1] if is_url(path) else os.path.basename(os.path.normpath(path))


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Entry names of a folder (no trailing slashes), or [] when it does not exist."""
    if not isdir(path):
        return []
    if is_url(path):
        return sorted({name.rstrip("/") for name in _gfile().listdir(path)})
    return sorted(os.listdir(path))


def makedirs(path: str) -> None:
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Deletes a file or a folder tree; a missing path is not an error."""
    if is_url(path):
        gfile = _gfile()
        if gfile.isdir(path):
            gfile.rmtree(path)
        elif gfile.exists(path):
            gfile.remove(path)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def rename(source: str, target: str) -> None:
    """Renames a file or folder (atomic on a local disk; see `atomic` for object stores)."""
    if is_url(source) or is_url(target):
        _gfile().rename(source, target, overwrite=True)
    else:
        os.rename(source, target)


def open_file(path: str, mode: str = "r") -> IO:
    """A file object for reading or writing, on any filesystem."""
    if is_url(path):
        return _gfile().GFile(path, mode)
    return open(path, mode)


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def fsync_dir(directory: str) -> None:
    """Makes a rename in a local `directory` durable (a power cut cannot undo it); a no-op for URLs."""
    if is_url(directory):
        return
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
