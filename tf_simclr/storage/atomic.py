"""Files and folders that are either complete or absent, even if the process dies mid-write.

Every file a run writes goes through here: checkpoints, exports, flags.json,
results, subset ids, plots. One protocol, two filesystems:

* **Local disk.** Write under a temporary name beside the target
  (`.tmp-<name>-<random>`), fsync, then rename into place: rename is atomic, so
  readers see the old version or the new one, never a part. A folder that
  replaces an older one moves that one aside first (`.old-<name>-<random>`) and
  deletes it only after the new one is in place; `recover` undoes whatever a
  crash between the two renames left.
* **Object stores** (`gs://`, and any other `tf.io.gfile` URL). There is no atomic
  folder rename, so a folder is written in place and is *complete only once its
  commit marker exists*: a file its writer writes last (a checkpoint's
  `meta.json`, an export's `export_meta.json`). Readers go by `is_complete`, and
  `recover` deletes folders without their marker. A single file is one object
  upload, which object stores publish atomically.

A crash (SIGKILL, OOM, power cut) runs no cleanup code, hence `recover`: the
writer calls it before writing again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Iterator, Optional

from tf_simclr.storage import fs

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def _token() -> str:
    return uuid.uuid4().hex[:8]


# ------------------------------------------------------------------ Single files
def _write_url(path: str, data, mode: str) -> str:
    """A whole new object under a temporary name, then renamed over `path` (GCS publishes each object whole)."""
    directory, name = path.rstrip("/").rsplit("/", 1)
    tmp = f"{directory}/{TMP_PREFIX}{name}-{_token()}"
    with fs.open_file(tmp, mode) as f:
        f.write(data)
    fs.rename(tmp, path)
    return path


def write_text(path: str, text: str) -> str:
    """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> str:
    """Writes `data` to `path` atomically; returns `path`."""
    if fs.is_url(path):
        return _write_url(path, data, "wb")
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}-{_token()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fs.fsync_dir(directory)
    return path


def write_json(path: str, value: Any) -> str:
    """Writes `value` as indented, key-sorted JSON, atomically; returns `path`."""
    return write_text(path, json.dumps(value, indent=1, sort_keys=True, default=str))


def read_json(path: str) -> Any:
    with fs.open_file(path, "r") as f:
        return json.load(f)


# ------------------------------------------------------------------ Folders
def is_complete(folder: str, marker: str) -> bool:
    """Whether `folder` was published in full: its commit marker (the file written last) exists."""
    return fs.exists(fs.join(folder, marker))


@contextlib.contextmanager
def publishing(final: str, marker: str) -> Iterator[str]:
    """Yields a folder to write into; on a clean exit it is published as `final`.

    The caller writes every file and the commit `marker` last. Locally the
    folder is a temporary one renamed to `final` at the end (an existing `final`
    stays complete until then); on an object store it is `final` itself, complete
    once the marker is written. On an exception nothing is published.
    """
    final = final.rstrip("/")
    parent, name = os.path.split(final)
    if fs.is_url(final):
        if fs.exists(final):  # Replaced in place: uncommitted from here on.
            fs.remove(fs.join(final, marker))
            fs.remove(final)
        fs.makedirs(final)
        try:
            yield final
        except BaseException:
            fs.remove(final)
            raise
        if not is_complete(final, marker):
            fs.remove(final)
            raise RuntimeError(f"The writer of {final} did not write its commit marker {marker}.")
        return
    os.makedirs(parent or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=parent or ".")
    try:
        yield tmp
        if not os.path.exists(os.path.join(tmp, marker)):
            raise RuntimeError(f"The writer of {final} did not write its commit marker {marker}.")
        _fsync_tree(tmp)
        _publish_local(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _publish_local(tmp: str, final: str) -> None:
    """Renames the complete `tmp` to `final`, moving an existing `final` aside first.

    At every moment one complete copy sits at `final` or at `.old-<name>-*`, which
    `recover` puts back if the process died between the two renames.
    """
    parent, name = os.path.split(final)
    old = None
    if os.path.lexists(final):
        old = os.path.join(parent, f"{OLD_PREFIX}{name}-{_token()}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old:
            os.rename(old, final)
        raise
    fs.fsync_dir(parent or ".")
    if old:
        shutil.rmtree(old, ignore_errors=True)


def recover(parent: str, marker: str, names: str) -> list[str]:
    """Cleans up after writers of folders `parent/<name>` that were killed mid-write.

    Args:
        parent: The folder holding the published folders.
        marker: Their commit marker.
        names: A regex that the published folders' names match in full
            (`ckpt-\\d+`, `\\d+`); other entries are left alone.

    Deleted: temporary folders, folders moved aside whose replacement arrived,
    and (object stores) published-name folders without their marker. Restored: a
    folder moved aside whose replacement never arrived.

    Returns:
        The entry names removed or restored.
    """
    pattern = re.compile(f"^(?:{names})$")
    touched = []
    for entry in fs.listdir(parent):
        path = fs.join(parent, entry)
        if entry.startswith(TMP_PREFIX) and pattern.match(entry[len(TMP_PREFIX):].rsplit("-", 1)[0]):
            fs.remove(path)
            touched.append(entry)
        elif entry.startswith(OLD_PREFIX) and pattern.match(entry[len(OLD_PREFIX):].rsplit("-", 1)[0]):
            final = fs.join(parent, entry[len(OLD_PREFIX):].rsplit("-", 1)[0])
            if not is_complete(final, marker) and is_complete(path, marker):
                fs.remove(final)
                fs.rename(path, final)
            else:
                fs.remove(path)
            touched.append(entry)
        elif pattern.match(entry) and fs.isdir(path) and not is_complete(path, marker):
            fs.remove(path)  # Never committed (object stores: there is no rename to wait for).
            touched.append(entry)
    return touched


def complete_entries(parent: str, marker: str, names: str) -> list[str]:
    """Names of the complete published folders in `parent` whose names match `names`, sorted."""
    pattern = re.compile(f"^(?:{names})$")
    return [e for e in fs.listdir(parent) if pattern.match(e) and is_complete(fs.join(parent, e), marker)]


def remove(path: str) -> None:
    """Deletes a published file or folder (e.g. an old checkpoint beyond keep-N)."""
    fs.remove(path)


def temporary_name(path: str, token: Optional[str] = None) -> str:
    """The temporary sibling `write_text` uses for `path` (for tests that simulate crashes)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TMP_PREFIX}{name}-{token or _token()}")
