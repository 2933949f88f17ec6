"""data.image_folder: the three layouts, stable hash splits, decoding, sharding, ids and selection, errors."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_simclr.data import image_folder
from tf_simclr.data.image_folder import ImageFolderSource


def _write(path, size=(8, 10), mode="RGB", seed=0):
    """Writes a random image (PNG or JPEG by extension) and returns its pixels."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, len(mode))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    Image.fromarray(pixels, mode).save(path, format=fmt)
    return pixels


def _class_tree(root, classes=("cat", "dog", "emu"), per_class=12):
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = (".png", ".PNG", ".jpg", ".JPeG")[i % 4]
            _write(os.path.join(root, name, f"img{i}{ext}"), size=(6 + i, 9), seed=c * 100 + i)


def _read_all(ds):
    return [(img.numpy(), int(lab)) for img, lab in ds]


def test_class_folders_split_is_stable_disjoint_and_covering(tmp_path):
    root = str(tmp_path / "data")
    _class_tree(root)
    a, b = ImageFolderSource(root), ImageFolderSource(root)
    assert a.layout == "classes"
    assert a.class_names == ("cat", "dog", "emu") and a.num_classes == 3
    assert a.splits == ("train", "validation", "test")
    train, val, test = (set(a.files(s)[0]) for s in a.splits)
    assert val == test and train.isdisjoint(val)
    all_files = {
        os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
    }
    assert train | val == all_files and len(all_files) == 36
    for split in a.splits:  # Same split in a second index.
        assert a.files(split) == b.files(split)
    # The split depends on relative paths only: a moved copy splits identically.
    moved = str(tmp_path / "elsewhere" / "copy")
    shutil.copytree(root, moved)
    c = ImageFolderSource(moved)
    rel = lambda paths, r: sorted(os.path.relpath(p, r) for p in paths)
    assert rel(c.files("validation")[0], moved) == rel(a.files("validation")[0], root)


def test_held_out_fraction_is_about_ten_percent():
    paths = [f"class{i % 7}/image_{i:05d}.jpg" for i in range(20000)]
    held = np.mean([image_folder.held_out(p) for p in paths])
    assert abs(held - 0.1) < 0.01  # Binomial std is 0.002.
    assert image_folder.held_out("a/b.png") == image_folder.held_out("a/b.png")


def test_labels_follow_sorted_class_folders(tmp_path):
    root = str(tmp_path)
    _class_tree(root, classes=("zebra", "Ant", "moose"), per_class=3)
    src = ImageFolderSource(root)
    assert src.class_names == ("Ant", "moose", "zebra")  # Sorted, case-sensitive.
    paths, labels = src.files("train")
    for path, label in zip(paths, labels):
        assert src.class_names[label] == os.path.basename(os.path.dirname(path))


def test_decoding_matches_pil_and_gives_three_channels(tmp_path):
    root = str(tmp_path)
    expected = {
        "rgb.png": _write(os.path.join(root, "rgb.png"), (5, 7), "RGB", 1),
        "gray.png": _write(os.path.join(root, "gray.png"), (4, 6), "L", 2),
        "rgba.PNG": _write(os.path.join(root, "rgba.PNG"), (3, 3), "RGBA", 3),
    }
    jpeg = _write(os.path.join(root, "photo.JPG"), (16, 12), "RGB", 4)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("a,b")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    src = ImageFolderSource(root)
    assert src.layout == "flat" and src.num_classes == 0 and src.splits == ("train",)
    paths, labels = src.files("train")
    assert sorted(map(os.path.basename, paths)) == sorted([*expected, "photo.JPG"])
    ds = src.as_dataset("train", shuffle_files=False)
    assert ds.element_spec[0].shape.as_list() == [None, None, 3]
    for path, (image, label) in zip(paths, _read_all(ds)):
        name = os.path.basename(path)
        assert image.dtype == np.uint8 and label == -1
        if name == "photo.JPG":  # Lossy: compare with PIL's decoding of the file.
            pil = np.asarray(Image.open(path).convert("RGB"), dtype=int)
            assert image.shape == jpeg.shape == pil.shape
            assert np.abs(image - pil).mean() < 2
        elif name == "gray.png":
            np.testing.assert_array_equal(image, np.repeat(expected[name][..., None], 3, -1))
        else:
            np.testing.assert_array_equal(image, expected[name][..., :3])


