"""TFDS image-classification datasets as an `ImageSource` (`--dataset=cifar10`, `imagenet2012`, ...).

Offline preparation: Fashion-MNIST is built from Debian's files when present
(`fashion_mnist.py`); any other dataset that is not prepared fails in
milliseconds with what to do, instead of TFDS retrying a download for minutes.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import urllib.parse
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_simclr.data import fashion_mnist
from tf_simclr.data.base import BaseSource, shard, split_names

log = logging.getLogger("tf_simclr")

# Splits of common datasets, so a typo fails before a long download/prepare.
KNOWN_SPLITS = {
    "imagenet2012": ("train", "validation"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabelled"),
    "fashion_mnist": ("train", "test"),
    "mnist": ("train", "test"),
}
# Features tried, in order, as example ids when none is named.
DEFAULT_ID_KEYS = ("file_name", "id", "filename", "image/filename")


CACHE_SUBSETS_UP_TO = 50_000  # Examples; e.g. ImageNet 1% (12,811) is about 1.4 GB of JPEGs.


class TFDSSource(BaseSource):
    """An image-classification TFDS dataset (`as_supervised=True`)."""

    def __init__(self, builder: tfds.core.DatasetBuilder):
        self.builder = builder
        self.name = builder.name
        features = builder.info.features
        self.num_classes = int(features["label"].num_classes)
        self.image_shape = tuple(features["image"].shape)
        self.class_names = tuple(features["label"].names)

    @property
    def splits(self) -> tuple:
        return tuple(self.builder.info.splits) or KNOWN_SPLITS.get(self.name, ())

    def check_split(self, split: str) -> None:
        """Raises ValueError for a split this dataset does not have.

        Works before the dataset is prepared for the datasets in KNOWN_SPLITS.
        """
        if self.builder.info.splits:
            try:
                self.builder.info.splits[split]
            except (KeyError, ValueError) as e:
                raise ValueError(
                    f"Unknown split for {self.name}. Received: split={split!r}; "
                    f"available: {list(self.splits)} (slices like 'train[:10%]' work). {e}"
                ) from None
        elif self.name in KNOWN_SPLITS:
            bad = [s for s in split_names(split) if s not in KNOWN_SPLITS[self.name]]
            if bad:
                raise ValueError(
                    f"Unknown split for {self.name}. Received: split={split!r}; "
                    f"available: {list(KNOWN_SPLITS[self.name])}"
                )

    def _check_prepared(self) -> None:
        if not self.builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {self.name} is not prepared in {self.builder.data_dir_root}. "
                "Call load_source(..., prepare=True) or prepare it with TFDS first."
            )

    def _num_files(self, split: str) -> int:
        try:
            return len(self.builder.info.splits[split].file_instructions)
        except Exception:  # Older TFDS: the file count is not known.
            return 1

    def num_examples(self, split: str) -> int:
        self._check_prepared()
        self.check_split(split)
        return int(self.builder.info.splits[split].num_examples)

    def as_dataset(self, split: str, *, shuffle_files: bool, input_context=None, seed: Optional[int] = None):
        self._check_prepared()
        self.check_split(split)
        example_shard = None
        if input_context is not None and input_context.num_input_pipelines > self._num_files(split):
            # Too few files for one per pipeline (Fashion-MNIST has one): every pipeline reads
            # the files in the same order and keeps every n-th example.
            example_shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
            input_context = None
            seed = 0 if seed is None else seed
        ds = self.builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            as_supervised=True,
            # input_context makes each input pipeline read its own files.
            read_config=tfds.ReadConfig(
                interleave_cycle_length=32, interleave_block_length=1, input_context=input_context, shuffle_seed=seed,
            ),
        )
        if example_shard is not None:
            ds = ds.shard(*example_shard)
        if not self.is_labeled(split):
            ds = ds.map(lambda image, _: (image, tf.constant(-1, tf.int64)))
        return ds

    # ---- Naming and selecting examples (label subsets) -------------------------
    def _id_key(self, id_key: Optional[str]) -> Optional[str]:
        """The feature naming each example, or None when there is none."""
        features = self.builder.info.features
        if id_key is not None:
            if id_key not in features:
                raise ValueError(
                    f"TFDS dataset {self.name} has no feature {id_key!r}. Received: id_key={id_key!r}; "
                    f"features: {sorted(features)}. Pass id_key=None to use example indices."
                )
            return id_key
        return next((k for k in DEFAULT_ID_KEYS if k in features), None)

    def _records(self, split: str):
        """A split's examples as dicts in natural (file) order, images still encoded.

        One file at a time (cycle length 1), so positions are stable and equal to
        TFDS slicing (`train[i:i+1]`); skipping image decoding makes a pass over
        labels and names cheap.
        """
        self._check_prepared()
        self.check_split(split)
        return self.builder.as_dataset(
            split=split, shuffle_files=False, read_config=tfds.ReadConfig(interleave_cycle_length=1),
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def split_index(self, split: str, *, id_key: Optional[str] = None) -> tuple[np.ndarray, Optional[list[str]]]:
        key = self._id_key(id_key)
        records = self._records(split).map(
            lambda ex: (ex["label"], ex[key] if key else tf.constant(b"")), num_parallel_calls=tf.data.AUTOTUNE,
        )
        labels, names = [], []
        for label, name in records.batch(8192).prefetch(2).as_numpy_iterator():
            labels.append(label)
            names.extend(n.decode("utf-8") for n in name)
        labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros([0], np.int64)
        if not self.is_labeled(split):
            labels = np.full_like(labels, -1)
        return labels, (names if key else None)

    def resolve_ids(self, split: str, ids: Sequence[str], *, id_key: Optional[str] = None):
        key = self._id_key(id_key)
        if key is None or all(isinstance(i, (int, np.integer)) for i in ids):
            return super().resolve_ids(split, ids)
        return None, list(dict.fromkeys(str(i) for i in ids)), key

    def select(self, split: str, *, indices=None, ids=None, id_key: Optional[str] = None, shuffle_files: bool = False,
               input_context=None, seed: Optional[int] = None):
        from tf_simclr.data import filters

        records = self._records(split)
        if indices is not None:
            records = filters.filter_by_indices(records, indices)
        else:
            records = filters.filter_by_ids(records, ids, self._id_key(id_key))
        chosen = len(indices) if indices is not None else len(ids)
        if chosen <= CACHE_SUBSETS_UP_TO:
            # The filter reads the whole split: once per epoch, for a 1% subset that is 100x the
            # work of the epoch. A small subset is kept in memory, images still encoded, after the first pass.
            records = records.cache()
        records = shard(records, input_context)
        image_feature = self.builder.info.features["image"]
        labelled = self.is_labeled(split)

        def decode(example):
            label = tf.cast(example["label"], tf.int64) if labelled else tf.constant(-1, tf.int64)
            return image_feature.decode_example(example["image"]), label

        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _close_matches(name: str) -> str:
    names = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"{hint} Common choices: {', '.join(KNOWN_SPLITS)}; any TFDS image-classification "
        "dataset (tfds.list_builders()), or 'folder:/path/to/images'."
    )


def open_tfds(dataset: str, data_dir: Optional[str], splits: Sequence[str] = ()) -> TFDSSource:
    """A `TFDSSource` for a dataset name (not prepared yet; see `prepare`)."""
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"Unknown dataset. Received: dataset={dataset!r}.{_close_matches(dataset)}") from None
    features = builder.info.features
    if builder.info.supervised_keys is None or not {"image", "label"} <= set(features or {}):
        raise ValueError(
            f"TFDS dataset {dataset} is not an image-classification dataset (it needs "
            f"'image' and 'label' features). Received: dataset={dataset!r} with features {list(features or {})}"
        )
    return TFDSSource(builder)


def _network_unreachable(builder: tfds.core.DatasetBuilder) -> Optional[str]:
    """Name of a download host that does not resolve, or None.

    Offline, TFDS retries each download for minutes before failing; a DNS
    lookup fails in milliseconds. Skipped behind a proxy, where DNS may not work.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None
    urls = list(getattr(builder, "url_infos", None) or {})
    hosts = {urllib.parse.urlparse(u).hostname for u in urls} - {None}
    for host in sorted(hosts)[:1]:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            return host
    return None


