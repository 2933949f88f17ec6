"""Colour ops on whole batches in `keras.ops` (the device implementation's colour, as `host_color` is the host's).

Each op matches its `tf.image` counterpart on a `[B, H, W, 3]` batch in [0, 1] with one factor per image;
`augment.device` draws the factors and the random order from the `AugmentSpec`.
"""

from __future__ import annotations

from keras import ops

from tf_simclr.augment.spec import GRAY_WEIGHTS


def per_image(values):
    return values[:, None, None, None]


def adjust_brightness(images, factors):
    """simclrv2 brightness: multiply by a per-image factor."""
    return images * per_image(factors)


def adjust_contrast(images, factors):
    """As tf.image.adjust_contrast: scale each channel's deviation from its mean."""
    mean = ops.mean(images, axis=(1, 2), keepdims=True)
    return (images - mean) * per_image(factors) + mean


def _value_and_chroma(images):
    """HSV value (max) and chroma (max - min) as TF's kernels: chroma 0 where value <= 0."""
    value = ops.max(images, axis=-1, keepdims=True)
    chroma = value - ops.min(images, axis=-1, keepdims=True)
    return value, ops.where(value > 0, chroma, 0.0)


def _hue_sixths(images, safe_chroma):
    """HSV hue in sixths of a turn (in [-1, 5)), from the largest channel's sector.

    The largest channel is found by comparing channels with each other, not
    with `max(...)`: XLA may recompute a fused value with other rounding, and an
    exact `r == value` test that fails for every channel would pick a wrong
    sector (an error of a whole colour, seen under jax.jit on CPU).
    """
    r, g, b = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    r_max = ops.logical_and(r >= g, r >= b)
    g_max = ops.logical_and(ops.logical_not(r_max), g >= b)
    return ops.where(r_max, (g - b) / safe_chroma,
                     ops.where(g_max, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma))


def adjust_saturation(images, factors):
    """As tf.image.adjust_saturation, without the HSV round trip.

    Saturation is chroma / value; scaling it (clipped to 1) at fixed hue and
    value moves every channel towards the value by the same ratio.
    """
    value, chroma = _value_and_chroma(images)
    safe_chroma = ops.where(chroma > 0, chroma, 1.0)
    ratio = ops.minimum(per_image(factors), value / safe_chroma)  # New / old saturation.
    ratio = ops.where(chroma > 0, ratio, 0.0)
    return value - (value - images) * ratio


def adjust_hue(images, deltas):
    """As tf.image.adjust_hue: rotate the HSV hue by `deltas` (fractions of a turn)."""
    return saturate_and_rotate_hue(images, ops.ones_like(deltas), deltas)


def to_grayscale(images):
    """Luma grayscale in three equal channels (the weights of augment.to_grayscale)."""
    gray = ops.sum(images * ops.convert_to_tensor(GRAY_WEIGHTS, "float32"), axis=-1, keepdims=True)
    return ops.tile(gray, [1, 1, 1, 3])


def saturate_and_rotate_hue(images, saturation_factors, hue_deltas):
    """`adjust_saturation` then `adjust_hue` in one HSV round trip.

    Scaling the saturation at fixed hue and value scales the chroma, so the
    output is rebuilt from the rotated hue, the value and the scaled chroma;
    with a factor of 1 and a delta of 0 it returns its input (up to ~1e-7).
    """
    value, chroma = _value_and_chroma(images)
    safe = ops.where(chroma > 0, chroma, 1.0)
    hue = _hue_sixths(images, safe) * ops.where(chroma > 0, 1.0 / 6.0, 0.0) + per_image(hue_deltas)
    hue = hue - ops.floor(hue)  # In [0, 1).
    ratio = ops.minimum(per_image(saturation_factors), value / safe)  # New / old saturation.
    chroma = chroma * ops.where(chroma > 0, ratio, 0.0)
    # HSV -> RGB: channel n in (R, G, B) = (5, 3, 1) is value - chroma * clip(min(k, 4 - k)).
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = n + 6.0 * hue
        k = k - 6.0 * ops.floor(k / 6.0)
        channels.append(value - chroma * ops.clip(ops.minimum(k, 4.0 - k), 0.0, 1.0))
    return ops.concatenate(channels, axis=-1)
