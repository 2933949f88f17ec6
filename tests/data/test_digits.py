"""data.digits: scikit-learn's digits as an image folder: complete, stratified, deterministic, readable as a source."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

import helpers
from tf_simclr.data import digits
from tf_simclr.data.sources import load_source


def _tree(root):
    """{relative path: sha1 of its bytes} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


def test_folder_holds_every_digit_once_with_a_stratified_split(digits_dir):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    files = _tree(digits_dir)
    assert len(files) == digits.NUM_IMAGES == 1797
    seen, per_split = set(), {"train": np.zeros(10, int), "test": np.zeros(10, int)}
    for rel in files:
        split, label, name = rel.split(os.sep)
        index = int(name[:-4])
        assert index not in seen and bunch.target[index] == int(label)
        seen.add(index)
        per_split[split][int(label)] += 1
        if len(seen) <= 20:  # Pixels: 8x8, 0..16 scaled to 0..255, ink bright.
            pixels = np.asarray(Image.open(os.path.join(digits_dir, rel)))
            assert pixels.shape == (8, 8)
            np.testing.assert_array_equal(pixels, np.rint(bunch.images[index] * 255 / 16).astype(np.uint8))
    assert seen == set(range(1797))
    assert per_split["train"].sum() == 1437 and per_split["test"].sum() == 360
    # Stratified: each class's test share is 20% up to rounding.
    totals = np.bincount(bunch.target)
    assert np.all(np.abs(per_split["test"] - 0.2 * totals) <= 1), per_split


def test_split_is_deterministic_and_seeded(digits_dir, tmp_path):
    again = str(tmp_path / "again")
    assert digits.write_digits_folder(again) == {"train": 1437, "test": 360}
    assert _tree(again) == _tree(digits_dir)
    _, labels = digits.digits_arrays()
    assert not np.array_equal(digits.split_indices(labels, seed=1)[1], digits.split_indices(labels)[1])
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        digits.split_indices(labels, test_fraction=1.5)


def test_rewriting_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "digits"
    (out / "train" / "stale").mkdir(parents=True)
    (out / "train" / "stale" / "old.png").write_bytes(b"old")
    digits.write_digits_folder(str(out))
    assert not (out / "train" / "stale").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-digits-")]  # No temporary folder left.


def test_the_folder_reads_as_a_ten_class_source(digits_dir):
    source = load_source(f"folder:{digits_dir}")
    assert source.layout == "splits" and set(source.splits) == {"train", "test"}
    assert source.class_names == tuple(str(d) for d in range(10))
    assert source.num_classes == 10 and source.num_examples("train") == 1437 and source.num_examples("test") == 360
    assert source.bad_files == ()


def test_cli_needs_out_and_rejects_a_bad_fraction(tmp_path, capsys):
    assert helpers.run_cli("digits") == 2
    assert "--out is required" in capsys.readouterr().err
    assert helpers.run_cli("digits", f"--out={tmp_path / 'd'}", "--test_fraction=1.5") == 2
    assert "test_fraction=1.5" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
