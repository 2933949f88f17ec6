"""data.fashion_mnist: offline preparation of the genuine TFDS `fashion_mnist` from Debian's idx files.

Preparing the real dataset takes about 45 s on a 2-core machine, so it happens
once per module (marked slow) and every check reads that one copy.
"""

import gzip
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import helpers
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import fashion_mnist
from tf_simclr.data.pipeline import Views, build_dataset
from tf_simclr.data.sources import load_source

SOURCE = fashion_mnist.DEFAULT_SOURCE_DIR
needs_files = pytest.mark.skipif(
    not fashion_mnist.has_source_files(SOURCE),
    reason="needs `apt-get install dataset-fashion-mnist`",
)


def _read_idx(name, source_dir=SOURCE):
    """Parses an idx file with numpy alone (independent of TFDS and the module)."""
    with gzip.open(os.path.join(source_dir, name), "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _hash(image):
    return hashlib.sha1(np.ascontiguousarray(image).reshape(28, 28).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(fashion_mnist_dir):
    """The session's prepared copy (conftest.py); preparing again must reuse it."""
    builder = fashion_mnist.prepare_fashion_mnist(fashion_mnist_dir)
    return fashion_mnist_dir, builder


@needs_files
@pytest.mark.slow
def test_info_matches_the_registered_builder(prepared):
    data_dir, builder = prepared
    registered = tfds.builder("fashion_mnist", data_dir=str(data_dir) + "_unused")
    assert builder.is_prepared()
    assert str(builder.version) == str(registered.version)
    assert builder.info.features.to_json() == registered.info.features.to_json()
    assert builder.info.supervised_keys == ("image", "label")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 60000, "test": 10000}
    # download_size is what a real download records: the registered file sizes.
    checksums = os.path.join(os.path.dirname(tfds.__file__), "url_checksums", "fashion_mnist.txt")
    with open(checksums) as f:
        sizes = [int(line.split("\t")[1]) for line in f if line.strip()]
    assert builder.info.download_size == sum(sizes)
    # Every example was written: count the serialized records themselves.
    for split, expected in (("train", 60000), ("test", 10000)):
        files = tf.io.gfile.glob(os.path.join(builder.data_dir, f"fashion_mnist-{split}.tfrecord*"))
        count = tf.data.TFRecordDataset(files).reduce(0, lambda n, _: n + 1)
        assert int(count) == expected


@needs_files
@pytest.mark.slow
def test_examples_match_the_raw_idx_files(prepared):
    data_dir, _ = prepared
    raw_labels = {}
    for prefix in ("train", "t10k"):
        images = _read_idx(f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(f"{prefix}-labels-idx1-ubyte.gz")
        assert images.shape == ((60000 if prefix == "train" else 10000), 28, 28)
        raw_labels[prefix] = {}
        for image, label in zip(images, labels):
            raw_labels[prefix].setdefault(_hash(image), set()).add(int(label))
        if prefix == "t10k":
            test_histogram = np.bincount(labels, minlength=10)
    # tfds.load works as usual on the prepared folder.
    test_images, test_labels = tfds.as_numpy(
        tfds.load("fashion_mnist", split="test", data_dir=data_dir, as_supervised=True, batch_size=-1)
    )
    assert test_images.shape == (10000, 28, 28, 1) and test_images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(test_labels, minlength=10), test_histogram)
    for image, label in zip(test_images, test_labels):
        assert label in raw_labels["t10k"][_hash(image)]
    train = tfds.load("fashion_mnist", split="train[:2000]", data_dir=data_dir, as_supervised=True)
    for image, label in tfds.as_numpy(train):
        assert label in raw_labels["train"][_hash(image)]


@needs_files
@pytest.mark.slow
def test_preparing_again_reuses_the_dataset(prepared, capsys):
    data_dir, builder = prepared
    info_file = os.path.join(builder.data_dir, "dataset_info.json")
    mtime = os.path.getmtime(info_file)
    assert helpers.run_cli("fashion_mnist", f"--data_dir={data_dir}") == 0  # `tf_simclr fashion_mnist`.
    assert os.path.getmtime(info_file) == mtime  # Nothing regenerated.
    assert "'train': 60000" in capsys.readouterr().out
    assert fashion_mnist.is_prepared(data_dir)


def test_missing_files_say_how_to_install(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.prepare_fashion_mnist(str(tmp_path / "tfds"), source_dir=str(tmp_path))
    assert not fashion_mnist.has_source_files(str(tmp_path))
    # The command line reports it as a usage error (exit 2) with the same hint.
    assert helpers.run_cli("fashion_mnist", f"--data_dir={tmp_path / 'tfds'}", f"--source_dir={tmp_path}") == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def _write_idx(folder, name, array):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(os.path.join(folder, name), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_source(folder, n):
    """Four idx files of n random examples in the Fashion-MNIST layout."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(folder, f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder, f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_other_files_are_rejected(tmp_path):
    _fake_source(str(tmp_path), 3)
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match="does not hold the Fashion-MNIST data"):
        fashion_mnist.prepare_fashion_mnist(str(data_dir), source_dir=str(tmp_path))
    assert not (data_dir / "fashion_mnist").exists()


def test_failed_generation_leaves_no_dataset(tmp_path, monkeypatch):
    # Files with the right names but only 3 examples: TFDS's generator, which
    # expects 60,000, fails half-way; nothing may look prepared afterwards.
    _fake_source(str(tmp_path), 3)
    digests = {}
    for name in fashion_mnist.EXPECTED_SHA256:
        with gzip.open(tmp_path / name, "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    monkeypatch.setattr(fashion_mnist, "EXPECTED_SHA256", digests)
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match="cannot reshape"):  # Raised inside TFDS's generator.
        fashion_mnist.prepare_fashion_mnist(str(data_dir), source_dir=str(tmp_path))
    assert not fashion_mnist.is_prepared(str(data_dir))
    leftovers = list((data_dir / "fashion_mnist").glob("*")) if (data_dir / "fashion_mnist").exists() else []
    assert leftovers == []


@needs_files
@pytest.mark.slow
def test_pipeline_reads_the_prepared_dataset(prepared):
    data_dir, _ = prepared
    source = load_source("fashion_mnist", data_dir, splits=["train", "test"])
    assert source.num_classes == 10 and source.image_shape == (28, 28, 1)
    assert source.num_examples("train[:10%]") == 6000
    ds = build_dataset(source, "train", Views("pretrain", AugmentSpec(32)), batch_size=8, shuffle_buffer=64)
    images, labels = next(iter(ds))
    assert images.shape == (8, 32, 32, 6) and labels.dtype == tf.int32
    ds = build_dataset(source, "test", Views.eval(28), batch_size=8)
    images, labels = next(iter(ds))
    raw = _read_idx("t10k-images-idx3-ubyte.gz")
    raw_labels = _read_idx("t10k-labels-idx1-ubyte.gz")
    x = images.numpy()
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # Grayscale repeated to RGB.
    by_hash = {}
    for img, lab in zip(raw, raw_labels):
        by_hash.setdefault(_hash(img), set()).add(int(lab))
    for image, label in zip(x, labels.numpy()):
        pixels = np.round(image[..., 0] * 255).astype(np.uint8)
        assert label in by_hash[_hash(pixels)]  # Eval at 28 px: the raw image, unchanged.
