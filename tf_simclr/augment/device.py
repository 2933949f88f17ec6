"""SimCLR augmentation of whole batches in `keras.ops`, for the accelerator (the device implementation).

`augment.host` augments one image at a time in `tf.data` on the host;
at large image sizes the host CPUs become the bottleneck. Here the host only
decodes and batches uint8 images, and `device_views` (or the `DeviceAugment`
layer) makes the views inside the compiled train step. Only `keras.ops` is
used, so the same code runs under the TensorFlow and the JAX backend, in a
`tf.function` (XLA or not) or under `jax.jit`.

Both draw what one `AugmentSpec` (`augment.spec`) says; the distribution is
that of `host.pretrain_views(image, spec)` with `impl="simclrv2"`:

* Crop: the algorithm of `tf.image.stateless_sample_distorted_bounding_box`
  as `host.sample_crop_box` calls it (the spec's area and aspect ranges,
  min_object_covered and attempts, then the whole image), replayed in integer
  pixels for all images at once.
* Resize: the crop is resampled bicubically exactly as `tf.image.resize`
  (Keys cubic a=-0.5, half-pixel centres, taps outside the crop dropped and
  the weights renormalised), as two per-image matrices `[S, H]` and `[S, W]`:
  two batched matmuls instead of a per-image gather. The flip reverses the
  column matrix.
* Colour: brightness (multiplicative), contrast, saturation and hue in a
  uniformly random order per image with the spec's jitter probability, clipped
  after each op, then grayscale with its probability (none at strength 0); blur
  (its probability and sigma range, kernel image_size // 10, zero padding)
  last, clipped.

Speed (all views of a batch go through each stage together): a jitter round is
two passes (brightness/contrast as one affine map, saturation/hue as one HSV
round trip) and the blur is two banded matmuls. On an H100 the two views of
256 images at 224 px take 6.7 ms (benchmarks/device_augment_stages.py).

Deviations (rounding only): TF's bicubic weights come from a 1024-entry table
(here exact; differences < 1e-3); the resize's overshoot is clipped before the
first jitter op (the host clips after it) and before the grayscale step when no
jitter ran (the host after it); a jitter op not chosen in a round runs with its
identity factor (exact up to ~1e-7); and on GPUs
whose float32 matmuls run in TF32 (JAX's default, TF's on Ampere+) the resize
and the blur carry ~1e-3 error.

Randomness: every draw comes from a counter-based hash (murmur3's finaliser
on uint32, in `keras.ops`) keyed by a `[2]` integer seed. So a seed tensor
gives the same views under both backends and in any compiled function, and a
`keras.random.SeedGenerator` is advanced exactly once per call (its `next()`
gives the key), which is what Keras's stateless JAX train step threads.
"""

from __future__ import annotations


import keras
import numpy as np
from keras import ops

from tf_simclr.augment.device_color import per_image, saturate_and_rotate_hue, to_grayscale
from tf_simclr.augment.spec import EVAL_CROP_PROPORTION, AugmentSpec

_KEYS_A = -0.5  # The Keys cubic of tf.image.resize(method="bicubic").


class _Columns:
    """Column layout of the uniforms one view draws per image (two per crop attempt, then one per decision)."""

    def __init__(self, attempts: int):
        self.attempts = attempts
        self.aspect = 0
        self.height = self.aspect + attempts
        self.top = self.height + attempts
        self.left = self.top + 1
        self.flip = self.left + 1
        self.jitter = self.flip + 1  # Whether to jitter.
        self.factors = self.jitter + 1  # 4: brightness, contrast, saturation, hue.
        self.order = self.factors + 4  # 4: sorted to a random permutation.
        self.gray = self.order + 4
        self.blur = self.gray + 1
        self.sigma = self.blur + 1
        self.per_view = self.sigma + 1


# ----------------------------------------------------------------------------- randomness


def _u32(value):
    return ops.convert_to_tensor(np.uint32(value), dtype="uint32")


def _fmix32(h):
    """murmur3's 32-bit finaliser: a bijection that mixes every input bit into every output bit."""
    h = ops.bitwise_xor(h, ops.right_shift(h, _u32(16)))
    h = ops.multiply(h, _u32(0x85EBCA6B))
    h = ops.bitwise_xor(h, ops.right_shift(h, _u32(13)))
    h = ops.multiply(h, _u32(0xC2B2AE35))
    return ops.bitwise_xor(h, ops.right_shift(h, _u32(16)))


