"""Datasets and the `tf.data` input pipeline.

An `ImageSource` yields decoded `(image uint8 [H, W, C], label int64)` pairs
per split (label -1 for unlabeled images); `load_source` opens one from a TFDS
name or `folder:/path`. `build_dataset` turns a source into batches for
pretraining (two augmented views stacked on channels), fine-tuning or
evaluation, as the reference's `tf2/data.py` does; `distribute_dataset` feeds
those to a `tf.distribute.Strategy`, one pipeline per input context.

`build_dataset(..., deterministic=True, seed=s)` gives the same batches in
every process run: seeded file and example shuffles, ordered `tf.data`
outputs, and stateless augmentation seeded by each example's position in the
stream (`example_seed`). `skip_batches=k` then resumes that stream at batch k.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import os
import socket
import urllib.parse
from typing import Callable, Optional, Protocol, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from tf_simclr import augment
from tf_simclr import fashion_mnist
from tf_simclr.image_folder import ImageFolderSource

FOLDER_PREFIX = "folder:"
MODES = ("pretrain", "finetune", "eval")
UNLABELED_SPLITS = ("unlabelled", "unlabeled")
# The reference's shuffle buffers: large enough to mix ImageNet's sorted files.
IMAGENET_SHUFFLE_BUFFER = 50_000
DEFAULT_SHUFFLE_BUFFER = 10_000
# Splits of common datasets, so a typo fails before a long download/prepare.
KNOWN_SPLITS = {
    "imagenet2012": ("train", "validation"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabelled"),
    "fashion_mnist": ("train", "test"),
    "mnist": ("train", "test"),
}

log = logging.getLogger(__name__)


class ImageSource(Protocol):
    """Where images come from: a TFDS dataset or a folder.

    Attributes:
      name: how the user named it (`cifar10`, `folder:/data/pets`).
      num_classes: number of classes; 0 when there are no labels.
      image_shape: (H, W, C) with None for sizes that vary.
      splits: split names (TFDS sources also accept slices like `train[:10%]`).
    """

    name: str
    num_classes: int
    image_shape: tuple
    splits: tuple

    def num_examples(self, split: str) -> int:
        ...

    def as_dataset(
        self,
        split: str,
        *,
        shuffle_files: bool,
        input_context: Optional[tf.distribute.InputContext] = None,
        seed: Optional[int] = None,
    ) -> tf.data.Dataset:
        """`(image uint8 [H, W, C], label int64)` pairs; label -1 if unlabeled.

        Args:
          split: a split name (or TFDS split spec).
          shuffle_files: read files in a random order (training).
          input_context: shards the data across input pipelines.
          seed: seed of the file shuffle. Defaults to None (random).
        """
        ...


def _split_names(split: str) -> list[str]:
    """Base split names of a TFDS split spec: 'train[:10%]+test' -> [train, test]."""
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


def is_unlabeled(source: ImageSource, split: str) -> bool:
    """Whether a split's examples carry no class label (label -1)."""
    if source.num_classes == 0:
        return True
    if hasattr(source, "is_labeled"):  # Folders know per split.
        return not source.is_labeled(split)
    return all(name in UNLABELED_SPLITS for name in _split_names(split))


class TFDSSource:
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
            bad = [s for s in _split_names(split) if s not in KNOWN_SPLITS[self.name]]
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
        except Exception:  # Older TFDS: assume one file per shard is not known.
            return 1

    def num_examples(self, split: str) -> int:
        self._check_prepared()
        self.check_split(split)
        return int(self.builder.info.splits[split].num_examples)

    def as_dataset(
        self,
        split: str,
        *,
        shuffle_files: bool,
        input_context: Optional[tf.distribute.InputContext] = None,
        seed: Optional[int] = None,
    ) -> tf.data.Dataset:
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
                interleave_cycle_length=32,
                interleave_block_length=1,
                input_context=input_context,
                shuffle_seed=seed,
            ),
        )
        if example_shard is not None:
            ds = ds.shard(*example_shard)
        if is_unlabeled(self, split):
            ds = ds.map(lambda image, _: (image, tf.constant(-1, tf.int64)))
        return ds


def _close_matches(name: str) -> str:
    names = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"{hint} Common choices: {', '.join(KNOWN_SPLITS)}; any TFDS image-classification "
        f"dataset (tfds.list_builders()), or '{FOLDER_PREFIX}/path/to/images'."
    )


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


