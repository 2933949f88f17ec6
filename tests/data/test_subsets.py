"""data.subsets: class-balanced label fractions, id files, tf.data filters, and SubsetSource over TFDS, folders and BaseSource."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import helpers
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import filters, subsets
from tf_simclr.data.pipeline import Views, build_dataset
from tf_simclr.data.sources import ImageSource, load_source
from tf_simclr.data.tfds_source import TFDSSource

NUM_FAKE = 30  # Examples in the fake TFDS dataset: image i is filled with the value i.


# ---------------------------------------------------------------- balanced_subset_ids


@pytest.fixture(scope="module")
def ten_by_thousand():
    """10 classes x 1000 examples, in a shuffled order."""
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 1000))


@pytest.mark.parametrize("fraction,per_class_expected", [(0.01, 10), (0.1, 100)])
def test_fractions_are_class_balanced(ten_by_thousand, fraction, per_class_expected):
    ids = subsets.balanced_subset_ids(ten_by_thousand, fraction, seed=0)
    assert ids.dtype == np.int64
    assert np.all(np.diff(ids) > 0), "sorted and unique"
    np.testing.assert_array_equal(np.bincount(ten_by_thousand[ids], minlength=10), [per_class_expected] * 10)


def test_same_seed_same_ids_other_seed_other_ids(ten_by_thousand):
    a = subsets.balanced_subset_ids(ten_by_thousand, 0.01, seed=3)
    b = subsets.balanced_subset_ids(ten_by_thousand, 0.01, seed=3)
    c = subsets.balanced_subset_ids(ten_by_thousand, 0.01, seed=4)
    np.testing.assert_array_equal(a, b)
    assert len(np.intersect1d(a, c)) < len(a) // 2  # 10 of 1000 per class: overlap ~1%.
    # The draw does not depend on the label array's dtype.
    np.testing.assert_array_equal(a, subsets.balanced_subset_ids(ten_by_thousand.astype(np.int32), 0.01, seed=3))


def test_per_class_rounding_minimum_and_unlabeled():
    labels = np.concatenate([np.full(5, 0), np.full(25, 1), np.full(250, 2), np.full(3, 3), np.full(40, -1)])
    labels = np.random.default_rng(1).permutation(labels)
    ids = subsets.balanced_subset_ids(labels, 0.1, seed=0)
    # Half-up rounding: 0.5 -> 1, 2.5 -> 3 (Python's round gives 2), 25, and at least one of a 3-example class.
    np.testing.assert_array_equal(np.bincount(labels[ids] + 1, minlength=5), [0, 1, 3, 25, 1])
    exact = subsets.balanced_subset_ids(labels, per_class=3, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[exact] + 1, minlength=5), [0, 3, 3, 3, 3])
    assert np.all(labels[subsets.balanced_subset_ids(labels, 1.0)] >= 0)
    assert len(subsets.balanced_subset_ids(labels, 1.0)) == len(labels) - 40


def test_balanced_subset_errors():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="exactly one"):
        subsets.balanced_subset_ids(labels)
    with pytest.raises(ValueError, match="exactly one"):
        subsets.balanced_subset_ids(labels, 0.5, per_class=1)
    with pytest.raises(ValueError, match="fraction=1.5"):
        subsets.balanced_subset_ids(labels, 1.5)
    with pytest.raises(ValueError, match="per_class=5 exceeds"):
        subsets.balanced_subset_ids(labels, per_class=5)
    with pytest.raises(ValueError, match="No labelled"):
        subsets.balanced_subset_ids(np.full(4, -1), 0.5)


# ---------------------------------------------------------------- Id files


def test_id_file_round_trip_and_reference_format(tmp_path):
    names = ["n01440764_10026.JPEG", "n01440764_10027.JPEG", "n15075141_54.JPEG"]
    path = subsets.write_id_file(tmp_path / "sub" / "1percent.txt", names)
    assert open(path).read() == "".join(n + "\n" for n in names)
    assert subsets.read_id_file(path) == names
    assert os.listdir(tmp_path / "sub") == ["1percent.txt"], "no temporary file left behind"
    # Overwriting replaces the whole list; integer ids are written as text.
    subsets.write_id_file(path, np.array([3, 1, 2]))
    assert subsets.read_id_file(path) == ["3", "1", "2"]
    # Windows line endings, blank lines and comments.
    (tmp_path / "crlf.txt").write_bytes(b"# header\r\nn1_1.JPEG\r\n\r\nn1_2.JPEG\r\n")
    assert subsets.read_id_file(tmp_path / "crlf.txt") == ["n1_1.JPEG", "n1_2.JPEG"]


def test_record_subset_and_id_file_errors(tmp_path):
    path = subsets.record_subset(tmp_path / "run", ["a.png", "b.png"])
    assert path == os.path.join(tmp_path / "run", "subset_ids.txt")
    assert subsets.read_id_file(path) == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="single-line"):
        subsets.write_id_file(tmp_path / "bad.txt", ["a\nb"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        subsets.read_id_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no ids"):
        subsets.read_id_file(tmp_path / "empty.txt")


# ---------------------------------------------------------------- tf.data filters


def _dict_dataset(n=20):
    return tf.data.Dataset.from_tensor_slices(
        {
            "file_name": [f"n{i % 3}_{i}.JPEG" for i in range(n)],
            "image": np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8),
            "label": np.arange(n) % 3,
        }
    )


def test_filter_by_ids_keeps_exactly_the_named_examples():
    wanted = ["n1_4.JPEG", "n2_17.JPEG", "n0_0.JPEG", "not_there.JPEG"]
    kept = list(filters.filter_by_ids(_dict_dataset(), wanted, "file_name").as_numpy_iterator())
    assert [ex["file_name"].decode() for ex in kept] == ["n0_0.JPEG", "n1_4.JPEG", "n2_17.JPEG"]  # Dataset order.
    assert [int(ex["image"][0, 0, 0]) for ex in kept] == [0, 4, 17]
    with pytest.raises(ValueError, match="id_key='id'"):
        filters.filter_by_ids(_dict_dataset(), wanted, "id")


def test_filter_by_indices_keeps_positions_and_stops_early():
    last = 12

    def guarded(x):  # Fails if the filter reads beyond one element past the last index.
        with tf.control_dependencies([tf.debugging.assert_less_equal(x, tf.constant(last + 1, tf.int64))]):
            return tf.identity(x)

    ds = tf.data.Dataset.range(100).map(guarded)
    assert list(filters.filter_by_indices(ds, [12, 3, 3, 7]).as_numpy_iterator()) == [3, 7, 12]
    with pytest.raises(ValueError, match=">= 0"):
        filters.filter_by_indices(ds, [-1, 2])


# ---------------------------------------------------------------- TFDS sources


@pytest.fixture(scope="module")
def fake_tfds(tmp_path_factory):
    """A prepared TFDS dataset with image, label and file_name, like imagenet2012; written offline."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(4, 4, 3)),
            "label": tfds.features.ClassLabel(num_classes=3),
            "file_name": tfds.features.Text(),
        }
    )
    examples = [
        (i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 3, "file_name": f"n{i % 3}_{i}.JPEG"})
        for i in range(NUM_FAKE)
    ]
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name="subsets_fake",
        version="1.0.0",
        features=features,
        split_datasets={"train": examples},
        data_dir=data_dir,
        # Several shards, so that reading order (one file at a time or interleaved) matters.
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3),
    )
    assert len(builder.info.splits["train"].shard_lengths) == 3
    return TFDSSource(builder)