def seed_key(seed):
    """The uint32 `[2]` key of `seed`: a SeedGenerator (advanced once), an int or int `[2]`."""
    if isinstance(seed, keras.random.SeedGenerator):
        seed = seed.next()
    elif isinstance(seed, int):
        seed = [seed, 0]
    seed = ops.convert_to_tensor(seed)
    if tuple(seed.shape) != (2,) or "int" not in str(seed.dtype):
        raise ValueError(
            "seed must be a keras.random.SeedGenerator, a Python int or an integer tensor of "
            f"shape [2]. Received: dtype={seed.dtype}, shape={tuple(seed.shape)}"
        )
    return ops.cast(seed, "uint32")


def hashed_uniforms(key, batch_size, first_column: int, num_columns: int):
    """float32 uniforms in [0, 1) `[batch_size, num_columns]`, a pure function of
    (key, row, column): the same on every backend and at every batch split."""
    rows = ops.cast(ops.arange(batch_size), "uint32")[:, None]
    cols = ops.cast(ops.arange(first_column, first_column + num_columns), "uint32")[None, :]
    row_key = _fmix32(ops.add(ops.multiply(rows, _u32(0x9E3779B9)), key[0]))
    h = _fmix32(ops.add(ops.bitwise_xor(row_key, ops.multiply(cols, _u32(0x7FEB352D))), key[1]))
    h = _fmix32(ops.bitwise_xor(h, row_key))
    return ops.cast(ops.right_shift(h, _u32(8)), "float32") * (1.0 / (1 << 24))


# ----------------------------------------------------------------------------- crop boxes


def _crop_boxes_from_uniforms(u, spec: AugmentSpec, image_height: int, image_width: int,
                              target_aspect_ratio: float):
    """`sample_distorted_bounding_box`'s algorithm on `[B, A]` attempts at once.

    Each attempt draws an aspect ratio uniformly, then an integer height
    uniformly between the heights that give the smallest and the largest area
    (not a uniform area), rounding as the TF kernel (`lrintf` = round half to
    even). The first valid attempt wins; none valid gives the whole image.
    """
    col = _Columns(spec.crop_attempts)
    h_img, w_img = float(image_height), float(image_width)
    low, high = (r * target_aspect_ratio for r in spec.aspect_ratio_range)
    ratio = low + (high - low) * u[:, col.aspect:col.aspect + col.attempts]
    min_area = np.float32(spec.crop_area_range[0]) * np.float32(w_img * h_img)
    max_area = np.float32(spec.crop_area_range[1]) * np.float32(w_img * h_img)

    height = ops.round(ops.sqrt(min_area / ratio))
    max_height = ops.round(ops.sqrt(max_area / ratio))
    # The tallest height whose rounded width still fits the image.
    fitting = ops.floor((w_img + 0.5 - 1e-7) / ratio)
    fitting = ops.where(ops.round(fitting * ratio) > w_img, fitting - 1, fitting)
    max_height = ops.where(ops.round(max_height * ratio) > w_img, fitting, max_height)
    max_height = ops.minimum(max_height, h_img)
    height = ops.minimum(height, max_height)
    span = max_height - height + 1  # Uniform integer in [height, max_height].
    height = ops.minimum(height + ops.floor(u[:, col.height:col.height + col.attempts] * span), max_height)
    width = ops.round(height * ratio)
    # Rounding repairs of the kernel: one pixel taller if too small, shorter if too big.
    too_small = width * height < min_area
    height = ops.where(too_small, height + 1, height)
    width = ops.where(too_small, ops.round(height * ratio), width)
    too_big = width * height > max_area
    height = ops.where(too_big, height - 1, height)
    width = ops.where(too_big, ops.round(height * ratio), width)
    area = width * height
    valid = ops.logical_and(
        ops.logical_and(area >= min_area, area <= max_area),
        ops.logical_and(ops.logical_and(width <= w_img, height <= h_img),
                        ops.logical_and(width > 0, height > 0)),
    )
    covered = area / np.float32(w_img * h_img) >= np.float32(spec.min_object_covered)
    valid = ops.logical_and(valid, covered)

    first = ops.argmax(ops.cast(valid, "int32"), axis=1)[:, None]
    found = ops.any(valid, axis=1)
    height = ops.where(found, ops.take_along_axis(height, first, axis=1)[:, 0], h_img)
    width = ops.where(found, ops.take_along_axis(width, first, axis=1)[:, 0], w_img)
    # The kernel's Uniform(n) is in [0, n - 1]: the last offset is never drawn.
    top = ops.minimum(ops.floor(u[:, col.top] * (h_img - height)), ops.maximum(h_img - height - 1, 0))
    left = ops.minimum(ops.floor(u[:, col.left] * (w_img - width)), ops.maximum(w_img - width - 1, 0))
    return top, left, height, width