def _prepare_tfds(builder: tfds.core.DatasetBuilder, data_dir: Optional[str]):
    """Prepares a TFDS dataset: offline for Fashion-MNIST, else TFDS's download."""
    name, where = builder.name, builder.data_dir_root
    if name == fashion_mnist.DATASET_NAME and fashion_mnist.has_source_files():
        log.info("Preparing %s offline from %s", name, fashion_mnist.DEFAULT_SOURCE_DIR)
        return fashion_mnist.prepare_fashion_mnist(data_dir)
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
            f"Could not download and prepare TFDS dataset {name} into {where}: "
            f"{type(e).__name__}: {e}. {todo}"
        ) from e
    return tfds.builder(name, data_dir=data_dir)


def load_source(
    dataset: str,
    data_dir: Optional[str] = None,
    *,
    prepare: bool = True,
    splits: Sequence[str] = (),
    strict_images: bool = False,
) -> ImageSource:
    """Opens a dataset by name, preparing a TFDS dataset if needed.

    Args:
      dataset: a TFDS image-classification name (`imagenet2012`, `cifar10`,
        `cifar100`, `stl10`, `fashion_mnist`, ...) or `folder:/path/to/images`.
      data_dir: TFDS data folder. Defaults to TFDS's default. Ignored for folders.
      prepare: prepare an unprepared TFDS dataset (offline from Debian's files
        for fashion_mnist, else TFDS's download). If False, an unprepared
        source still gives metadata but fails on reading. Defaults to True.
      splits: splits the caller will read, checked before any preparation.
      strict_images: passed to `ImageFolderSource(path, strict=...)` for
        `folder:` datasets; ignored for TFDS. Defaults to False.

    Returns:
      An `ImageSource`.

    Raises:
      ValueError: unknown dataset or split, or a TFDS dataset without
        `image`/`label` features.
      RuntimeError: the dataset is not prepared and cannot be prepared here.
    """
    if dataset.startswith(FOLDER_PREFIX):
        source = ImageFolderSource(dataset[len(FOLDER_PREFIX):], strict=strict_images)
        for split in splits:
            source.num_examples(split)  # Raises ValueError for unknown splits.
        return source
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        hint = _close_matches(dataset)
        raise ValueError(f"Unknown dataset. Received: dataset={dataset!r}.{hint}") from None
    features = builder.info.features
    if builder.info.supervised_keys is None or not {"image", "label"} <= set(features or {}):
        raise ValueError(
            f"TFDS dataset {dataset} is not an image-classification dataset (it needs "
            f"'image' and 'label' features). Received: dataset={dataset!r} with features "
            f"{list(features or {})}"
        )
    source = TFDSSource(builder)
    for split in splits:
        source.check_split(split)
    if prepare and not builder.is_prepared():
        source = TFDSSource(_prepare_tfds(builder, data_dir))
        for split in splits:
            source.check_split(split)
    return source


# ---- Input pipeline -----------------------------------------------------------


def _preprocess_fn(
    mode: str, is_training: bool, image_size: int, color_jitter_strength: float, use_blur: bool
) -> Callable[[tf.Tensor, Optional[tf.Tensor]], tf.Tensor]:
    """The per-image augmentation `(image, seed or None) -> views`, as the reference chooses it."""
    if is_training and mode == "pretrain":
        return lambda image, seed: augment.pretrain_views(
            image, image_size, image_size,
            color_jitter_strength=color_jitter_strength, blur=use_blur, num_views=2, seed=seed,
        )
    if is_training and mode == "finetune":
        # The reference fine-tunes with crop + flip only (colour strength 0).
        return lambda image, seed: augment.preprocess_for_train(
            image, image_size, image_size, color_distort=False, seed=seed
        )
    # Center-cropping tiny images (CIFAR) throws away too much: the reference skips it.
    return lambda image, seed: augment.preprocess_for_eval(
        image, image_size, image_size, crop=image_size > 32
    )


AUGMENT_ON = ("host", "device")


def device_input_size(source, image_size: int) -> tuple[int, int]:
    """Size of the uint8 images handed to on-device augmentation.

    Sources of one image size keep it; images of varying sizes are resized so the
    short side is 8/7 of `image_size` (256 for 224, the usual eval resize) and
    centre-cropped square, since a batch needs one shape. Crops are then drawn
    from that image rather than from the original (the one deviation from the
    host pipeline).
    """
    height, width = tuple(source.image_shape)[:2]
    if height and width:
        return int(height), int(width)
    side = int(math.ceil(image_size * 8 / 7))
    return side, side


