"""Look at the augmentations: a PNG grid of random SimCLR views of your images.

    tf_simclr visualize views --images a.jpg b.png --out grid.png --image_size 96

Each row is one source image: first the original resized to
`image_size` x `image_size` (no crop), then `num_views` independent training
views from `augment.host.preprocess_for_train`. Checking this grid is the
quickest way to see whether crop scale, colour strength and blur suit a new
dataset.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_simclr.augment import host
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.storage import atomic


def _to_uint8(image: tf.Tensor) -> np.ndarray:
    """float [0, 1] -> uint8, rounding to nearest."""
    return np.round(np.clip(np.asarray(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def augmentation_row(image: tf.Tensor, spec: AugmentSpec, num_views: int) -> list[np.ndarray]:
    """The resized original followed by `num_views` augmented views, as uint8 arrays."""
    size = spec.image_size
    original = host.preprocess_for_eval(image, size, size, crop=False)
    views = [host.preprocess_for_train(image, spec) for _ in range(num_views)]
    return [_to_uint8(cell) for cell in [original, *views]]


def grid_size(rows: int, cols: int, image_size: int, padding: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid with `padding` pixels around every cell."""
    return cols * image_size + (cols + 1) * padding, rows * image_size + (rows + 1) * padding


def save_augmentation_grid(
    images: Sequence[tf.Tensor] | tf.Tensor,
    path: str,
    spec: AugmentSpec,
    *,
    num_views: int = 4,
    seed: int | None = None,
    padding: int = 2,
) -> str:
    """Writes a PNG grid: one row per image, the resized original then augmented views.

    Args:
        images: A batch `[N, H, W, C]` or a sequence of images `[H, W, C]` (sizes
            may differ), uint8 or float in [0, 1], C in {1, 3}.
        path: Output PNG path (any tf.io.gfile path).
        spec: The augmentation to show; `spec.image_size` is the cell side in pixels.
        num_views: Augmented views per image.
        seed: If given, sets TensorFlow's global random seed so the grid repeats.
        padding: White pixels around every cell.

    Returns:
        `path`.
    """
    image_size = spec.image_size
    if not isinstance(num_views, int) or num_views < 0:
        raise ValueError(f"num_views must be an int >= 0. Received: num_views={num_views!r}")
    if len(images) == 0:
        raise ValueError("images is empty: pass at least one image [H, W, C].")
    if seed is not None:
        tf.random.set_seed(seed)
    width, height = grid_size(len(images), num_views + 1, image_size, padding)
    canvas = np.full((height, width, 3), 255, np.uint8)
    step = image_size + padding
    for r, image in enumerate(images):
        row = augmentation_row(image, spec, num_views)
        for c, cell in enumerate(row):
            top, left = padding + r * step, padding + c * step
            canvas[top : top + image_size, left : left + image_size] = cell
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return atomic.write_bytes(path, buffer.getvalue())


def load_image(path: str) -> tf.Tensor:
    """Decodes a JPEG / PNG / GIF / BMP file to uint8 RGB `[H, W, 3]` (first frame)."""
    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, expand_animations=False)
