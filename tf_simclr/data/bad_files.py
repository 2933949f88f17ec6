"""Finding bad image files fast: size, magic bytes and end marker, never the whole file.

An image folder is scanned once when it is indexed (`data.image_folder`), so one
empty, truncated or mislabelled file is left out with a warning instead of
stopping training mid-epoch. The scan reads at most HEAD_BYTES + TAIL_BYTES per
file, on a thread pool (the work is file-system latency), local or on any
`tf.io.gfile` filesystem.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from typing import Iterable, Optional, Sequence

import tensorflow as tf

from tf_simclr.storage import fs

# Bad-file scan: bytes read at each end of a file, and how bad files are reported.
HEAD_BYTES = 16
# The JPEG/PNG end marker may be followed by padding or a small trailer. A file
# with a bigger trailer (e.g. a phone's "motion photo" video) reads as truncated.
TAIL_BYTES = 4096
SCAN_THREADS = 32
SCAN_CHUNK = 512  # Files per thread-pool task: amortises the pool's overhead.
PROGRESS_EVERY = 10_000
MAX_LISTED_BAD_FILES = 20

REASON_EMPTY = "empty file"
REASON_UNKNOWN_FORMAT = "not an image: content is not JPEG, PNG, GIF, BMP or WebP"
REASON_TRUNCATED_JPEG = "truncated JPEG: no end-of-image marker (FFD9) at the end"
REASON_TRUNCATED_PNG = "truncated PNG: no IEND chunk at the end"
REASON_TRUNCATED_BMP = "truncated BMP: shorter than the size in its header"
REASON_TRUNCATED_WEBP = "truncated WebP: shorter than the size in its header"

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND"

log = logging.getLogger(__name__)


def _format_problem(head: bytes, tail: bytes, size: int) -> Optional[str]:
    """Why a file with these first/last bytes cannot be an intact image, or None."""
    if head.startswith(_JPEG_MAGIC):
        return None if _JPEG_END in tail else REASON_TRUNCATED_JPEG
    if head.startswith(_PNG_MAGIC):
        return None if _PNG_END in tail else REASON_TRUNCATED_PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return REASON_TRUNCATED_BMP if size < declared else None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        return REASON_TRUNCATED_WEBP if size < declared else None
    return REASON_UNKNOWN_FORMAT


def image_file_problem(path: str) -> Optional[str]:
    """Why `path` is not a readable image (empty, truncated, unknown), or None.

    Reads the size and at most HEAD_BYTES + TAIL_BYTES bytes, not the whole
    file: cheap enough for a million files. A corrupt body with intact ends
    passes; the input pipeline drops those when decoding fails.
    """
    if fs.is_url(path):
        return _url_file_problem(path)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return REASON_EMPTY
            head = os.pread(fd, HEAD_BYTES, 0)
            tail_start = max(0, size - TAIL_BYTES)
            tail = os.pread(fd, size - tail_start, tail_start)
        finally:
            os.close(fd)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return _format_problem(head, tail, size)


def _url_file_problem(path: str) -> Optional[str]:
    """`image_file_problem` for a file on a `tf.io.gfile` filesystem: its size and both ends, by seeks."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            size = f.size()
            if size == 0:
                return REASON_EMPTY
            head = f.read(HEAD_BYTES)
            tail_start = max(0, size - TAIL_BYTES)
            f.seek(tail_start)
            tail = f.read(size - tail_start)
    except tf.errors.OpError as e:
        return f"unreadable: {e.message}"
    return _format_problem(head, tail, size)


def _scan_chunk(paths: Sequence[str]) -> list[tuple[str, str]]:
    bad = []
    for path in paths:
        problem = image_file_problem(path)
        if problem is not None:
            bad.append((path, problem))
    return bad


def find_bad_images(
    paths: Iterable[str], *, threads: int = SCAN_THREADS
) -> list[tuple[str, str]]:
    """The (path, reason) of every file that is not a readable image, by path.

    Checks each file's size, magic bytes and end marker (`image_file_problem`)
    on a thread pool, since the work is file-system latency, not CPU. Logs
    progress for big folders.
    """
    paths = list(paths)
    chunks = [paths[i:i + SCAN_CHUNK] for i in range(0, len(paths), SCAN_CHUNK)]
    if len(chunks) <= 1 or threads <= 1:
        return sorted(_scan_chunk(paths))
    report_every = max(PROGRESS_EVERY, len(paths) // 20)
    bad, done, next_report = [], 0, report_every
    with futures.ThreadPoolExecutor(min(threads, len(chunks))) as pool:
        pending = {pool.submit(_scan_chunk, c): len(c) for c in chunks}
        for future in futures.as_completed(pending):
            bad += future.result()
            done += pending[future]
            if done >= next_report and done < len(paths):
                log.info("Checked %d of %d image files (%d bad so far).", done, len(paths), len(bad))
                next_report = (done // report_every + 1) * report_every
    return sorted(bad)


def list_bad_files(bad: Sequence[tuple[str, str]]) -> str:
    """The warning's list: one line per bad file, the first MAX_LISTED_BAD_FILES of them."""
    lines = [f"  {path}: {reason}" for path, reason in bad[:MAX_LISTED_BAD_FILES]]
    if len(bad) > MAX_LISTED_BAD_FILES:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_BAD_FILES} more.")
    return "\n".join(lines)
