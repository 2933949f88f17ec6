"""data.sources and data.tfds_source: load_source by name, BaseSource's generic methods, TFDS splits and offline preparation."""

import logging
import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import helpers
from helpers import write_image_folder
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import fashion_mnist, sources, tfds_source
from tf_simclr.data.image_folder import ImageFolderSource
from tf_simclr.data.pipeline import Views, build_dataset
from tf_simclr.data.sources import BaseSource, ImageSource, load_source
from tf_simclr.data.tfds_source import TFDSSource


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
    """No DNS: TFDS downloads must not be attempted. Returns the hosts that were looked up."""
    lookups = []

    def fail(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror("offline in tests")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    return lookups


@pytest.fixture
def no_downloads(monkeypatch):
    """Records (instead of running) every TFDS download_and_prepare call."""
    calls = []
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda self, *a, **k: calls.append(self.name))
    return calls


# ---- TFDS sources --------------------------------------------------------------------


def test_tfds_source_splits_slices_and_unlabelled(fake_stl10, offline):
    source = load_source("stl10", fake_stl10)
    assert isinstance(source, TFDSSource) and isinstance(source, ImageSource)
    assert source.num_classes == 10 and source.image_shape == (96, 96, 3)
    assert len(source.class_names) == 10
    assert set(source.splits) == {"train", "test", "unlabelled"}
    assert source.num_examples("train[:40%]") == 2
    assert len(list(source.as_dataset("train[:40%]", shuffle_files=False))) == 2
    train_labels = sorted(int(y) for _, y in source.as_dataset("train", shuffle_files=False))
    assert train_labels == [0, 1, 2, 3, 4]
    assert source.is_labeled("train") and not source.is_labeled("unlabelled")
    for image, label in source.as_dataset("unlabelled", shuffle_files=True):
        assert image.dtype == tf.uint8 and image.shape == (96, 96, 3) and int(label) == -1
    ds = build_dataset(source, "unlabelled", Views("pretrain", AugmentSpec(16)), batch_size=2)
    images, labels = next(iter(ds))
    assert images.shape == (2, 16, 16, 6)
    np.testing.assert_array_equal(labels.numpy(), [-1, -1])
    with pytest.raises(ValueError, match=r"split='validation'.*'train', 'test', 'unlabelled'"):
        source.as_dataset("validation", shuffle_files=False)
    assert offline == []  # A prepared dataset needs no network.


def test_tfds_split_index_reads_labels_without_decoding(fake_stl10):
    source = load_source("stl10", fake_stl10)
    labels, names = source.split_index("train")
    assert names is None  # stl10 has no id feature: examples are named by index.
    np.testing.assert_array_equal(labels, [int(y) for _, y in source.as_dataset("train", shuffle_files=False)])
    unlabelled, _ = source.split_index("unlabelled")
    np.testing.assert_array_equal(unlabelled, [-1] * 4)


def test_tfds_pipelines_share_a_single_file_by_examples(fake_stl10):
    """Fewer files than input pipelines: each pipeline keeps every n-th example; together all of them."""
    source = load_source("stl10", fake_stl10)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        ds = source.as_dataset("train", shuffle_files=True, input_context=context)
        seen.append([image.numpy().tobytes() for image, _ in ds])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 5


def test_unknown_dataset_fails_before_any_work_with_suggestions(tmp_path, offline, no_downloads):
    with pytest.raises(ValueError, match=r"dataset='cifar01'.*cifar10.*folder:"):
        load_source("cifar01", str(tmp_path))
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        load_source("glue", str(tmp_path))
    assert offline == [] and no_downloads == []  # No lookup, no download attempted,
    assert not os.listdir(tmp_path)  # and nothing written.


def test_unknown_split_fails_before_preparing(tmp_path, offline, no_downloads):
    with pytest.raises(ValueError, match=r"split='trian'.*'train', 'test'"):
        load_source("cifar10", str(tmp_path), splits=["trian"])
    assert not os.listdir(tmp_path)  # Nothing was downloaded or written.
    assert offline == [] and no_downloads == []
    source = load_source("cifar10", str(tmp_path), prepare=False, splits=["train[:10%]", "test"])  # Slices are fine.
    assert source.splits == tfds_source.KNOWN_SPLITS["cifar10"]


def test_unprepared_offline_dataset_fails_without_downloading_and_says_what_to_do(tmp_path, offline, no_downloads):
    with pytest.raises(RuntimeError) as info:
        load_source("cifar10", str(tmp_path))
    # One DNS probe, no TFDS download (which would retry for minutes).
    assert len(offline) == 1 and no_downloads == []
    message = str(info.value)
    assert "cifar10" in message and str(tmp_path) in message and "internet" in message
    assert offline[0] in message  # Names the host that does not resolve.
    # Without preparing, metadata still works and reading says what is missing.
    source = load_source("cifar10", str(tmp_path), prepare=False)
    assert source.num_classes == 10 and len(source.class_names) == 10
    with pytest.raises(FileNotFoundError, match="not prepared"):
        source.as_dataset("train", shuffle_files=False)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        source.num_examples("train")


