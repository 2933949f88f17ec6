"""scikit-learn digits as an image folder: complete, stratified, deterministic, and a transfer run works on it."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from tf_simclr import data as data_lib
from tf_simclr import digits
from tf_simclr import train as train_lib

from tests.test_train import tiny_config


def _tree(root):
    """{relative path: sha1 of its bytes} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits") / "digits")
    digits.main(["--out", root])
    return root


def test_folder_holds_every_digit_once_with_a_stratified_split(digits_dir):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    files = _tree(digits_dir)
    assert len(files) == 1797
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
    digits.write_digits_folder(again)
    assert _tree(again) == _tree(digits_dir)
    _, labels = digits.digits_arrays()
    assert not np.array_equal(digits.split_indices(labels, seed=1)[1], digits.split_indices(labels)[1])
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        digits.split_indices(labels, test_fraction=1.5)


@pytest.mark.slow
def test_tiny_transfer_from_fashion_mnist(fashion_mnist_dir, digits_dir, tmp_path):
    pre = tiny_config(fashion_mnist_dir, str(tmp_path / "pre"), train_steps=20, checkpoint_steps=20)  # Settled BN statistics.
    train_lib.train(pre)
    source = data_lib.load_source(f"folder:{digits_dir}")
    assert source.num_classes == 10 and source.num_examples("train") == 1437 and source.num_examples("test") == 360
    config = tiny_config(
        None, str(tmp_path / "lin"), train_mode="finetune", checkpoint=str(tmp_path / "pre"), fine_tune_after_block=4,
        zero_init_logits_layer=True, train_steps=240, checkpoint_steps=240, optimizer="momentum", learning_rate=1.0,
        weight_decay=0.0, eval_batch_size=120,
    )
    import dataclasses

    config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=f"folder:{digits_dir}", eval_split="test"))
    train_lib.train(config)
    results = train_lib.evaluate_checkpoint(config)
    assert results["global_step"] == 240
    assert results["top_1_accuracy"] > 0.2, results  # Chance: 0.1 (360 test digits).