def _example_numbers(ds):
    """Each yielded image is filled with its example number; returns (numbers, labels)."""
    pairs = [(int(image[0, 0, 0]), int(label)) for image, label in ds.as_numpy_iterator()]
    return [n for n, _ in pairs], [label for _, label in pairs]


def test_tfds_balanced_subset_records_file_names(fake_tfds):
    chosen = subsets.subset_source(fake_tfds, "train", per_class=2, seed=1)
    assert chosen.num_examples("train") == 6 and len(chosen.ids) == 6
    numbers, labels = _example_numbers(chosen.as_dataset("train", shuffle_files=False))
    # Exactly the recorded examples: names, pixels and labels agree with what was stored.
    assert sorted(numbers) == sorted(int(name.split("_")[1].split(".")[0]) for name in chosen.ids)
    assert labels == [n % 3 for n in numbers]
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [2, 2, 2])
    other = subsets.subset_source(fake_tfds, "train", per_class=2, seed=2)
    assert set(other.ids) != set(chosen.ids)


def test_tfds_id_file_repeats_the_run(fake_tfds, tmp_path):
    chosen = subsets.subset_source(fake_tfds, "train", fraction=0.2, seed=0)
    path = subsets.record_subset(tmp_path, chosen.ids)
    again = subsets.subset_source(fake_tfds, "train", ids=path)
    assert again.indices is None and again.id_key == "file_name"  # Matched by file name.
    assert _example_numbers(again.as_dataset("train")) == _example_numbers(chosen.as_dataset("train"))
    assert sorted(subsets.read_id_file(path)) == sorted(chosen.ids)


def test_tfds_indices_match_tfds_slicing(fake_tfds):
    """Index i means the split's natural order, i.e. TFDS's own `train[i:i+1]` slice."""
    indices = [0, 5, 7, 29]
    numbers, _ = _example_numbers(subsets.subset_dataset(fake_tfds, "train", ids=indices))
    builder = fake_tfds.builder
    expected = [
        int(next(iter(builder.as_dataset(split=f"train[{i}:{i + 1}]")))["image"][0, 0, 0]) for i in indices
    ]
    assert numbers == expected
    with pytest.raises(ValueError, match=r"in \[0, 30\)"):
        subsets.subset_source(fake_tfds, "train", ids=[3, 30])