def test_failed_download_is_reported_with_the_cause(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_network_unreachable", lambda builder: None)

    def broken_download(self, *args, **kwargs):
        raise ConnectionError("host unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", broken_download)
    with pytest.raises(RuntimeError, match=r"cifar100.*ConnectionError: host unreachable"):
        load_source("cifar100", str(tmp_path))


def test_fashion_mnist_is_prepared_offline_when_files_exist(tmp_path, monkeypatch, caplog, offline, no_downloads):
    calls = []

    def fake_prepare(data_dir=None, source_dir=fashion_mnist.DEFAULT_SOURCE_DIR):
        calls.append(data_dir)
        return tfds.builder("fashion_mnist", data_dir=data_dir)

    monkeypatch.setattr(fashion_mnist, "prepare_fashion_mnist", fake_prepare)
    monkeypatch.setattr(fashion_mnist, "has_source_files", lambda *a: True)
    monkeypatch.setattr(logging.getLogger("tf_simclr"), "propagate", True)  # The CLI may have turned it off.
    with caplog.at_level("INFO", logger="tf_simclr"):
        source = load_source("fashion_mnist", str(tmp_path))
    assert [str(c) for c in calls] == [str(tmp_path)] and source.name == "fashion_mnist"
    assert "offline" in caplog.text
    assert offline == [] and no_downloads == []
    monkeypatch.setattr(fashion_mnist, "has_source_files", lambda *a: False)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion_mnist", str(tmp_path))
    assert no_downloads == []


# ---- load_source for folders, prepared() ------------------------------------------------


def test_folder_sources_by_prefix(image_folder):
    source = load_source(sources.FOLDER_PREFIX + image_folder)
    assert isinstance(source, ImageFolderSource) and isinstance(source, ImageSource)
    assert source.name == f"folder:{image_folder}" and source.num_classes == 2
    assert sources.prepared(source) is source  # Nothing to prepare.
    with pytest.raises(ValueError, match=r"split='valid'.*available"):
        load_source(f"folder:{image_folder}", splits=["train", "valid"])


def test_strict_images_reaches_the_folder_source(tmp_path):
    root = write_image_folder(str(tmp_path / "images"), classes=("a",), per_class=3, size=4)
    (tmp_path / "images" / "a" / "empty.png").write_bytes(b"")
    lenient = load_source(f"folder:{root}")
    assert lenient.num_examples("train") + lenient.num_examples("validation") == 3  # The empty file is left out.
    with pytest.raises(ValueError, match="empty file"):
        load_source(f"folder:{root}", strict_images=True)


# ---- BaseSource: generic implementations from as_dataset ---------------------------------


def test_split_names_of_tfds_split_specs():
    assert sources.split_names("train[:10%]+test") == ["train", "test"]
    assert sources.split_names(" unlabelled [5:] ") == ["unlabelled"]


def test_base_source_needs_num_examples_and_as_dataset():
    bare = BaseSource()
    with pytest.raises(NotImplementedError):
        bare.num_examples("train")
    with pytest.raises(NotImplementedError):
        bare.as_dataset("train", shuffle_files=False)
    assert repr(helpers.PositionSource()) == "PositionSource('arrays')"
    assert isinstance(helpers.PositionSource(), ImageSource)


def test_base_source_check_split_and_labels():
    source = helpers.PositionSource(6)
    source.check_split("train[:50%]")
    with pytest.raises(ValueError, match=r"split='test'; available: \['train'\]"):
        source.check_split("test")
    assert source.is_labeled("train")
    assert not helpers.PositionSource(6, num_classes=0).is_labeled("train")
    unlabelled = helpers.PositionSource(6, split="unlabelled")
    assert not unlabelled.is_labeled("unlabelled") and not unlabelled.is_labeled("unlabeled[:10]")


def test_base_source_split_index_is_one_pass_over_labels():
    labels, names = helpers.PositionSource(7, num_classes=3).split_index("train")
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2, 0])
    assert names is None and labels.dtype == np.int64
    unlabelled, _ = helpers.PositionSource(4, num_classes=2, split="unlabelled").split_index("unlabelled")
    np.testing.assert_array_equal(unlabelled, [-1] * 4)  # Unlabeled splits report -1, not their stored labels.


def test_base_source_ids_are_indices_only():
    source = helpers.PositionSource(12)
    indices, ids, key = source.resolve_ids("train", ["7", "3", "3", 5])
    np.testing.assert_array_equal(indices, [3, 5, 7])
    assert ids is None and key is None
    with pytest.raises(ValueError, match="integer example indices"):
        source.resolve_ids("train", ["a.png"])
    with pytest.raises(ValueError, match=r"in \[0, 12\)"):
        source.resolve_ids("train", ["12"])


def test_base_source_select_keeps_chosen_positions_and_shards():
    source = helpers.PositionSource(12)
    chosen = [int(image[0, 0, 0]) for image, _ in source.select("train", indices=[9, 2, 4]).as_numpy_iterator()]
    assert chosen == [2, 4, 9]
    shares = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        ds = source.select("train", indices=[1, 2, 3, 8], input_context=context)
        shares.append([int(image[0, 0, 0]) for image, _ in ds.as_numpy_iterator()])
    assert shares == [[1, 3], [2, 8]]
    with pytest.raises(ValueError, match="by index only"):
        source.select("train", ids=["a"])


def test_a_data_dir_url_reaches_tfds_as_it_is(monkeypatch, tmp_path):
    """`--data_dir=gs://...` is TFDS's to read (it opens gs:// itself): passed on unchanged, no local `gs:` folder.

    (TFDS's path layer knows gs://, s3:// and az://, not ram://; `folder:` data is tested on ram://
    in tests/storage/test_remote_filesystem.py.)
    """
    seen = []

    class Stop(Exception):
        pass

    def builder(name, data_dir=None, **kwargs):
        seen.append((name, data_dir))
        raise Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tfds, "builder", builder)
    with pytest.raises(Stop):
        load_source("fashion_mnist", "gs://bucket/tensorflow_datasets", prepare=False)
    assert seen == [("fashion_mnist", "gs://bucket/tensorflow_datasets")]
    assert os.listdir(tmp_path) == []
