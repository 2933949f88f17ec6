"""Prepare the genuine TFDS `fashion_mnist` dataset offline, from Debian's files.

Debian's `dataset-fashion-mnist` package installs the four Fashion-MNIST idx
files under `/usr/share/datasets/fashion-mnist/`. Their *decompressed* bytes are
exactly the files TFDS downloads, but the gzip wrappers differ (no embedded file
name), so TFDS rejects them as a checksum mismatch, even through `manual_dir`,
and its own download needs the internet.

The fix here runs TFDS's own `fashion_mnist` builder unchanged, handing its
split generation a download-manager stand-in that resolves each URL to the local,
decompressed file. Everything TFDS writes (features, splits, shards,
`dataset_info.json`) therefore comes from the real builder, and afterwards
`tfds.load('fashion_mnist', data_dir=...)` works as if it had been downloaded.
TFDS writes into a temporary folder and renames it on success, so an interrupted
run leaves no half-written dataset; a prepared dataset is reused, not rebuilt.

Command line: `tf_simclr fashion_mnist [--data_dir=DIR] [--source_dir=DIR]`.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
from typing import Any, Mapping

import tensorflow_datasets as tfds

from tf_simclr.data import idx

DEFAULT_SOURCE_DIR = idx.FASHION_MNIST_DIR
DATASET_NAME = "fashion_mnist"
_INSTALL_HINT = idx.FASHION_MNIST_INSTALL

# SHA-256 of the *decompressed* idx files: the same bytes TFDS's own download
# yields once extracted. They guard against a truncated or different file
# standing in for Fashion-MNIST (e.g. the digit MNIST, which has the same names).
EXPECTED_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

log = logging.getLogger(__name__)


def source_files(source_dir: str = DEFAULT_SOURCE_DIR) -> dict[str, str]:
    """Returns {file name: path} of the four gzip files, or raises if any is missing."""
    paths = {name: os.path.join(source_dir, name) for name in EXPECTED_SHA256}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST source files not found: {missing}. Install them with "
            f"`{_INSTALL_HINT}` (Debian/Ubuntu), or pass the folder that holds "
            f"{sorted(paths)} as source_dir. Received: source_dir={source_dir!r}"
        )
    return paths


def has_source_files(source_dir: str = DEFAULT_SOURCE_DIR) -> bool:
    """Whether all four Fashion-MNIST gzip files exist in `source_dir`."""
    return all(os.path.isfile(os.path.join(source_dir, n)) for n in EXPECTED_SHA256)


def is_prepared(data_dir: str | None = None) -> bool:
    """Whether TFDS already has a prepared `fashion_mnist` in `data_dir`."""
    return _builder(data_dir).is_prepared()


def _builder(data_dir: str | None):
    return tfds.builder(DATASET_NAME, data_dir=data_dir)


def _decompress(paths: Mapping[str, str], out_dir: str) -> dict[str, str]:
    """Decompresses each file into `out_dir`, verifying its content hash.

    Returns:
      {gzip file name: path of the decompressed file}.
    """
    extracted = {}
    for name, src in paths.items():
        dst = os.path.join(out_dir, name[: -len(".gz")])
        digest = hashlib.sha256()
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                digest.update(chunk)
                fout.write(chunk)
        if digest.hexdigest() != EXPECTED_SHA256[name]:
            raise ValueError(
                f"{src} does not hold the Fashion-MNIST data TFDS expects "
                f"(sha256 of its content {digest.hexdigest()}, expected "
                f"{EXPECTED_SHA256[name]}). Reinstall it with `{_INSTALL_HINT}`."
            )
        extracted[name] = dst
    return extracted


class _LocalDownloadManager:
    """Stands in for `tfds.download.DownloadManager` during split generation.

    TFDS builders only call `download`/`extract`/`download_and_extract` on a
    (nested) structure of URLs; each URL is answered with the local decompressed
    file of the same base name. `downloaded_size` reports the sizes TFDS has
    registered for those URLs, so `dataset_info.json` matches a real download.
    """

    def __init__(self, local_files: Mapping[str, str], url_infos: Mapping[str, Any]):
        self._local_files = dict(local_files)
        self._url_infos = url_infos or {}
        self._used_urls: set[str] = set()

    def _resolve(self, url: Any) -> str:
        url = str(getattr(url, "url", url))  # Accepts tfds.download.Resource too.
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if name not in self._local_files:
            raise ValueError(
                f"The {DATASET_NAME} builder asked for {url}, which has no local "
                f"file among {sorted(self._local_files)}. This TFDS version may "
                "have changed the builder; prepare the dataset with internet access."
            )
        self._used_urls.add(url)
        return self._local_files[name]

    def _map(self, urls: Any) -> Any:
        if isinstance(urls, Mapping):
            return {k: self._map(v) for k, v in urls.items()}
        if isinstance(urls, (list, tuple)):
            return type(urls)(self._map(v) for v in urls)
        return self._resolve(urls)

    download = extract = download_and_extract = _map

    @property
    def downloaded_size(self) -> int:
        sizes = [getattr(self._url_infos.get(u), "size", None) for u in self._used_urls]
        if any(s is None for s in sizes):
            return 0
        return int(sum(sizes))


def prepare_fashion_mnist(
    data_dir: str | None = None,
    source_dir: str = DEFAULT_SOURCE_DIR,
) -> tfds.core.DatasetBuilder:
    """Prepares TFDS `fashion_mnist` in `data_dir` from local idx files.

    Idempotent: an already prepared dataset is returned untouched.

    Args:
      data_dir: TFDS data folder. Defaults to TFDS's default
        (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      source_dir: folder holding `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`.
        Defaults to where Debian's `dataset-fashion-mnist` puts them.

    Returns:
      The prepared `tfds.core.DatasetBuilder` (`builder.as_dataset(...)` works).

    Raises:
      FileNotFoundError: if the source files are missing.
      ValueError: if a source file's content is not Fashion-MNIST.
    """
    builder = _builder(data_dir)
    if builder.is_prepared():
        log.info("TFDS %s already prepared in %s", DATASET_NAME, builder.data_dir)
        return builder
    paths = source_files(source_dir)
    if not hasattr(builder, "_make_download_manager"):
        raise RuntimeError(
            f"This tensorflow-datasets version ({tfds.__version__}) lacks the hook "
            f"used to prepare {DATASET_NAME} offline. Prepare it on a machine "
            "with internet access and copy the data folder."
        )
    with tempfile.TemporaryDirectory(prefix="fashion_mnist_src_") as tmp:
        local_files = _decompress(paths, tmp)
        manager = _LocalDownloadManager(local_files, getattr(builder, "url_infos", {}))
        # The instance attribute shadows the method for this builder only; the
        # builder's own _split_generators/_generate_examples run unchanged.
        builder._make_download_manager = lambda **_: manager  # pylint: disable=protected-access
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
        finally:
            del builder._make_download_manager  # pylint: disable=protected-access
    log.info(
        "Prepared TFDS %s in %s from the local files in %s",
        DATASET_NAME,
        builder.data_dir,
        source_dir,
    )
    # A fresh builder reads the written dataset_info.json like any later load.
    return _builder(data_dir)