def sample_crop_boxes(seed, batch_size, image_height: int, image_width: int, spec: AugmentSpec, *,
                      target_aspect_ratio: float = 1.0, view: int = 0):
    """The crop boxes `device_views` uses for view `view` of a batch, for inspection.

    Returns:
        `(top, left, height, width)`, float32 `[batch_size]` whole pixel counts.
    """
    col = _Columns(spec.crop_attempts)
    u = hashed_uniforms(seed_key(seed), batch_size, view * col.per_view, col.per_view)
    return _crop_boxes_from_uniforms(u, spec, image_height, image_width, target_aspect_ratio)


# ----------------------------------------------------------------------------- resize


def _keys_cubic(distance):
    """The Keys cubic convolution kernel (a = -0.5) at |distance|."""
    x = ops.abs(distance)
    a = _KEYS_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return ops.where(x <= 1.0, near, ops.where(x < 2.0, far, 0.0))


def _bicubic_matrix(start, length, in_size: int, out_size: int):
    """`[B, out_size, in_size]` weights that resize `[start, start + length)` to `out_size`.

    As `tf.image.resize(..., "bicubic")`: output pixel o samples the crop at
    (o + 0.5) * length / out_size - 0.5; source pixels outside the crop get
    weight 0 and the rest are renormalised (edges are not replicated).
    """
    centres = (ops.arange(out_size, dtype="float32") + 0.5)[None, :, None]
    position = centres * (length / out_size)[:, None, None] - 0.5  # In crop pixels.
    source = ops.arange(in_size, dtype="float32")[None, None, :] - start[:, None, None]
    inside = ops.logical_and(source >= 0, source < length[:, None, None])
    weights = ops.where(inside, _keys_cubic(position - source), 0.0)
    return weights / ops.sum(weights, axis=-1, keepdims=True)


def resized_crops(images, top, left, height, width, flip, image_size: int):
    """Crops every image to its box, flips where `flip`, bicubic resize to `image_size`.

    Args:
        images: uint8 (scaled by 1/255) or float `[B, H, W, C]`, C in {1, 3}, static H, W.
        top, left, height, width: float32 `[B]` boxes in whole pixels.
        flip: bool `[B]`, left-right flip.
        image_size: Output side S.

    Returns:
        float32 `[B, S, S, 3]`, not clipped (bicubic overshoots).
    """
    in_height, in_width, channels = images.shape[1], images.shape[2], images.shape[3]
    scale = 1.0 / 255.0 if "int" in str(images.dtype) else 1.0
    rows = _bicubic_matrix(top, height, in_height, image_size)
    cols = _bicubic_matrix(left, width, in_width, image_size)
    cols = ops.where(flip[:, None, None], ops.flip(cols, axis=1), cols)
    pixels = ops.cast(images, "float32")
    out = ops.einsum("byi,bijc->byjc", rows, pixels)
    out = ops.einsum("byjc,bxj->byxc", out, cols) * scale
    return out if channels == 3 else ops.tile(out, [1, 1, 1, 3])


# ----------------------------------------------------------------------------- colour (the ops: device_color)


def _jitter_factors(u, spec: AugmentSpec, col: _Columns):
    """`[B]` brightness, contrast, saturation, hue from uniforms, in the spec's ranges."""
    return [lo + (hi - lo) * u[:, col.factors + i] for i, (lo, hi) in enumerate(spec.jitter_ranges())]


def _color_jitter(images, u, spec: AugmentSpec, col: _Columns):
    """The 4 jitter ops in a uniformly random order per image, clipped after each.

    Round r applies, per image, the op its permutation puts at r and the
    identity for the others, in two passes instead of four: brightness and
    contrast are one affine map `x * a + mean * (1 - c)`, saturation and hue
    one HSV round trip. So every image gets its own order without branches
    (straight-line elementwise work that XLA fuses).
    """
    brightness, contrast, saturation, hue = _jitter_factors(u, spec, col)
    order = ops.argsort(u[:, col.order:col.order + 4], axis=1)  # A uniform permutation.
    for step in range(4):
        chosen = order[:, step]
        scale = ops.where(chosen == 0, brightness, ops.where(chosen == 1, contrast, 1.0))
        mean_weight = ops.where(chosen == 1, 1.0 - contrast, 0.0)
        mean = ops.mean(images, axis=(1, 2), keepdims=True)
        images = ops.clip(images * per_image(scale) + mean * per_image(mean_weight), 0.0, 1.0)
        images = saturate_and_rotate_hue(
            images, ops.where(chosen == 2, saturation, 1.0), ops.where(chosen == 3, hue, 0.0))
    return images


