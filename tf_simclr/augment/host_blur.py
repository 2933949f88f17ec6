"""Gaussian blur on the host (`tf.data`), its sigma drawn per image (the reference draws one per batch)."""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.augment.seeds import APPLY_TAG, SIGMA_TAG, maybe_fold, random_apply, uniform
from tf_simclr.augment.spec import AugmentSpec


def gaussian_kernel(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Normalized 1-D Gaussian of 2 * (kernel_size // 2) + 1 taps, as the reference."""
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    return weights / tf.reduce_sum(weights)


def _blur_axis_by_shifts(image: tf.Tensor, weights: tf.Tensor, radius: int, axis: int) -> tf.Tensor:
    """1-D symmetric convolution along `axis` (0 or 1) as a sum of zero-filled shifts."""
    taps = tf.unstack(weights)
    length = image.shape[axis] if image.shape[axis] is not None else tf.shape(image)[axis]
    pad, size = [[0, 0]] * 3, [-1] * 3
    pad[axis], size[axis] = [radius, radius], length
    padded = tf.pad(image, pad)

    def shifted(offset):
        return tf.slice(padded, [offset if a == axis else 0 for a in range(3)], size)

    out = taps[radius] * image
    for i in range(1, radius + 1):  # The kernel is symmetric: pair the two shifts.
        out += taps[radius + i] * (shifted(radius - i) + shifted(radius + i))
    return out


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur with 'SAME' zero padding (edges darken, as the reference).

    Filters of up to 5 taps are sums of shifted images (3x faster than a
    depthwise convolution at 32 px); longer ones use `tf.nn.depthwise_conv2d`.

    Args:
        image: float32 image `[H, W, C]`.
        sigma: Standard deviation in pixels (scalar, may be a tensor).
        kernel_size: Python int; the filter has 2 * (kernel_size // 2) + 1 taps,
            so sizes 0 and 1 leave the image unchanged.

    Returns:
        float32 `[H, W, C]`.
    """
    if not isinstance(kernel_size, int) or kernel_size < 0:
        raise ValueError(
            f"kernel_size must be a Python int >= 0. Received: kernel_size={kernel_size!r}"
        )
    image = tf.convert_to_tensor(image, tf.float32)
    radius = kernel_size // 2
    if radius == 0:
        return image
    weights = gaussian_kernel(sigma, kernel_size)
    if radius <= 2:
        rows = _blur_axis_by_shifts(image, weights, radius, axis=1)
        return _blur_axis_by_shifts(rows, weights, radius, axis=0)
    taps, channels = 2 * radius + 1, image.shape[-1]
    kernel = tf.tile(weights[:, tf.newaxis, tf.newaxis], [1, channels, 1])
    horizontal = tf.reshape(kernel, [1, taps, channels, 1])
    vertical = tf.reshape(kernel, [taps, 1, channels, 1])
    batch = tf.nn.depthwise_conv2d(image[tf.newaxis], horizontal, [1] * 4, "SAME")
    batch = tf.nn.depthwise_conv2d(batch, vertical, [1] * 4, "SAME")
    return batch[0]


def random_blur(image: tf.Tensor, spec: AugmentSpec, seed=None) -> tf.Tensor:
    """Gaussian blur with the spec's probability, sigma uniform in its range per image.

    The kernel has `spec.blur_kernel_size` (image_size // 10) taps, so images
    under 20 px are never changed. A blurred image is clipped to [0, 1], as the
    reference's batch blur does.

    Args:
        image: float32 image `[H, W, C]`.
        spec: The augmentation spec.
        seed: Optional `[2]` integer seed (see the module docstring).

    Returns:
        float32 `[H, W, C]`.
    """
    kernel_size = spec.blur_kernel_size
    if kernel_size // 2 == 0:  # A one-tap kernel: the identity.
        return image

    def blur(x):
        sigma = uniform([], maybe_fold(seed, SIGMA_TAG), *spec.blur_sigma_range)
        return tf.clip_by_value(gaussian_blur(x, sigma, kernel_size), 0.0, 1.0)

    return random_apply(blur, spec.blur_probability, image, seed=maybe_fold(seed, APPLY_TAG))
