"""Tests for tf_simclr.data: sources, batch formats per mode, distribution, errors."""

import os
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tf_simclr import data
from tf_simclr import fashion_mnist


def _write_png(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def class_folder(tmp_path):
    """Two classes of 10 random 32x32 PNGs; returns (source, {path: pixels})."""
    rng = np.random.default_rng(0)
    pixels = {}
    for name in ("a", "b"):
        for i in range(10):
            path = str(tmp_path / name / f"{i}.png")
            pixels[path] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            _write_png(path, pixels[path])
    return data.load_source(f"folder:{tmp_path}"), pixels


@pytest.fixture(scope="module")
def fake_stl10(tmp_path_factory):
    """A tiny dataset in the real `stl10` format, written without any download.

    The registered stl10 builder then reads it from data_dir like a real one.
    """
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    real = tfds.builder("stl10", data_dir=data_dir)
    rng = np.random.default_rng(1)

    def examples(n):
        return [
            (i, {"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "label": i % 10})
            for i in range(n)
        ]

    tfds.dataset_builders.store_as_tfds_dataset(
        name="stl10",
        version=str(real.version),
        features=real.info.features,
        split_datasets={"train": examples(5), "test": examples(3), "unlabelled": examples(4)},
        data_dir=data_dir,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return data_dir


@pytest.fixture
def offline(monkeypatch):
    """No DNS: TFDS downloads must not be attempted."""

    def fail(*args, **kwargs):
        raise socket.gaierror("offline in tests")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)


# ---- build_dataset formats ---------------------------------------------------------


def test_pretrain_batches_two_views_on_channels(class_folder):
    source, _ = class_folder
    ds = data.build_dataset(
        source, "train", batch_size=4, is_training=True, mode="pretrain", image_size=16, seed=0
    )
    assert ds.element_spec[0].shape.as_list() == [4, 16, 16, 6]
    assert ds.element_spec[1].dtype == tf.int32
    for images, labels in ds.take(6):  # More batches than one epoch holds: repeats.
        x = images.numpy()
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        assert not np.allclose(x[..., :3], x[..., 3:])  # Two independent views.
        assert set(labels.numpy()) <= {0, 1}


def test_finetune_batches_are_single_view(class_folder):
    source, _ = class_folder
    ds = data.build_dataset(
        source, "train", batch_size=3, is_training=True, mode="finetune", image_size=24
    )
    images, labels = next(iter(ds))
    assert images.shape == (3, 24, 24, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32


def test_eval_keeps_order_remainder_and_pixels(class_folder):
    source, pixels = class_folder
    paths, labels = source.files("train")
    ds = data.build_dataset(source, "train", batch_size=4, is_training=False, image_size=32)
    batches = list(ds)
    n = len(paths)
    assert [int(b[0].shape[0]) for b in batches] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    images = np.concatenate([b[0].numpy() for b in batches])
    got_labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(got_labels, labels)
    # image_size <= 32: no center crop, so a 32x32 image comes back as pixels / 255.
    expected = np.stack([pixels[p] for p in paths]).astype(np.float32) / 255.0
    np.testing.assert_allclose(images, expected, atol=1e-6)


@pytest.mark.parametrize("size, cropped", [(32, False), (40, True)])
def test_eval_center_crops_only_above_32_pixels(tmp_path, size, cropped):
    # A white 2-pixel frame around black: any central 87.5% crop removes it.
    framed = np.full((size, size, 3), 255, np.uint8)
    framed[2:-2, 2:-2] = 0
    _write_png(str(tmp_path / "c" / "framed.png"), framed)
    source = data.load_source(f"folder:{tmp_path}")
    split = "train" if source.num_examples("train") else "test"
    ds = data.build_dataset(source, split, batch_size=1, is_training=False, image_size=size)
    images, _ = next(iter(ds))
    assert images.shape == (1, size, size, 3)
    expected = np.zeros((size, size, 3)) if cropped else framed / 255.0
    np.testing.assert_allclose(images.numpy()[0], expected, atol=1e-6)


def test_training_drops_remainder_and_eval_can_repeat(class_folder):
    source, _ = class_folder
    ds = data.build_dataset(source, "train", batch_size=7, is_training=True, mode="finetune", image_size=8)
    assert ds.element_spec[0].shape[0] == 7  # Static batch: drop_remainder=True.
    n = source.num_examples("test")
    ds = data.build_dataset(source, "test", batch_size=n, is_training=False, image_size=8, repeat=True)
    assert len(list(ds.take(3))) == 3  # One epoch holds a single batch.


def test_cache_comes_before_augmentation(tmp_path):
    _write_png(str(tmp_path / "only.png"), np.random.default_rng(2).integers(0, 256, (20, 20, 3), np.uint8))
    source = data.load_source(f"folder:{tmp_path}")
    ds = data.build_dataset(
        source, "train", batch_size=1, is_training=True, mode="pretrain", image_size=8, cache=True
    )
    first, second = [x.numpy() for x, _ in ds.take(2)]  # Two epochs of one image.
    assert not np.allclose(first, second)  # Fresh views after the cache.


def test_unlabeled_folder_gives_minus_one_and_only_pretrains(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        _write_png(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (12, 9, 3), np.uint8))
    source = data.load_source(f"folder:{tmp_path}")
    assert source.num_classes == 0
    ds = data.build_dataset(source, "train", batch_size=2, is_training=True, image_size=8)
    images, labels = next(iter(ds))
    assert images.shape == (2, 8, 8, 6)
    np.testing.assert_array_equal(labels.numpy(), [-1, -1])
    with pytest.raises(ValueError, match="no labels"):
        data.build_dataset(source, "train", batch_size=2, is_training=True, mode="finetune", image_size=8)


def test_bad_arguments(class_folder):
    source, _ = class_folder
    kwargs = dict(batch_size=2, is_training=True, image_size=8)
    with pytest.raises(ValueError, match="mode='linear'"):
        data.build_dataset(source, "train", mode="linear", **kwargs)
    with pytest.raises(ValueError, match="image_size=0"):
        data.build_dataset(source, "train", **{**kwargs, "image_size": 0})
    with pytest.raises(ValueError, match=r"split='valid'.*available"):
        data.build_dataset(source, "valid", **kwargs)


# ---- TFDS sources --------------------------------------------------------------------


def test_tfds_source_splits_slices_and_unlabelled(fake_stl10, offline):
    source = data.load_source("stl10", fake_stl10)
    assert source.num_classes == 10 and source.image_shape == (96, 96, 3)
    assert set(source.splits) == {"train", "test", "unlabelled"}
    assert source.num_examples("train[:40%]") == 2
    assert len(list(source.as_dataset("train[:40%]", shuffle_files=False))) == 2
    train_labels = sorted(int(y) for _, y in source.as_dataset("train", shuffle_files=False))
    assert train_labels == [0, 1, 2, 3, 4]
    for image, label in source.as_dataset("unlabelled", shuffle_files=True):
        assert image.dtype == tf.uint8 and image.shape == (96, 96, 3) and int(label) == -1
    ds = data.build_dataset(source, "unlabelled", batch_size=2, is_training=True, image_size=16)
    images, labels = next(iter(ds))
    assert images.shape == (2, 16, 16, 6)
    np.testing.assert_array_equal(labels.numpy(), [-1, -1])
    with pytest.raises(ValueError, match=r"split='validation'.*'train', 'test', 'unlabelled'"):
        source.as_dataset("validation", shuffle_files=False)


def test_unknown_dataset_fails_fast_with_suggestions():
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"dataset='cifar01'.*cifar10.*folder:"):
        data.load_source("cifar01")
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        data.load_source("glue")


def test_unknown_split_fails_before_preparing(tmp_path, offline):
    with pytest.raises(ValueError, match=r"split='trian'.*'train', 'test'"):
        data.load_source("cifar10", str(tmp_path), splits=["trian"])
    assert not os.listdir(tmp_path)  # Nothing was downloaded or written.


def test_unprepared_offline_dataset_fails_fast_and_says_what_to_do(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        data.load_source("cifar10", str(tmp_path))
    assert time.monotonic() - start < 10  # TFDS alone retries for minutes.
    message = str(info.value)
    assert "cifar10" in message and str(tmp_path) in message and "internet" in message
    # Without preparing, metadata still works and reading says what is missing.
    source = data.load_source("cifar10", str(tmp_path), prepare=False)
    assert source.num_classes == 10
    with pytest.raises(FileNotFoundError, match="not prepared"):
        source.as_dataset("train", shuffle_files=False)


def test_failed_download_is_reported_with_the_cause(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_network_unreachable", lambda builder: None)

    def broken_download(self, *args, **kwargs):
        raise ConnectionError("host unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", broken_download)
    with pytest.raises(RuntimeError, match=r"cifar100.*ConnectionError: host unreachable"):
        data.load_source("cifar100", str(tmp_path))


def test_fashion_mnist_is_prepared_offline_when_files_exist(tmp_path, monkeypatch, caplog, offline):
    calls = []

    def fake_prepare(data_dir=None, source_dir=fashion_mnist.DEFAULT_SOURCE_DIR):
        calls.append(data_dir)
        return tfds.builder("fashion_mnist", data_dir=data_dir)

    monkeypatch.setattr(fashion_mnist, "prepare_fashion_mnist", fake_prepare)
    monkeypatch.setattr(fashion_mnist, "has_source_files", lambda *a: True)
    with caplog.at_level("INFO"):
        source = data.load_source("fashion_mnist", str(tmp_path))
    assert calls == [str(tmp_path)] and source.name == "fashion_mnist"
    assert "offline" in caplog.text
    monkeypatch.setattr(fashion_mnist, "has_source_files", lambda *a: False)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        data.load_source("fashion_mnist", str(tmp_path))


# ---- distribute_dataset ---------------------------------------------------------------


def test_distribute_dataset_gives_each_replica_its_share(class_folder, two_cpu_strategy):
    source, _ = class_folder
    strategy = two_cpu_strategy
    seen = []

    def dataset_fn(ctx):
        seen.append(ctx.get_per_replica_batch_size(6))
        return data.build_dataset(
            source, "train", batch_size=ctx.get_per_replica_batch_size(6), is_training=True,
            image_size=8, input_context=ctx,
        )

    dist = data.distribute_dataset(strategy, dataset_fn, 6)
    images, labels = next(iter(dist))
    assert seen == [3]
    per_replica = strategy.experimental_local_results(images)
    assert [tuple(x.shape) for x in per_replica] == [(3, 8, 8, 6)] * 2
    assert [x.shape for x in strategy.experimental_local_results(labels)] == [(3,)] * 2


def test_distribute_dataset_rejects_indivisible_batch_before_work(two_cpu_strategy):
    strategy = two_cpu_strategy
    calls = []
    with pytest.raises(ValueError, match=r"--eval_batch_size=5.*replicas \(2\).*4 or 6"):
        data.distribute_dataset(strategy, calls.append, 5, flag="--eval_batch_size")
    assert not calls