def _device_input_fn(source, image_size: int):
    height, width = device_input_size(source, image_size)
    fixed = tuple(tuple(source.image_shape)[:2]) == (height, width)

    def to_uint8_rgb(image, seed):
        image = tf.convert_to_tensor(image)
        if not fixed:
            scale = tf.cast(height, tf.float32) / tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32)
            new = tf.cast(tf.math.ceil(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
            image = tf.image.resize(image, new, antialias=True)
            image = tf.image.resize_with_crop_or_pad(image, height, width)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return tf.ensure_shape(tf.cast(image, tf.uint8), (height, width, 3))

    return to_uint8_rgb


def example_seed(seed: int, position, pipeline_id: int = 0) -> tf.Tensor:
    """The augmentation seed (int64 `[2]`) of the example at `position` of a stream.

    A function of the numbers only, so it is the same in every process and
    does not depend on parallelism or timing. `position` counts examples from
    0 in the infinite (repeated) stream of input pipeline `pipeline_id`.
    """
    base = tf.constant([seed, pipeline_id], tf.int64)
    return augment.fold_seed(base, position)


def default_shuffle_buffer(source: ImageSource) -> int:
    """The reference's buffer: 50,000 for ImageNet, 10,000 otherwise."""
    return IMAGENET_SHUFFLE_BUFFER if source.name.startswith("imagenet") else DEFAULT_SHUFFLE_BUFFER


def _augment_by_position(ds, preprocess, seed: int, pipeline_id: int, skip: int) -> tf.data.Dataset:
    """Augments example i of the stream with `example_seed(seed, i, pipeline_id)`.

    Positions are numbered before the first `skip` examples are dropped, so a
    pipeline that skips gives the same examples as one that does not.
    """

    def augment_example(position, example):
        image, label = example
        views = preprocess(image, example_seed(seed, position, pipeline_id))
        return views, tf.cast(label, tf.int32)

    ds = ds.enumerate().skip(skip)
    return ds.map(augment_example, num_parallel_calls=tf.data.AUTOTUNE)


def _check_determinism_args(deterministic: bool, seed, skip_batches) -> None:
    if deterministic and seed is None:
        raise ValueError(
            "deterministic=True needs a seed for the shuffles and augmentations. "
            "Received: seed=None; pass seed=<int> (e.g. --seed)."
        )
    if deterministic and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"deterministic=True needs an int seed. Received: seed={seed!r}")
    if isinstance(skip_batches, bool) or not isinstance(skip_batches, int) or skip_batches < 0:
        raise ValueError(f"skip_batches must be an int >= 0. Received: skip_batches={skip_batches!r}")


def _check_pipeline_args(source, split, mode, batch_size, image_size, is_training) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int. Received: image_size={image_size!r}")
    if mode != "pretrain" and is_unlabeled(source, split):
        raise ValueError(
            f"Split {split!r} of {source.name} has no labels, so it can only be used "
            f"for pretraining. Received: mode={mode!r}"
        )


def build_dataset(
    source: ImageSource,
    split: str,
    *,
    batch_size: int,
    is_training: bool,
    mode: str = "pretrain",
    image_size: int,
    color_jitter_strength: float = 1.0,
    use_blur: bool = False,
    cache: bool = False,
    input_context: Optional[tf.distribute.InputContext] = None,
    shuffle_buffer: Optional[int] = None,
    seed: Optional[int] = None,
    repeat: Optional[bool] = None,
    augment_on: str = "host",
    deterministic: bool = False,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Batches of `(images float32 [B, S, S, C], labels int32 [B])` from one split.

    Training reads shuffled files, caches decoded images if asked (before
    augmentation, so each epoch gets new views), shuffles examples, repeats
    forever and drops the last partial batch, with non-deterministic order for
    speed unless `deterministic`. Evaluation keeps the order, reads once and
    keeps the last batch.

    With `deterministic=True` the batches are a function of the arguments (and
    TF's global seed, which seeded shuffles combine with their own): the same
    in every process run. Example i of the stream (counted from 0 over all
    epochs, per input pipeline) is augmented with stateless ops seeded by
    `example_seed(seed, i, input_pipeline_id)`.

    Args:
      source: an `ImageSource` (see `load_source`).
      split: split to read, e.g. `train` or `train[:10%]` for TFDS.
      batch_size: examples per batch, per input pipeline (per replica under
        `distribute_dataset`).
      is_training: training pipeline (shuffle, repeat, random augmentation).
      mode: `pretrain` (C = 6: two views stacked on channels), `finetune`
        (C = 3, crop and flip) or `eval` (C = 3, resize/center crop). Ignored
        (eval preprocessing) when not training. Defaults to `pretrain`.
      image_size: output height and width S.
      color_jitter_strength: colour distortion strength for pretraining.
      use_blur: Gaussian blur on pretraining views. Defaults to False.
      cache: cache decoded images in memory. Defaults to False.
      input_context: shards the data across input pipelines.
      shuffle_buffer: examples in the shuffle buffer. Defaults to 50,000 for
        ImageNet and 10,000 otherwise.
      seed: seed of the file and example shuffles, and with `deterministic`
        of the augmentations (otherwise they use TF's global seed). Defaults
        to None.
      repeat: repeat forever. Defaults to `is_training`.
      augment_on: `host` augments here; `device` (pretraining only) yields uint8
        `[B, H, W, 3]` images of one size for `SimCLRModel` to augment inside its
        compiled step. Defaults to `host`.
      deterministic: reproducible batches (see above; needs `seed`), at some
        cost in speed: outputs keep their order. Defaults to False.
      skip_batches: start at batch k of the stream, per input pipeline. With
        `deterministic` the result equals batches k, k+1, ... of a fresh
        pipeline bit for bit (to resume a run); otherwise the same number of
        examples is skipped, but they were random anyway. Skipped examples
        are read and decoded but not augmented. Defaults to 0.

    Returns:
      A `tf.data.Dataset` of `(images, labels)`; labels are -1 when unlabeled.
    """
    _check_pipeline_args(source, split, mode, batch_size, image_size, is_training)
    _check_determinism_args(deterministic, seed, skip_batches)
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}. Received: augment_on={augment_on!r}")
    if augment_on == "device" and is_training and mode == "pretrain":
        preprocess = _device_input_fn(source, image_size)
    else:
        preprocess = _preprocess_fn(mode, is_training, image_size, color_jitter_strength, use_blur)
    ds = source.as_dataset(split, shuffle_files=is_training, input_context=input_context, seed=seed)
    if cache:
        ds = ds.cache()
    if is_training or deterministic:
        options = tf.data.Options()
        options.deterministic = deterministic
        options.experimental_slack = is_training
        ds = ds.with_options(options)
    if is_training:
        ds = ds.shuffle(shuffle_buffer or default_shuffle_buffer(source), seed=seed)
    if is_training if repeat is None else repeat:
        ds = ds.repeat()
    skip = skip_batches * batch_size  # Skipped before the map: no augmentation work.
    if deterministic:
        pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
        ds = _augment_by_position(ds, preprocess, seed, pipeline_id, skip)
    else:
        ds = ds.skip(skip) if skip else ds
        ds = ds.map(
            lambda image, label: (preprocess(image, None), tf.cast(label, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=is_training)
    return ds.prefetch(tf.data.AUTOTUNE)


def distribute_dataset(
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    global_batch_size: int,
    *,
    flag: str = "--train_batch_size",
) -> tf.distribute.DistributedDataset:
    """Builds one input pipeline per worker through `strategy`.

    Args:
      strategy: the `tf.distribute.Strategy` that trains.
      dataset_fn: `input_context -> tf.data.Dataset`, batched with
        `input_context.get_per_replica_batch_size(global_batch_size)`, e.g. a
        closure over `build_dataset`.
      global_batch_size: the batch size summed over all replicas.
      flag: the flag the batch size came from, for the error message.
        Defaults to `--train_batch_size`.

    Returns:
      A `tf.distribute.DistributedDataset`.

    Raises:
      ValueError: `global_batch_size` does not divide by the replica count.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
        lower = global_batch_size // replicas * replicas
        nearest = [s for s in (lower, lower + replicas) if s > 0]
        raise ValueError(
            f"{flag}={global_batch_size} must be a positive multiple of the number of "
            f"replicas ({replicas}), so that every replica gets the same batch. "
            f"Nearest valid sizes: {' or '.join(map(str, nearest))}."
        )
    return strategy.distribute_datasets_from_function(dataset_fn)
