"""augment.grid: the PNG grid of augmented views (size, frame, first column, seeds) and `tf_simclr visualize views`."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import helpers
from tf_simclr.augment import grid
from tf_simclr.augment.spec import AugmentSpec


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


def _cell(picture, row, col, size, padding):
    top, left = padding + row * (size + padding), padding + col * (size + padding)
    return picture[top : top + size, left : left + size]


def test_grid_size_and_first_column(tmp_path):
    size, views, padding = 24, 3, 2
    path = grid.save_augmentation_grid(
        _images(), str(tmp_path / "grid.png"), AugmentSpec(size), num_views=views, seed=0
    )
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (2 * size + 3 * padding, 4 * size + 5 * padding, 3)
    assert (picture.shape[1], picture.shape[0]) == grid.grid_size(2, views + 1, size, padding)
    assert np.all(picture[:padding] == 255)  # The white frame.
    assert np.all(picture[:, :padding] == 255) and np.all(picture[-padding:] == 255)
    for row, image in enumerate(_images()):
        first = _cell(picture, row, 0, size, padding)
        np.testing.assert_allclose(first, _expected_original(image, size), atol=1)
        views_ = [_cell(picture, row, c, size, padding) for c in range(1, views + 1)]
        assert all(not np.array_equal(v, views_[0]) for v in views_[1:])  # Independent draws.


def test_seed_repeats_the_grid(tmp_path):
    paths = [
        grid.save_augmentation_grid(_images()[:1], str(tmp_path / f"{i}.png"), AugmentSpec(16), num_views=2, seed=7)
        for i in range(2)
    ]
    first, second = (np.asarray(Image.open(p)) for p in paths)
    np.testing.assert_array_equal(first, second)


def test_batch_tensor_input(tmp_path):
    batch = tf.random.uniform([3, 20, 20, 3])  # Float images in [0, 1].
    path = grid.save_augmentation_grid(batch, str(tmp_path / "b.png"), AugmentSpec(10), num_views=1)
    assert Image.open(path).size == grid.grid_size(3, 2, 10, 2)


def test_views_follow_the_spec(tmp_path):
    """Strength 0 and min_crop_area=1: every view is the resized original or its mirror image."""
    image = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    spec = AugmentSpec(16, color_jitter_strength=0.0, blur=False, min_crop_area=1.0)
    row = grid.augmentation_row(image, spec, num_views=6)
    assert len(row) == 7 and all(cell.shape == (16, 16, 3) and cell.dtype == np.uint8 for cell in row)
    original = _expected_original(image, 16).astype(int)
    for cell in row[1:]:
        cell = cell.astype(int)
        assert min(np.abs(cell - original).max(), np.abs(cell - original[:, ::-1]).max()) <= 1


def test_cli_views_reads_jpeg_and_png(tmp_path, capsys):
    rng = np.random.default_rng(1)
    jpg, png = str(tmp_path / "a.jpg"), str(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(jpg)
    Image.fromarray(rng.integers(0, 256, (25, 35, 3), dtype=np.uint8)).save(png)
    out = str(tmp_path / "grid.png")
    code = helpers.run_cli("visualize", "views", f"--images={jpg},{png}", f"--out={out}", "--image_size=32",
                           "--num_views=2", "--seed=3")
    assert code == 0
    assert Image.open(out).size == grid.grid_size(2, 3, 32, 2)
    assert "Wrote" in capsys.readouterr().out
    picture = np.asarray(Image.open(out))
    decoded = np.asarray(Image.open(png).convert("RGB"))
    np.testing.assert_allclose(_cell(picture, 1, 0, 32, 2), _expected_original(decoded, 32), atol=1)
    np.testing.assert_array_equal(np.asarray(grid.load_image(png)), decoded)


def test_cli_views_without_images_is_a_usage_error(tmp_path, capsys):
    assert helpers.run_cli("visualize", "views", f"--out={tmp_path / 'x.png'}") == 2
    assert "--images" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        grid.save_augmentation_grid(_images(), str(tmp_path / "x.png"), AugmentSpec(0))
    with pytest.raises(ValueError, match="empty"):
        grid.save_augmentation_grid([], str(tmp_path / "x.png"), AugmentSpec(8))
    with pytest.raises(ValueError, match="num_views=-1"):
        grid.save_augmentation_grid(_images(), str(tmp_path / "x.png"), AugmentSpec(8), num_views=-1)
    assert not (tmp_path / "x.png").exists()