def prepare(source: TFDSSource) -> TFDSSource:
    """Prepares the dataset if needed: offline for Fashion-MNIST, else TFDS's download."""
    builder = source.builder
    if builder.is_prepared():
        return source
    name, where = builder.name, builder.data_dir_root
    data_dir = builder.data_dir_root
    if name == fashion_mnist.DATASET_NAME and fashion_mnist.has_source_files():
        log.info("Preparing %s offline from %s", name, fashion_mnist.DEFAULT_SOURCE_DIR)
        return TFDSSource(fashion_mnist.prepare_fashion_mnist(data_dir))
    todo = (
        f"Prepare it where there is internet access (`tfds.builder({name!r}, "
        f"data_dir=...).download_and_prepare()`) and copy the folder {name}/ into "
        f"{where}, or pass --data_dir pointing to a prepared copy."
    )
    if name == fashion_mnist.DATASET_NAME:
        todo += " Offline: `apt-get install dataset-fashion-mnist` and rerun."
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        todo += f" {name} also needs files downloaded by hand: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    host = _network_unreachable(builder)
    if host:
        raise RuntimeError(
            f"TFDS dataset {name} is not prepared in {where}, and it cannot be "
            f"downloaded: {host} does not resolve (no internet?). {todo}"
        )
    log.info("Downloading and preparing TFDS %s into %s", name, where)
    try:
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types: network, checksum, manual.
        raise RuntimeError(
            f"Could not download and prepare TFDS dataset {name} into {where}: {type(e).__name__}: {e}. {todo}"
        ) from e
    return TFDSSource(tfds.builder(name, data_dir=data_dir))