def _color_distortion(images, u, spec: AugmentSpec, col: _Columns):
    """Jitter with the spec's probability (0.8), then grayscale with its probability (0.2); output in [0, 1]."""
    jittered = _color_jitter(images, u, spec, col)
    jitter = per_image(u[:, col.jitter] < spec.jitter_probability)
    images = ops.clip(ops.where(jitter, jittered, images), 0, 1)
    return ops.where(per_image(u[:, col.gray] < spec.grayscale_probability), to_grayscale(images), images)


# ----------------------------------------------------------------------------- blur


def _blur_matrix(weights, radius: int, length: int):
    """`[B, length, length]` banded matrices: output o sums inputs o - radius .. o + radius (zeros outside)."""
    index = ops.arange(length, dtype="int32")
    offset = index[None, :] - index[:, None] + radius  # Tap index of input i for output o.
    inside = ops.logical_and(offset >= 0, offset <= 2 * radius)
    taps = ops.take(weights, ops.clip(offset, 0, 2 * radius), axis=1)  # [B, length, length]
    return ops.where(inside[None], taps, 0.0)


def gaussian_blur(images, sigmas, kernel_size: int):
    """Separable Gaussian blur, one sigma per image, 'SAME' zero padding (as augment.py).

    The filter has 2 * (kernel_size // 2) + 1 taps, normalised over all taps
    (so edges darken, as the host's zero padding). Each axis is one batched
    matmul with a banded per-image matrix: the accelerator's matrix units do
    the work (on GPUs that run float32 matmuls in TF32, ~1e-3 error).

    Args:
        images: float32 `[B, H, W, C]`.
        sigmas: float32 `[B]` standard deviations in pixels.
        kernel_size: Python int >= 0.
    """
    radius = kernel_size // 2
    if radius == 0:
        return images
    offsets = ops.arange(-radius, radius + 1, dtype="float32")[None, :]
    sigmas = ops.cast(sigmas, "float32")[:, None]
    weights = ops.exp(-ops.square(offsets) / (2.0 * ops.square(sigmas)))
    weights = weights / ops.sum(weights, axis=1, keepdims=True)  # [B, taps]
    rows = _blur_matrix(weights, radius, images.shape[1])
    cols = _blur_matrix(weights, radius, images.shape[2])
    out = ops.einsum("byi,bixc->byxc", rows, images)
    return ops.einsum("byjc,bxj->byxc", out, cols)


def _random_blur(images, u, spec: AugmentSpec, col: _Columns):
    low, high = spec.blur_sigma_range
    blurred = gaussian_blur(images, low + (high - low) * u[:, col.sigma], spec.blur_kernel_size)
    return ops.where(per_image(u[:, col.blur] < spec.blur_probability), ops.clip(blurred, 0.0, 1.0), images)


# ----------------------------------------------------------------------------- views


def _check_args(images, spec, num_views):
    if not isinstance(spec, AugmentSpec):
        raise TypeError(f"Expected an augment.AugmentSpec. Received: {type(spec).__name__}")
    if spec.impl != "simclrv2":  # Brightness here is multiplicative; simclrv1's ranges are additive deltas.
        raise ValueError(f"On-device augmentation implements impl='simclrv2' only. Received: impl={spec.impl!r}")
    if not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views must be an int >= 1. Received: num_views={num_views!r}")
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[3] not in (1, 3) or shape[1] is None or shape[2] is None:
        raise ValueError(
            "images must be a batch [B, H, W, C] with static H and W and C in {1, 3} "
            f"(decode and batch same-sized images on the host). Received: shape={shape}"
        )


def stacked_views(images, seed, spec: AugmentSpec, *, num_views: int = 2):
    """`device_views` stacked on the batch axis: `[num_views * B, S, S, 3]`, view-major.

    Row `v * B + i` is view v of image i: the order the contrastive loss wants
    (all first views, then all second views), so a train step feeds it to the
    encoder as it is. All views go through each stage together: half the
    kernel launches of one view at a time, and larger matmuls.
    """
    images = ops.convert_to_tensor(images)
    _check_args(images, spec, num_views)
    col = _Columns(spec.crop_attempts)
    key = seed_key(seed)
    batch = ops.shape(images)[0]
    u = ops.concatenate([hashed_uniforms(key, batch, v * col.per_view, col.per_view) for v in range(num_views)], axis=0)
    top, left, height, width = _crop_boxes_from_uniforms(u, spec, images.shape[1], images.shape[2], 1.0)
    tiled = ops.tile(images, [num_views, 1, 1, 1]) if num_views > 1 else images
    out = resized_crops(tiled, top, left, height, width, u[:, col.flip] < spec.flip_probability, spec.image_size)
    if spec.color_distort:
        out = _color_distortion(out, u, spec, col)
    else:
        out = ops.clip(out, 0.0, 1.0)
    return _random_blur(out, u, spec, col) if spec.blur else out