def test_split_folders_with_unlabeled_split(tmp_path):
    root = str(tmp_path)
    _write(os.path.join(root, "train", "b", "1.png"), seed=1)
    _write(os.path.join(root, "train", "c", "2.png"), seed=2)
    _write(os.path.join(root, "test", "a", "3.png"), seed=3)  # Class only in test.
    _write(os.path.join(root, "test", "c", "4.jpg"), seed=4)
    _write(os.path.join(root, "unlabeled", "5.png"), seed=5)
    src = ImageFolderSource(root)
    assert src.layout == "splits"
    assert set(src.splits) == {"train", "test", "unlabeled"}
    assert src.class_names == ("a", "b", "c")  # Union over splits: ids agree.
    assert sorted(src.files("train")[1]) == [1, 2]
    assert sorted(src.files("test")[1]) == [0, 2]
    assert src.files("unlabeled")[1] == (-1,)
    assert src.is_labeled("train") and not src.is_labeled("unlabeled")
    labels = [lab for _, lab in _read_all(src.as_dataset("test", shuffle_files=False))]
    assert sorted(labels) == [0, 2]


def test_sharding_across_input_pipelines_is_disjoint_and_covering(tmp_path):
    _class_tree(str(tmp_path), per_class=4)
    src = ImageFolderSource(str(tmp_path))
    seen = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        ds = src.as_dataset("train", shuffle_files=True, input_context=ctx, seed=1)
        seen.append(sorted(image.numpy().tobytes() for image, _ in ds))
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == src.num_examples("train")


def test_bad_files_are_left_out_at_index_time_or_dropped_when_decoding(tmp_path):
    _write(str(tmp_path / "good.png"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    # Intact JPEG ends, garbage between: passes the scan, fails to decode.
    (tmp_path / "body.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 64 + b"\xff\xd9")
    src = ImageFolderSource(str(tmp_path))
    assert src.bad_files == ((str(tmp_path / "broken.jpg"), image_folder.REASON_UNKNOWN_FORMAT),)
    assert src.num_examples("train") == 2
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(tf.io.read_file(str(tmp_path / "body.jpg")))
    kept = _read_all(src.as_dataset("train", shuffle_files=False))
    assert len(kept) == 1 and kept[0][0].shape == (8, 10, 3)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderSource(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No JPEG/PNG images"):
        ImageFolderSource(str(empty))
    (empty / "readme.txt").write_text("x")
    (empty / "sub").mkdir()
    with pytest.raises(ValueError, match="No JPEG/PNG images"):
        ImageFolderSource(str(empty))
    _class_tree(str(tmp_path / "ok"), per_class=2)
    src = ImageFolderSource(str(tmp_path / "ok"))
    with pytest.raises(ValueError, match=r"split='tran'.*'train', 'validation', 'test'"):
        src.num_examples("tran")


def test_split_index_lists_labels_and_relative_paths_without_decoding(tmp_path):
    root = str(tmp_path)
    _class_tree(root, classes=("cat", "dog"), per_class=4)
    src = ImageFolderSource(root)
    labels, names = src.split_index("train")
    paths, file_labels = src.files("train")
    np.testing.assert_array_equal(labels, file_labels)
    assert names == [os.path.relpath(p, root) for p in paths]
    assert all(name.split(os.sep)[0] == src.class_names[label] for name, label in zip(names, labels))


def test_resolve_ids_by_relative_path_file_name_or_index(tmp_path):
    root = str(tmp_path)
    _write(os.path.join(root, "train", "a", "x.png"), seed=1)
    _write(os.path.join(root, "train", "a", "y.png"), seed=2)
    _write(os.path.join(root, "train", "b", "z.png"), seed=3)
    src = ImageFolderSource(root)
    paths, _ = src.files("train")
    indices, ids, key = src.resolve_ids("train", ["z.png", os.path.join("train", "a", "x.png"), "z.png"])
    assert [paths[i] for i in indices] == [os.path.join(root, "train", "a", "x.png"), os.path.join(root, "train", "b", "z.png")]
    assert ids == ["z.png", os.path.join("train", "a", "x.png")] and key is None  # Unique, in the given order.
    by_index, _, _ = src.resolve_ids("train", [2, 0])
    np.testing.assert_array_equal(by_index, [0, 2])
    with pytest.raises(ValueError, match=r"1 of 2 ids are not images of split 'train'"):
        src.resolve_ids("train", ["x.png", "missing.png"])
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        src.resolve_ids("train", [3])


def test_select_decodes_the_chosen_files_in_natural_order(tmp_path):
    root = str(tmp_path)
    names = ["p0.png", "p1.png", "p2.png", "p3.png"]
    pixels = {name: _write(os.path.join(root, "train", "c", name), size=(4, 5), seed=i) for i, name in enumerate(names)}
    src = ImageFolderSource(root)
    assert [os.path.basename(p) for p in src.files("train")[0]] == names
    chosen = _read_all(src.select("train", ids=["p3.png", "p1.png"]))
    assert [label for _, label in chosen] == [0, 0]
    for (image, _), name in zip(chosen, ["p1.png", "p3.png"]):  # Natural order, not the order asked.
        np.testing.assert_array_equal(image, pixels[name])
    by_index = _read_all(src.select("train", indices=np.array([2])))
    np.testing.assert_array_equal(by_index[0][0], pixels["p2.png"])
