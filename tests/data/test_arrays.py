"""data.idx and data.arrays: idx files read with NumPy, and the in-memory source beside the tf.data pipeline."""

import os

import numpy as np
import pytest

from helpers import write_idx, write_idx_folder
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import arrays, idx, pipeline, sources


def test_read_idx_round_trips_and_names_bad_files(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (3, 5, 7))
    np.testing.assert_array_equal(idx.read_idx(write_idx(tmp_path / "a.gz", values)), values)
    np.testing.assert_array_equal(idx.read_idx(write_idx(tmp_path / "a", values, gz=False)), values)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")  # float32 idx
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        idx.read_idx(str(tmp_path / "bad"))
    truncated = (tmp_path / "a").read_bytes()[:-4]
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(ValueError, match=r"holds 101 values after its header, but the header says \(3, 5, 7\) \(105\)"):
        idx.read_idx(str(tmp_path / "short"))


def test_read_idx_folder_pairs_splits_and_names_missing_files(tmp_path):
    folder = write_idx_folder(tmp_path / "fashion-mnist")
    splits = idx.read_idx_folder(folder)
    assert {s: (x.shape, x.dtype, y.dtype) for s, (x, y) in splits.items()} == {
        "train": ((40, 12, 12, 1), np.uint8, np.int64), "test": ((20, 12, 12, 1), np.uint8, np.int64)}
    np.testing.assert_array_equal(splits["test"][1], np.arange(20) % 10)
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte"))
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        idx.read_idx_folder(folder)
    with pytest.raises(FileNotFoundError, match="No such folder"):
        idx.read_idx_folder(str(tmp_path / "nowhere"))


def test_load_source_opens_an_idx_folder_as_arrays(tmp_path):
    folder = write_idx_folder(tmp_path / "fashion-mnist")
    source = sources.load_source("idx:" + folder, splits=["train", "test"])
    assert arrays.is_array_source(source) and source.name == "idx:" + folder
    assert (source.num_classes, source.image_shape, source.num_examples("train")) == (10, (12, 12, 1), 40)
    assert source.class_names == idx.FASHION_MNIST_CLASSES
    with pytest.raises(ValueError, match="Unknown split"):
        sources.load_source("idx:" + folder, splits=["validation"])


def test_array_source_rejects_bad_arrays():
    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="images must be uint8"):
        arrays.ArraySource({"train": (images.astype(np.float32), np.zeros(4, int))})
    with pytest.raises(ValueError, match="labels must be integers \\[N\\] with N = 4"):
        arrays.ArraySource({"train": (images, np.zeros(3, int))})
    with pytest.raises(ValueError, match="one image shape"):
        arrays.ArraySource({"train": (images, np.zeros(4, int)), "test": (images[:, :4], np.zeros(4, int))})
    with pytest.raises(ValueError, match=r"Labels must lie in \[-1, 2\)"):
        arrays.ArraySource({"train": (images, np.array([0, 1, 2, 0]))}, num_classes=2)
    source = arrays.ArraySource({"train": (images[..., 0], np.array([0, 1, -1, 1]))})  # [N, H, W] is grayscale.
    assert source.image_shape == (8, 8, 1) and source.num_classes == 2 and source.is_labeled("train")
    with pytest.raises(ValueError, match="whole splits only"):
        source.arrays("train[:50%]")
    with pytest.raises(ValueError, match="larger than"):
        source.training_batches("train", 5)


def test_training_batches_visit_each_example_once_per_epoch_and_resume_exactly():
    n, batch = 10, 4
    images = (np.arange(n, dtype=np.uint8) * 20)[:, None, None, None] * np.ones((1, 3, 3, 1), np.uint8)
    source = arrays.ArraySource({"train": (images, np.arange(n) % 3)})
    stream = source.training_batches("train", batch, seed=7)
    batches = [next(stream) for _ in range(10)]  # 40 examples: 4 epochs, batches crossing epoch ends.
    for x, y in batches:
        assert x.shape == (batch, 3, 3, 3) and x.dtype == np.uint8 and y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0], x[..., 2])  # Grayscale repeated to RGB.
        np.testing.assert_array_equal(y, (x[:, 0, 0, 0] // 20) % 3)  # Labels stay with their images.
    order = np.concatenate([x[:, 0, 0, 0] // 20 for x, _ in batches])
    for epoch in range(4):
        np.testing.assert_array_equal(np.sort(order[epoch * n:(epoch + 1) * n]), np.arange(n))
        np.testing.assert_array_equal(order[epoch * n:(epoch + 1) * n],
                                      np.random.default_rng([7, epoch]).permutation(n))
    resumed = source.training_batches("train", batch, seed=7, skip_batches=3)
    for x, _ in batches[3:6]:
        np.testing.assert_array_equal(next(resumed)[0], x)
    other = source.training_batches("train", batch, seed=8)
    assert not np.array_equal(np.concatenate([next(other)[0][:, 0, 0, 0] // 20 for _ in range(2)]), order[:8])


@pytest.mark.parametrize("image_size", [12, 8, 20])
def test_eval_batches_equal_the_tf_data_eval_pipeline(tmp_path, image_size):
    """The NumPy/keras.ops evaluation views against tf.data's `host.eval_view` on the same arrays."""
    source = sources.load_source("idx:" + write_idx_folder(tmp_path / "digits", n_test=23), splits=["test"])
    expected = list(pipeline.eval_dataset(source, "test", image_size, batch_size=10))  # TF: from_tensor_slices.
    got = list(source.eval_batches("test", image_size, batch_size=10))
    assert len(got) == len(expected) == len(source.eval_batches("test", image_size, batch_size=10)) == 3
    for (x, y), (tx, ty) in zip(got, expected):
        # Downsizing agrees to float rounding; TF's bicubic upsampling reads its weights from a 1024-entry
        # table, hence 1e-3 there (the device augmentation tests allow 3e-3 for the same kernel).
        np.testing.assert_allclose(np.asarray(x), tx.numpy(), atol=1e-5 if image_size <= 12 else 1e-3)
        np.testing.assert_array_equal(y, ty.numpy())
    kept = source.eval_batches("test", image_size).take_labelled(7)
    np.testing.assert_array_equal(np.concatenate([y for _, y in kept]), np.arange(7) % 10)


def test_array_source_feeds_the_tf_data_pipeline(tmp_path):
    """On TensorFlow an ArraySource is a source like any other: host augmentation, selection by index."""
    source = sources.load_source("idx:" + write_idx_folder(tmp_path / "f"), splits=["train"])
    views, labels = next(iter(pipeline.build_dataset(source, "train", pipeline.Views("pretrain", AugmentSpec(8)), 6)))
    assert views.shape == (6, 8, 8, 6) and labels.shape == (6,)
    picked = [int(y) for _, y in source.select("train", indices=[13, 2, 2])]
    assert picked == [2, 3]  # Sorted, unique, labels of examples 2 and 13.