def test_subset_source_feeds_build_dataset(fake_tfds):
    chosen = subsets.subset_source(fake_tfds, "train", per_class=3, seed=0)
    ds = build_dataset(chosen, "train", Views.eval(8), batch_size=4)
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="split 'train' only"):
        chosen.as_dataset("test", shuffle_files=False)


def test_subset_source_argument_errors(fake_tfds):
    with pytest.raises(ValueError, match="not both"):
        subsets.subset_source(fake_tfds, "train", ids=[1], fraction=0.1)
    with pytest.raises(ValueError, match="Pass ids"):
        subsets.subset_source(fake_tfds, "train")
    with pytest.raises(ValueError, match="no feature 'id'"):
        subsets.subset_source(fake_tfds, "train", ids=["a"], id_key="id")


# ---------------------------------------------------------------- Folders and other sources


def test_folder_subset_by_fraction_and_by_names(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for c in ("cat", "dog"):
        for i in range(5):
            path = tmp_path / "train" / c / f"{c}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels[f"{c}{i}.png"] = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels[f"{c}{i}.png"]).save(path)
    source = load_source(f"folder:{tmp_path}")
    chosen = subsets.subset_source(source, "train", fraction=0.4, seed=0)
    assert sorted(os.path.dirname(i) for i in chosen.ids) == ["train/cat"] * 2 + ["train/dog"] * 2
    images = [(image, label) for image, label in chosen.as_dataset("train", shuffle_files=False).as_numpy_iterator()]
    for (image, label), name in zip(images, chosen.ids):
        np.testing.assert_array_equal(image, pixels[os.path.basename(name)])
        assert label == (0 if "cat" in name else 1)
    by_name = subsets.subset_dataset(source, "train", ids=["dog3.png", "cat1.png"])
    got = [image for image, _ in by_name.as_numpy_iterator()]
    np.testing.assert_array_equal(np.stack(got), np.stack([pixels["cat1.png"], pixels["dog3.png"]]))
    with pytest.raises(ValueError, match="not images"):
        subsets.subset_source(source, "train", ids=["bird.png"])


def test_generic_source_subset_by_index_and_recorded_file(tmp_path):
    source = helpers.PositionSource(12)  # A BaseSource: examples are only addressable by position.
    chosen = subsets.subset_source(source, "train", per_class=2, seed=5)
    expected = subsets.balanced_subset_ids(source.labels, per_class=2, seed=5)
    assert chosen.ids == [str(i) for i in expected]
    numbers, labels = _example_numbers(chosen.as_dataset("train"))
    assert numbers == expected.tolist() and labels == (expected % 2).tolist()
    # Recorded indices come back as strings and still mean indices.
    again = subsets.subset_dataset(source, "train", ids=subsets.record_subset(tmp_path, chosen.ids))
    assert _example_numbers(again)[0] == numbers
    with pytest.raises(ValueError, match="integer example indices"):
        subsets.subset_source(source, "train", ids=["a.png"])


def test_subset_source_is_an_image_source_of_one_split(fake_tfds):
    chosen = subsets.subset_source(fake_tfds, "train", per_class=2, seed=3)
    assert isinstance(chosen, ImageSource) and isinstance(chosen, subsets.SubsetSource)
    assert chosen.splits == ("train",) and chosen.num_classes == 3 and chosen.image_shape == (4, 4, 3)
    assert chosen.class_names == fake_tfds.class_names and chosen.is_labeled("train")
    labels, names = chosen.split_index("train")
    assert sorted(names) == sorted(chosen.ids)  # The chosen examples' own labels and names.
    np.testing.assert_array_equal(labels, [int(n.split("_")[0][1:]) for n in names])
    by_name = subsets.subset_source(fake_tfds, "train", ids=chosen.ids)
    labels_by_name, names_by_name = by_name.split_index("train")
    assert sorted(names_by_name) == sorted(chosen.ids) and sorted(labels_by_name) == sorted(labels)
    assert by_name.num_examples("train") == 6


def test_subset_of_a_folder_pretrains_on_the_chosen_images_only(tmp_path):
    for c in ("a", "b"):
        for i in range(6):
            path = tmp_path / "train" / c / f"{c}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((5, 5, 3), 10 * i + (100 if c == "b" else 0), np.uint8)).save(path)
    source = load_source(f"folder:{tmp_path}")
    chosen = subsets.subset_source(source, "train", ids=["a2.png", "b5.png"])
    assert chosen.ids == ["a2.png", "b5.png"] and chosen.num_examples("train") == 2
    ds = build_dataset(chosen, "train", Views("finetune", AugmentSpec(5, min_crop_area=1.0)), batch_size=2, seed=0)
    for images, labels in ds.take(4):  # Several epochs: always the same two images (flips do not matter).
        means = sorted(np.round(images.numpy().mean(axis=(1, 2, 3)) * 255).astype(int).tolist())
        assert means == [20, 150] and sorted(labels.numpy().tolist()) == [0, 1]
