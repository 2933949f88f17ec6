"""Look at the augmentations: a PNG grid of random SimCLR views of your images.

    python -m tf_simclr.visualize --images a.jpg b.png --out grid.png --image_size 96

Each row is one source image: first the original resized to
`image_size` x `image_size` (no crop), then `num_views` independent training
views from `tf_simclr.augment.preprocess_for_train`. Checking this grid is the
quickest way to see whether crop scale, colour strength and blur suit a new
dataset.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_simclr import augment


def _to_uint8(image: tf.Tensor) -> np.ndarray:
    """float [0, 1] -> uint8, rounding to nearest."""
    return np.round(np.clip(np.asarray(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def augmentation_row(
    image: tf.Tensor, image_size: int, num_views: int, color_jitter_strength: float, blur: bool
) -> list[np.ndarray]:
    """The resized original followed by `num_views` augmented views, as uint8 arrays."""
    original = augment.preprocess_for_eval(image, image_size, image_size, crop=False)
    views = [
        augment.preprocess_for_train(
            image, image_size, image_size, color_jitter_strength=color_jitter_strength, blur=blur
        )
        for _ in range(num_views)
    ]
    return [_to_uint8(cell) for cell in [original, *views]]


def grid_size(rows: int, cols: int, image_size: int, padding: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid with `padding` pixels around every cell."""
    return cols * image_size + (cols + 1) * padding, rows * image_size + (rows + 1) * padding


def save_augmentation_grid(
    images: Sequence[tf.Tensor] | tf.Tensor,
    path: str,
    *,
    image_size: int,
    num_views: int = 4,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
    seed: int | None = None,
    padding: int = 2,
) -> str:
    """Writes a PNG grid: one row per image, the resized original then augmented views.

    Args:
        images: A batch `[N, H, W, C]` or a sequence of images `[H, W, C]` (sizes
            may differ), uint8 or float in [0, 1], C in {1, 3}.
        path: Output PNG path.
        image_size: Side of every cell in pixels.
        num_views: Augmented views per image.
        color_jitter_strength: Jitter strength (see `augment.color_jitter`).
        blur: Include the random Gaussian blur.
        seed: If given, sets TensorFlow's global random seed so the grid repeats.
        padding: White pixels around every cell.

    Returns:
        `path`.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int. Received: image_size={image_size!r}")
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
        row = augmentation_row(image, image_size, num_views, color_jitter_strength, blur)
        for c, cell in enumerate(row):
            top, left = padding + r * step, padding + c * step
            canvas[top : top + image_size, left : left + image_size] = cell
    Image.fromarray(canvas).save(path, format="PNG")
    return path


def load_image(path: str) -> tf.Tensor:
    """Decodes a JPEG / PNG / GIF / BMP file to uint8 RGB `[H, W, 3]` (first frame)."""
    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tf_simclr.visualize", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", nargs="+", required=True, help="Image files (JPEG, PNG, ...).")
    parser.add_argument("--out", default="augmentations.png", help="Output PNG path.")
    parser.add_argument("--image_size", type=int, default=96, help="Cell size in pixels.")
    parser.add_argument("--num_views", type=int, default=4, help="Augmented views per image.")
    parser.add_argument("--color_jitter_strength", type=float, default=1.0)
    parser.add_argument("--no_blur", action="store_true", help="Leave out the Gaussian blur.")
    parser.add_argument("--seed", type=int, default=None, help="Random seed for a repeatable grid.")
    args = parser.parse_args(argv)
    images = [load_image(path) for path in args.images]
    out = save_augmentation_grid(
        images, args.out, image_size=args.image_size, num_views=args.num_views,
        color_jitter_strength=args.color_jitter_strength, blur=not args.no_blur, seed=args.seed,
    )
    print(f"Wrote {out}: {len(images)} images x {args.num_views} views.")


if __name__ == "__main__":
    main()
