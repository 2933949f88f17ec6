"""The `tf.data` input pipeline: batches of views from an `ImageSource`, as the reference's `tf2/data.py`.

`Views` says what each example becomes (two augmented views for pretraining,
one cropped-and-flipped view for fine-tuning, a resized one for evaluation, or
the uint8 image for on-device augmentation); `build_dataset` turns a source's
split into batches of them, and `distribute_dataset` feeds those to a
`tf.distribute.Strategy`, one pipeline per input context.

`build_dataset(..., deterministic=True, seed=s)` gives the same batches in every
process run: seeded file and example shuffles, ordered `tf.data` outputs, and
stateless augmentation seeded by each example's position in the stream
(`example_seed`). `skip_batches=k` then resumes that stream at batch k.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import tensorflow as tf

from tf_simclr.augment import host
from tf_simclr.data.views import (  # noqa: F401  (re-exported: the rules every feed follows)
    MODES, Views, check_batch_divides, check_stream_args, device_input_size, training_views,
)

# The reference's shuffle buffer (tf2/data.py): per-replica batch x 50 up to 32 px, else x 10.
SMALL_IMAGE_BUFFER_MULTIPLIER, BUFFER_MULTIPLIER, SMALL_IMAGE_SIZE = 50, 10, 32

log = logging.getLogger("tf_simclr")


def _preprocess_fn(views: Views, source) -> Callable[[tf.Tensor, Optional[tf.Tensor]], tf.Tensor]:
    """The per-image function `(image, seed or None) -> views`, as the reference chooses it."""
    spec = views.spec
    if views.on_device:
        return _device_input_fn(source, spec.image_size)
    if views.mode == "pretrain":
        return lambda image, seed: host.pretrain_views(image, spec, num_views=2, seed=seed)
    if views.mode in ("finetune", "distill"):
        return lambda image, seed: host.finetune_view(image, spec, seed=seed)
    return lambda image, seed: host.eval_view(image, spec.image_size)


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
    return host.fold_seed(base, position)


def default_shuffle_buffer(batch_size: int, image_size: int) -> int:
    """The reference's shuffle buffer: per-replica batch x 50 at <= 32 px, x 10 above."""
    multiplier = SMALL_IMAGE_BUFFER_MULTIPLIER if image_size <= SMALL_IMAGE_SIZE else BUFFER_MULTIPLIER
    return batch_size * multiplier


def _augment_by_position(ds, preprocess, seed: int, pipeline_id: int, skip: int) -> tf.data.Dataset:
    """Augments example i of the stream with `example_seed(seed, i, pipeline_id)`.

    Positions are numbered before the first `skip` examples are dropped, so a
    pipeline that skips gives the same examples as one that does not.
    """

    def augment_example(position, example):
        image, label = example
        return preprocess(image, example_seed(seed, position, pipeline_id)), tf.cast(label, tf.int32)

    ds = ds.enumerate().skip(skip)
    return ds.map(augment_example, num_parallel_calls=tf.data.AUTOTUNE)


def build_dataset(
    source,
    split: str,
    views: Views,
    batch_size: int,
    *,
    input_context: Optional[tf.distribute.InputContext] = None,
    seed: Optional[int] = None,
    deterministic: bool = False,
    skip_batches: int = 0,
    cache: bool = False,
    shuffle_buffer: Optional[int] = None,
    repeat: Optional[bool] = None,
) -> tf.data.Dataset:
    """Batches of `(views, labels int32 [B])` from one split of `source`.

    Training pipelines read shuffled files, cache decoded images if asked
    (before augmentation, so each epoch gets new views), shuffle examples, repeat
    forever and drop the last partial batch, with non-deterministic order for
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
      views: what each example becomes (`Views`).
      batch_size: examples per batch, per input pipeline (per replica under
        `distribute_dataset`).
      input_context: shards the data across input pipelines.
      seed: seed of the file and example shuffles, and with `deterministic`
        of the augmentations (otherwise they use TF's global seed).
      deterministic: reproducible batches (see above; needs `seed`), at some
        cost in speed: outputs keep their order.
      skip_batches: start at batch k of the stream, per input pipeline. With
        `deterministic` the result equals batches k, k+1, ... of a fresh
        pipeline bit for bit (to resume a run); otherwise the same number of
        examples is skipped, but they were random anyway. Skipped examples
        are read and decoded but not augmented.
      cache: cache decoded images in memory.
      shuffle_buffer: examples in the shuffle buffer. Defaults to the
        reference's (`default_shuffle_buffer`).
      repeat: repeat forever. Defaults to `views.training`.

    Returns:
      A `tf.data.Dataset` of `(images, labels)`; labels are -1 when unlabeled.
    """
    if not isinstance(views, Views):
        raise TypeError(f"views must be a pipeline.Views. Received: {type(views).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    if views.mode not in ("pretrain", "distill") and not source.is_labeled(split):
        raise ValueError(
            f"Split {split!r} of {source.name} has no labels, so it can only be used for pretraining or "
            "distillation. "
            f"Received: mode={views.mode!r}"
        )
    check_stream_args(deterministic, seed, skip_batches)
    training = views.training
    preprocess = _preprocess_fn(views, source)
    ds = source.as_dataset(split, shuffle_files=training, input_context=input_context, seed=seed)
    if cache:
        ds = ds.cache()
    if training or deterministic:
        options = tf.data.Options()
        options.deterministic = deterministic
        options.experimental_slack = training
        ds = ds.with_options(options)
    if training:
        ds = ds.shuffle(shuffle_buffer or default_shuffle_buffer(batch_size, views.spec.image_size), seed=seed)
    if training if repeat is None else repeat:
        ds = ds.repeat()
    skip = skip_batches * batch_size  # Skipped before the map: no augmentation work.
    if deterministic:
        pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
        ds = _augment_by_position(ds, preprocess, seed, pipeline_id, skip)
    else:
        ds = ds.skip(skip) if skip else ds
        ds = ds.map(lambda image, label: (preprocess(image, None), tf.cast(label, tf.int32)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, split: str, image_size: int, batch_size: int = 500) -> tf.data.Dataset:
    """Batches of one evaluation view per example, in order, read once (feature extraction, kNN)."""
    return build_dataset(source, split, Views.eval(image_size), batch_size)


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

    Raises:
      ValueError: `global_batch_size` does not divide by the replica count.
    """
    check_batch_divides(global_batch_size, strategy.num_replicas_in_sync, flag)
    return strategy.distribute_datasets_from_function(dataset_fn)
