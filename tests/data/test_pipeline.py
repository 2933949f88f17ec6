"""data.pipeline: batch formats per Views mode, eval order and pixels, shuffle buffer, caching, distribution, errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import helpers
from helpers import write_image_folder
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import pipeline
from tf_simclr.data.pipeline import Views, build_dataset, eval_dataset
from tf_simclr.data.sources import load_source


def _write_png(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)


def _pixels(path):
    """The PNG's pixels, decoded by PIL (independent of the pipeline's decoder)."""
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """Two classes of 10 random 32x32 PNGs, opened as a folder source."""
    root = write_image_folder(str(tmp_path_factory.mktemp("classes")), per_class=10, size=32)
    return load_source(f"folder:{root}")


def _pretrain(size, **spec):
    return Views("pretrain", AugmentSpec(size, **spec))


def _finetune(size, **spec):
    return Views("finetune", AugmentSpec(size, **spec))


# ---- build_dataset formats ---------------------------------------------------------


def test_pretrain_batches_two_views_on_channels(class_folder):
    ds = build_dataset(class_folder, "train", _pretrain(16), batch_size=4, seed=0)
    assert ds.element_spec[0].shape.as_list() == [4, 16, 16, 6]
    assert ds.element_spec[1].dtype == tf.int32
    for images, labels in ds.take(6):  # More batches than one epoch holds: repeats.
        x = images.numpy()
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        assert not np.allclose(x[..., :3], x[..., 3:])  # Two independent views.
        assert set(labels.numpy()) <= {0, 1}


def test_finetune_batches_are_single_view(class_folder):
    ds = build_dataset(class_folder, "train", _finetune(24), batch_size=3)
    images, labels = next(iter(ds))
    assert images.shape == (3, 24, 24, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32


def test_eval_keeps_order_remainder_and_pixels(class_folder):
    paths, labels = class_folder.files("train")
    ds = build_dataset(class_folder, "train", Views.eval(32), batch_size=4)
    batches = list(ds)
    n = len(paths)
    assert [int(b[0].shape[0]) for b in batches] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    images = np.concatenate([b[0].numpy() for b in batches])
    got_labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(got_labels, labels)
    # image_size <= 32: no center crop, so a 32x32 image comes back as pixels / 255.
    expected = np.stack([_pixels(p) for p in paths]).astype(np.float32) / 255.0
    np.testing.assert_allclose(images, expected, atol=1e-6)
    again = np.concatenate([x.numpy() for x, _ in eval_dataset(class_folder, "train", 32, batch_size=7)])
    np.testing.assert_array_equal(again, images)  # eval_dataset: the same views, other batching.


@pytest.mark.parametrize("size, cropped", [(32, False), (40, True)])
def test_eval_center_crops_only_above_32_pixels(tmp_path, size, cropped):
    # A white 2-pixel frame around black: any central 87.5% crop removes it.
    framed = np.full((size, size, 3), 255, np.uint8)
    framed[2:-2, 2:-2] = 0
    _write_png(str(tmp_path / "c" / "framed.png"), framed)
    source = load_source(f"folder:{tmp_path}")
    split = "train" if source.num_examples("train") else "test"
    ds = build_dataset(source, split, Views.eval(size), batch_size=1)
    images, _ = next(iter(ds))
    assert images.shape == (1, size, size, 3)
    expected = np.zeros((size, size, 3)) if cropped else framed / 255.0
    np.testing.assert_allclose(images.numpy()[0], expected, atol=1e-6)


def test_training_drops_remainder_and_eval_can_repeat(class_folder):
    ds = build_dataset(class_folder, "train", _finetune(8), batch_size=7)
    assert ds.element_spec[0].shape[0] == 7  # Static batch: drop_remainder=True.
    n = class_folder.num_examples("test")
    ds = build_dataset(class_folder, "test", Views.eval(8), batch_size=n, repeat=True)
    assert len(list(ds.take(3))) == 3  # One epoch holds a single batch.
    once = build_dataset(class_folder, "test", Views.eval(8), batch_size=n)
    assert len(list(once.take(3))) == 1  # Evaluation reads once by default.


def test_cache_comes_before_augmentation(tmp_path):
    _write_png(str(tmp_path / "only.png"), np.random.default_rng(2).integers(0, 256, (20, 20, 3), np.uint8))
    source = load_source(f"folder:{tmp_path}")
    ds = build_dataset(source, "train", _pretrain(8), batch_size=1, cache=True)
    first, second = [x.numpy() for x, _ in ds.take(2)]  # Two epochs of one image.
    assert not np.allclose(first, second)  # Fresh views after the cache.


def test_cache_reads_each_file_once(tmp_path, monkeypatch):
    """With cache=True the second epoch is served from memory: the source is iterated once."""
    source = helpers.PositionSource(3, size=4)
    passes = []
    original = source.as_dataset

    def counting(split, **kwargs):
        passes.append(split)
        ds = original(split, **kwargs)
        counter = tf.Variable(0, dtype=tf.int64)
        reads.append(counter)
        return ds.map(lambda image, label: (image + tf.cast(counter.assign_add(1) * 0, tf.uint8), label))

    reads = []
    monkeypatch.setattr(source, "as_dataset", counting)
    ds = build_dataset(source, "train", _finetune(4), batch_size=1, cache=True, shuffle_buffer=3)
    list(ds.take(9))  # Three epochs.
    assert passes == ["train"] and int(reads[0].numpy()) == 3
    uncached = build_dataset(source, "train", _finetune(4), batch_size=1, shuffle_buffer=3)
    list(uncached.take(9))
    assert int(reads[1].numpy()) >= 9  # Without the cache every epoch reads again.


def test_unlabeled_folder_gives_minus_one_and_only_pretrains(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        _write_png(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (12, 9, 3), np.uint8))
    source = load_source(f"folder:{tmp_path}")
    assert source.num_classes == 0 and not source.is_labeled("train")
    ds = build_dataset(source, "train", _pretrain(8), batch_size=2)
    images, labels = next(iter(ds))
    assert images.shape == (2, 8, 8, 6)
    np.testing.assert_array_equal(labels.numpy(), [-1, -1])
    with pytest.raises(ValueError, match="no labels"):
        build_dataset(source, "train", _finetune(8), batch_size=2)
    with pytest.raises(ValueError, match="no labels"):
        build_dataset(source, "train", Views.eval(8), batch_size=2)


def test_bad_arguments(class_folder):
    with pytest.raises(ValueError, match="mode='linear'"):
        Views("linear", AugmentSpec(8))
    with pytest.raises(ValueError, match="image_size=0"):
        Views.eval(0)
    with pytest.raises(ValueError, match=r"split='valid'.*available"):
        build_dataset(class_folder, "valid", _pretrain(8), batch_size=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        build_dataset(class_folder, "train", _pretrain(8), batch_size=0)
    with pytest.raises(TypeError, match="pipeline.Views"):
        build_dataset(class_folder, "train", "pretrain", batch_size=2)
    with pytest.raises(ValueError, match="pretraining only"):
        Views("finetune", AugmentSpec(8), on_device=True)


def test_views_modes():
    assert Views.eval(20) == Views("eval", AugmentSpec(20)) and not Views.eval(20).training
    assert _pretrain(8).training and _finetune(8).training


# ---- Shuffle buffer ---------------------------------------------------------------


@pytest.mark.parametrize("batch, size, expected", [(8, 16, 400), (8, 32, 400), (8, 33, 80), (64, 224, 640), (1, 32, 50)])
def test_default_shuffle_buffer_is_the_references(batch, size, expected):
    """Per-replica batch x 50 up to 32 px, x 10 above (tf2/data.py)."""
    assert pipeline.default_shuffle_buffer(batch, size) == expected


def _first_labels(size, batch_size, shuffle_buffer=None, batches=10, seed=0):
    """Labels (= source positions) of the first batches of a shuffled fine-tuning stream."""
    source = helpers.PositionSource(1000, num_classes=1000)  # Label i is example i: shows where it came from.
    ds = build_dataset(source, "train", _finetune(size), batch_size=batch_size, seed=seed, deterministic=True,
                       shuffle_buffer=shuffle_buffer)
    return np.concatenate([y.numpy() for _, y in ds.take(batches)])


@pytest.mark.parametrize("size, buffer", [(32, 100), (33, 20)])
def test_default_buffer_bounds_where_early_examples_come_from(size, buffer):
    """Output j of a shuffle with buffer b is one of the first b + j inputs; with b it reaches past b // 2.

    The default is batch 2 x 50 = 100 at 32 px, x 10 = 20 at 33 px.
    """
    for seed in range(3):
        labels = _first_labels(size, 2, seed=seed)
        positions = np.arange(len(labels))
        assert np.all(labels < buffer + positions), (seed, labels)
        assert labels.max() >= buffer // 2
    assert _first_labels(32, 2).max() > 20 + 20  # The 32 px buffer is not the small one.


def test_explicit_shuffle_buffer_overrides_the_default():
    labels = _first_labels(32, 2, shuffle_buffer=4)
    assert np.all(labels < 4 + np.arange(len(labels)))


# ---- On-device augmentation input ---------------------------------------------------


def test_on_device_views_batch_uint8_images_of_the_sources_size():
    source = helpers.PositionSource(8, size=12)
    assert pipeline.device_input_size(source, 16) == (12, 12)  # One image size: kept.
    ds = build_dataset(source, "train", Views("pretrain", AugmentSpec(16), on_device=True), batch_size=4, seed=0)
    images, labels = next(iter(ds))
    assert images.dtype == tf.uint8 and tuple(images.shape) == (4, 12, 12, 3)
    values = images.numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(images.numpy(), values[:, None, None, None] * np.ones((1, 12, 12, 3), np.uint8))
    np.testing.assert_array_equal(labels.numpy(), values % 2)  # Untouched pixels, with their labels.


def test_on_device_input_of_varying_sizes_is_resized_square(image_folder):
    source = load_source(f"folder:{image_folder}")
    assert pipeline.device_input_size(source, 16) == (19, 19)  # ceil(16 * 8 / 7).
    assert pipeline.device_input_size(source, 224) == (256, 256)


# ---- distribute_dataset ---------------------------------------------------------------


def test_distribute_dataset_gives_each_replica_its_share(class_folder, two_cpu_strategy):
    strategy = two_cpu_strategy
    seen = []

    def dataset_fn(ctx):
        seen.append(ctx.get_per_replica_batch_size(6))
        return build_dataset(class_folder, "train", _pretrain(8), batch_size=ctx.get_per_replica_batch_size(6),
                             input_context=ctx)

    dist = pipeline.distribute_dataset(strategy, dataset_fn, 6)
    images, labels = next(iter(dist))
    assert seen == [3]
    per_replica = strategy.experimental_local_results(images)
    assert [tuple(x.shape) for x in per_replica] == [(3, 8, 8, 6)] * 2
    assert [x.shape for x in strategy.experimental_local_results(labels)] == [(3,)] * 2


def test_distribute_dataset_rejects_indivisible_batch_before_work(two_cpu_strategy):
    calls = []
    with pytest.raises(ValueError, match=r"--eval_batch_size=5.*replicas \(2\).*4 or 6"):
        pipeline.distribute_dataset(two_cpu_strategy, calls.append, 5, flag="--eval_batch_size")
    assert not calls


@pytest.mark.parametrize("batch, replicas, nearest", [(1, 2, "2"), (0, 4, "4"), (10, 4, "8 or 12")])
def test_check_batch_divides_names_the_nearest_sizes(batch, replicas, nearest):
    with pytest.raises(ValueError, match=f"Nearest valid sizes: {nearest}\\."):
        pipeline.check_batch_divides(batch, replicas)
    pipeline.check_batch_divides(replicas * 3, replicas)  # A multiple passes.
