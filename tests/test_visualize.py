"""Tests for tf_simclr.visualize: the PNG grid's size, its first column, and the CLI."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_simclr import visualize


def _images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(20, 20, 1), dtype=np.uint8),  # Grayscale, another size.
    ]


def _expected_original(image, size):
    """Independent path: tf.image bicubic resize of the [0, 1] image, rounded to uint8."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    resized = tf.image.resize(rgb.astype(np.float32) / 255.0, [size, size], "bicubic").numpy()
    return np.round(np.clip(resized, 0, 1) * 255).astype(np.uint8)


def _cell(grid, row, col, size, padding):
    top, left = padding + row * (size + padding), padding + col * (size + padding)
    return grid[top : top + size, left : left + size]


def test_grid_size_and_first_column(tmp_path):
    size, views, padding = 24, 3, 2
    path = visualize.save_augmentation_grid(
        _images(), str(tmp_path / "grid.png"), image_size=size, num_views=views, seed=0
    )
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (2 * size + 3 * padding, 4 * size + 5 * padding, 3)
    assert np.all(grid[:padding] == 255)  # The white frame.
    for row, image in enumerate(_images()):
        first = _cell(grid, row, 0, size, padding)
        np.testing.assert_allclose(first, _expected_original(image, size), atol=1)
        views_ = [_cell(grid, row, c, size, padding) for c in range(1, views + 1)]
        assert all(not np.array_equal(v, views_[0]) for v in views_[1:])  # Independent draws.


def test_seed_repeats_the_grid(tmp_path):
    paths = [
        visualize.save_augmentation_grid(
            _images()[:1], str(tmp_path / f"{i}.png"), image_size=16, num_views=2, seed=7
        )
        for i in range(2)
    ]
    first, second = (np.asarray(Image.open(p)) for p in paths)
    np.testing.assert_array_equal(first, second)


def test_batch_tensor_input(tmp_path):
    batch = tf.random.uniform([3, 20, 20, 3])  # Float images in [0, 1].
    path = visualize.save_augmentation_grid(
        batch, str(tmp_path / "b.png"), image_size=10, num_views=1
    )
    assert Image.open(path).size == visualize.grid_size(3, 2, 10, 2)


def test_main_reads_jpeg_and_png(tmp_path, capsys):
    rng = np.random.default_rng(1)
    jpg, png = str(tmp_path / "a.jpg"), str(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(jpg)
    Image.fromarray(rng.integers(0, 256, (25, 35, 3), dtype=np.uint8)).save(png)
    out = str(tmp_path / "grid.png")
    visualize.main(["--images", jpg, png, "--out", out, "--image_size", "32", "--num_views", "2"])
    assert Image.open(out).size == visualize.grid_size(2, 3, 32, 2)
    assert "Wrote" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    decoded = np.asarray(Image.open(png).convert("RGB"))
    np.testing.assert_allclose(_cell(grid, 1, 0, 32, 2), _expected_original(decoded, 32), atol=1)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        visualize.save_augmentation_grid(_images(), str(tmp_path / "x.png"), image_size=0)
    with pytest.raises(ValueError, match="empty"):
        visualize.save_augmentation_grid([], str(tmp_path / "x.png"), image_size=8)