def device_views(images, seed, spec: AugmentSpec, *, num_views: int = 2):
    """SimCLR training views of a batch, concatenated on the channel axis.

    The device counterpart of `host.pretrain_views` mapped over a batch
    (simclrv2 brightness, square outputs). View v of an image is the same
    whatever the batch around it (draws are keyed by seed, view and row).

    Args:
        images: uint8 `[B, H, W, C]`, C in {1, 3} (float input is taken as [0, 1]).
        seed: `keras.random.SeedGenerator` (advanced once per call), an int, or
            an integer `[2]` tensor; the same seed gives the same views on
            either backend.
        spec: The augmentation spec (`impl` must be 'simclrv2').
        num_views: Views per image, drawn independently.

    Returns:
        float32 `[B, S, S, 3 * num_views]` in [0, 1].
    """
    views = stacked_views(images, seed, spec, num_views=num_views)  # Checks the arguments first.
    size = spec.image_size
    views = ops.reshape(views, (num_views, -1, size, size, 3))
    return ops.reshape(ops.transpose(views, (1, 2, 3, 0, 4)), (-1, size, size, 3 * num_views))


def eval_views(images, image_size: int):
    """The evaluation view of every image of a batch: `host.eval_view` in `keras.ops` (no TensorFlow needed).

    The central crop (87.5% of the short side) where the spec takes one (above 32 px),
    then the bicubic resize to `image_size`, clipped to [0, 1]; images already of that
    size without a crop are only scaled, as on the host.

    Args:
        images: uint8 `[B, H, W, C]`, C in {1, 3}, static H and W.
        image_size: Output side S.

    Returns:
        float32 `[B, S, S, 3]` in [0, 1].
    """
    images = ops.convert_to_tensor(images)
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    crop = AugmentSpec(int(image_size)).eval_crop()
    if not crop and (height, width) == (image_size, image_size):
        out = ops.cast(images, "float32") * (1.0 / 255.0 if "int" in str(images.dtype) else 1.0)
        return ops.clip(out if channels == 3 else ops.tile(out, [1, 1, 1, 3]), 0.0, 1.0)
    if crop:  # A square crop of the short side (host._crop_shape, aspect 1).
        side = float(np.rint(EVAL_CROP_PROPORTION * min(height, width)))
        crop_height = crop_width = side
    else:
        crop_height, crop_width = float(height), float(width)
    top, left = float((height - int(crop_height) + 1) // 2), float((width - int(crop_width) + 1) // 2)
    batch = ops.shape(images)[0]

    def column(value):
        return ops.full((batch,), value, "float32")

    out = resized_crops(images, column(top), column(left), column(crop_height), column(crop_width),
                        ops.zeros((batch,), "bool"), int(image_size))
    return ops.clip(out, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="tf_simclr")
class DeviceAugment(keras.layers.Layer):
    """`stacked_views` as a layer whose SeedGenerator Keras threads through compiled steps.

    Call it on the uint8 batch inside the train step: under JAX the trainer's
    stateless step carries the generator's state, under TF it is a variable.
    Every replica advances the same seed state, so the replica id is folded into
    the key: replicas must not draw the same crops for their different images.

    Args:
        spec: The augmentation spec.
        num_views: Views per image.
        seed: Seed of the generator (None: random).
    """

    def __init__(self, spec: AugmentSpec, num_views: int = 2, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(spec, dict):  # From get_config.
            spec = AugmentSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        self.spec = spec
        self.num_views = num_views
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, replica_id=0):
        """`[num_views * B, S, S, 3]` views of uint8 `images [B, H, W, C]` (view-major)."""
        seed = ops.cast(self.seed_generator.next(), "int32")
        replica_id = ops.cast(replica_id, "int32")
        seed = seed + ops.stack([ops.zeros_like(replica_id), replica_id * 65599])
        return stacked_views(images, seed, self.spec, num_views=self.num_views)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.num_views
        return (batch, self.spec.image_size, self.spec.image_size, 3)

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "spec": dataclasses.asdict(self.spec), "num_views": self.num_views,
                "seed": self.seed}
