"""SimCLR image augmentations as TensorFlow ops for `tf.data.Dataset.map` (the host implementation).

Each function works on ONE image `[H, W, C]`, eagerly or inside a traced
`tf.data` function, and draws what an `AugmentSpec` (`augment.spec`) says:
ranges, probabilities and order rules live there, shared with the on-device
implementation (`augment.device`). With the spec's defaults it is equal in
distribution to the reference's `tf2/data_util.py` (google-research/simclr),
except:

* Gaussian blur draws its sigma per image (the reference draws one per batch)
  and runs here in `tf.data`, after the other augmentations, instead of on the
  batch inside the model.
* Colour-jitter factor ranges are clamped to valid values (`AugmentSpec.jitter_ranges`).
* Rounding only: uint8 images are resized before scaling to [0, 1], the flip
  happens before the resize, and clips that can only remove rounding error
  are skipped (see `_run_plan`).

Speed matters because the input pipeline feeds every training step (see
`benchmarks/augment_benchmark.py`), so the hot path avoids work the reference
does: uint8 images are cropped and flipped *before* conversion to float, the
flip is a branch-free reverse, grayscale is one small matmul, and the whole
colour distortion of a view is one of 50 straight-line "plans" run by a single
`Case` op (see `_random_plan`) instead of nested `tf.cond`s. The price is a
one-off start-up cost: a new iterator instantiates the 50 branch functions
(about 0.2 s per view on 2 CPU cores).

Every random function takes an optional `seed`, a `[2]` integer tensor as
`tf.random.stateless_*` ops take. Without it the draws come from TF's
stateful generator (repeatable only through `tf.random.set_seed`); with it
only stateless ops run, each on its own sub-seed (`fold_seed` with a distinct
tag per op and per view), so the same seed gives the same view in any process,
in any order and at any parallelism (what `data.build_dataset(...,
deterministic=True)` relies on). Both ways draw from the same distribution.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Sequence

import tensorflow as tf

from tf_simclr.augment.spec import EVAL_CROP_PROPORTION, GRAY_WEIGHTS, AugmentSpec

_GRAY_MATRIX = [[w] * 3 for w in GRAY_WEIGHTS]  # Equal columns: 3 equal channels.
# Tags that derive the independent sub-seeds of one seed (any distinct ints work).
_CROP_TAG, _FLIP_TAG, _COLOR_TAG, _BLUR_TAG = 1, 2, 3, 4
_APPLY_TAG, _SIGMA_TAG = 5, 6
_VIEW_TAG_BASE = 100  # View i of `pretrain_views` uses tag 100 + i.


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(
            "height and width must be positive Python ints. "
            f"Received: height={height!r}, width={width!r}"
        )


def _check_spec(spec) -> AugmentSpec:
    if not isinstance(spec, AugmentSpec):
        raise TypeError(f"Expected an augment.AugmentSpec. Received: {type(spec).__name__}")
    return spec


def _as_seed(seed) -> tf.Tensor:
    """A stateless-op seed as int64 `[2]`, so int32 and int64 seeds give the same draws."""
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or not seed.shape.is_compatible_with([2]):
        raise ValueError(
            "seed must be an integer tensor of shape [2], as tf.random.stateless_* ops take "
            f"(or None for stateful draws). Received: dtype={seed.dtype.name}, shape={seed.shape}"
        )
    return tf.ensure_shape(tf.cast(seed, tf.int64), [2])


def fold_seed(seed, tag) -> tf.Tensor:
    """A new int64 `[2]` seed from `seed` and an integer `tag` (op, view or example index).

    Distinct tags give distinct seeds whose stateless draws are independent
    (`tf.random.experimental.stateless_fold_in`).
    """
    return tf.random.experimental.stateless_fold_in(_as_seed(seed), tf.cast(tag, tf.int64))


def _uniform(shape, seed, minval=0.0, maxval=1.0) -> tf.Tensor:
    """float32 uniforms: stateful when `seed` is None, else stateless from `seed`."""
    if seed is None:
        return tf.random.uniform(shape, minval, maxval)
    return tf.random.stateless_uniform(shape, _as_seed(seed), minval, maxval)


def _maybe_fold(seed, tag):
    return None if seed is None else fold_seed(seed, tag)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Repeats a single channel to three (dynamically when the count is unknown)."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    if channels is not None:
        raise ValueError(
            "Images must have 1 or 3 channels; drop alpha before augmenting. "
            f"Received: image.shape={image.shape}"
        )
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.ensure_shape(image, [None, None, 3])


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """Converts a uint8 or float image `[H, W, C]`, C in {1, 3}, to float32 RGB.

    Integer images are scaled to [0, 1] (uint8 by 1/255, as
    `tf.image.convert_image_dtype`); float images are assumed to be in [0, 1]
    already and are only cast.

    Args:
        image: Image tensor `[H, W, 1]` or `[H, W, 3]`.

    Returns:
        float32 tensor `[H, W, 3]`.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"Expected one image [H, W, C]. Received: image.shape={image.shape}")
    return _to_rgb(tf.image.convert_image_dtype(image, tf.float32))


def _resize_to_float(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Bicubic resize (as `tf.image.resize`) giving float32 in [0, 1] (may overshoot).

    Integer images are resized before scaling, which equals resizing the
    converted image up to rounding (resizing is linear) and spares converting
    the whole source image, as the reference does before cropping.
    """
    resized = tf.raw_ops.ResizeBicubic(
        images=image[tf.newaxis], size=[height, width], half_pixel_centers=True
    )[0]
    if image.dtype.is_integer:
        resized *= 1.0 / image.dtype.max
    return resized


def resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Bicubic resize to `height` x `width`, skipped when the static size already matches.

    Args:
        image: uint8 or float image `[H, W, C]`, C in {1, 3}.
        height: Output height.
        width: Output width.

    Returns:
        float32 `[height, width, 3]`, not clipped (bicubic can overshoot [0, 1]).
    """
    _check_size(height, width)
    image = tf.convert_to_tensor(image)
    if tuple(image.shape[:2]) == (height, width):
        return to_float_rgb(image)
    return _to_rgb(_resize_to_float(image, height, width))


def sample_crop_box(image_shape: tf.Tensor, spec: AugmentSpec, target_aspect_ratio: float = 1.0,
                    seed=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples an Inception-style crop box with the spec's area and aspect ranges.

    The aspect-ratio range is multiplied by the output's aspect ratio
    (width / height), so square outputs get crops in [3/4, 4/3]. As in the
    reference, the whole image is passed as the object box with
    `min_object_covered` (0.1), which makes the effective lower area bound
    max(0.1, min_crop_area); after `crop_attempts` failed attempts the whole
    image is used. The box comes from the stateless op, with `seed` or else a
    seed drawn by `tf.random.uniform`, so `tf.random.set_seed` makes it
    repeatable (the stateful op ignores the global seed and raises under
    `tf.config.experimental.enable_op_determinism`).

    Args:
        image_shape: int32 `[3]` shape `[H, W, C]` of the image to crop.
        spec: The augmentation spec (crop area, aspect ratio, attempts).
        target_aspect_ratio: Width / height of the resized output.
        seed: Optional `[2]` integer seed of the box (see the module docstring).

    Returns:
        `(begin, size)` int32 `[3]` tensors for `tf.slice`.
    """
    low, high = spec.aspect_ratio_range
    if seed is None:  # A stateful draw: follows tf.random.set_seed.
        seed = tf.random.uniform([2], 0, 2**31 - 1, tf.int32)
    else:
        seed = _as_seed(seed)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=spec.min_object_covered,
        aspect_ratio_range=(low * target_aspect_ratio, high * target_aspect_ratio),
        area_range=spec.crop_area_range,
        max_attempts=spec.crop_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def _crop(image: tf.Tensor, begin: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """`tf.slice` that keeps the static channel count (a dynamic size loses it)."""
    crop = tf.slice(image, begin, size)
    crop.set_shape([None, None, image.shape[-1]])
    return crop


def random_crop_with_resize(image: tf.Tensor, spec: AugmentSpec, seed=None) -> tf.Tensor:
    """Random resized crop (see `sample_crop_box`), bicubic resize to the spec's image size.

    Args:
        image: uint8 or float image `[H, W, C]`, C in {1, 3}.
        spec: The augmentation spec.
        seed: Optional `[2]` integer seed (see the module docstring).

    Returns:
        float32 `[S, S, 3]`, not clipped (bicubic can overshoot [0, 1]).
    """
    _check_spec(spec)
    image = tf.convert_to_tensor(image)
    begin, size = sample_crop_box(tf.shape(image), spec, seed=seed)
    return _to_rgb(_resize_to_float(_crop(image, begin, size), spec.image_size, spec.image_size))


def _flip_if(image: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Reverses the width axis when `flip` is true, without a tf.cond.

    An empty axis list makes the reverse a no-op, so a dynamic axis list of
    length 0 or 1 replaces a branch (cheaper inside tf.data).
    """
    return tf.reverse(image, tf.range(1, 1 + tf.cast(flip, tf.int32)))


def random_flip(image: tf.Tensor, p: float = 0.5, seed=None) -> tf.Tensor:
    """Flips an image `[H, W, C]` left-right with probability `p` (optional `[2]` seed)."""
    return _flip_if(image, _uniform([], seed) < p)


def random_apply(
    fn: Callable[[tf.Tensor], tf.Tensor], p: float, x: tf.Tensor, seed=None
) -> tf.Tensor:
    """Returns `fn(x)` with probability `p`, else `x`.

    `seed` (optional `[2]` integers) decides only whether `fn` runs; a random
    `fn` needs its own, different seed.
    """
    if p >= 1:
        return fn(x)
    if p <= 0:
        return x
    return tf.cond(_uniform([], seed) < p, lambda: fn(x), lambda: x)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma grayscale (the weights of `tf.image.rgb_to_grayscale`) in 3 equal channels.

    One `[H*W, 3] x [3, 3]` matmul whose columns are equal: several times
    faster than a reduction over the channel axis followed by a tile, and every
    output channel comes out of the same dot product.
    """
    image = tf.convert_to_tensor(image)
    gray = tf.reshape(image, [-1, 3]) @ tf.constant(_GRAY_MATRIX, image.dtype)
    return tf.reshape(gray, tf.shape(image))


def _jitter_factors(uniforms: tf.Tensor, spec: AugmentSpec) -> dict:
    """Brightness, contrast, saturation and hue parameters from 4 uniforms in [0, 1).

    The ranges are the spec's (`AugmentSpec.jitter_ranges`); an op whose range
    is empty (strength 0) maps to None.
    """
    ranges = spec.jitter_ranges()
    low = [lo for lo, _ in ranges]
    span = [hi - lo for lo, hi in ranges]
    values = tf.unstack(tf.constant(low) + tf.constant(span) * uniforms)
    return {name: (v if w else None) for name, v, w in zip("bcsh", values, span)}


def _color_op(name: str, image: tf.Tensor, factor: tf.Tensor, impl: str) -> tf.Tensor:
    if name == "b":  # simclrv2 brightness is multiplicative, simclrv1's additive.
        return image * factor if impl == "simclrv2" else image + factor
    if name == "c":
        return tf.raw_ops.AdjustContrastv2(images=image, contrast_factor=factor)
    if name == "s":
        return tf.raw_ops.AdjustSaturation(images=image, scale=factor)
    if name == "h":
        return tf.raw_ops.AdjustHue(images=image, delta=factor)
    return to_grayscale(image)


def _run_plan(image, uniforms, plan: tuple, spec: AugmentSpec, clip_output: bool):
    """Applies the colour ops named in `plan` ("b", "c", "s", "h", "g") in order.

    Clips like the reference (after each jitter op, not after grayscale),
    except where the clip can only remove rounding error: saturation, hue and
    disabled ops map [0, 1] into [0, 1], so they skip it once the image is known
    to be in range. `clip_output` guarantees [0, 1] at the end.
    """
    factors = _jitter_factors(uniforms, spec)
    in_range = clipped = False  # Bicubic resizing overshoots [0, 1].
    for name in plan:
        if name == "g" or factors[name] is not None:
            image, clipped = _color_op(name, image, factors.get(name), spec.impl), False
        preserves_range = name in "sh" or factors.get(name) is None
        if name != "g" and not (in_range and preserves_range):
            image, in_range, clipped = tf.clip_by_value(image, 0.0, 1.0), True, True
    if clip_output and not clipped:
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image


@functools.lru_cache(maxsize=None)
def _plan_functions(plans: tuple, spec: AugmentSpec, clip_output: bool) -> list:
    """One traced function per plan: the branches of a `Case` op.

    Traced once per process and spec, in `tf.init_scope` so that no device
    scope or control dependency of the first caller's graph sticks to them.
    """
    signature = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([4], tf.float32)]

    def traced(plan):
        def run(image, uniforms):
            return _run_plan(image, uniforms, plan, spec, clip_output)

        return tf.function(run, input_signature=signature, autograph=False).get_concrete_function()

    with tf.init_scope():
        return [traced(plan) for plan in plans]


def _plan_index(probabilities: Sequence[float], uniforms: tf.Tensor) -> tf.Tensor:
    """Maps uniforms in [0, 1) to plan indices drawn with `probabilities` (inverse CDF)."""
    cdf = list(itertools.accumulate(probabilities))[:-1] + [1.0]  # Exactly 1: index < len.
    return tf.searchsorted(tf.constant(cdf, tf.float32), uniforms, side="right")


def _random_plan(image, plans: tuple, probabilities: tuple, spec: AugmentSpec, clip_output: bool,
                 seed=None) -> tf.Tensor:
    """Runs one plan of `plans`, drawn with `probabilities`, on `image`.

    In a graph (tf.data) this is a `Case` op over traced functions, which
    runs only the drawn branch. `tf.cond` and `tf.switch_case` are lowered to
    switch/merge ops there, so every op of every untaken branch still costs
    scheduling time: 24 orders written that way were slower than the
    reference's nested conds. Eagerly the drawn plan simply runs.
    """
    _check_spec(spec)
    image = tf.convert_to_tensor(image, tf.float32)
    if image.shape.rank != 3 or image.shape[-1] not in (3, None):
        raise ValueError(
            f"Colour ops need an RGB image [H, W, 3]. Received: image.shape={image.shape}"
        )
    image = tf.ensure_shape(image, [None, None, 3]) if image.shape[-1] is None else image
    draws = _uniform([5], seed)  # The plan, then the 4 jitter factors.
    index = _plan_index(probabilities, draws[:1])[0]
    if tf.executing_eagerly():
        return _run_plan(image, draws[1:], plans[int(index)], spec, clip_output)
    branches = _plan_functions(plans, spec, clip_output)
    return tf.raw_ops.Case(branch_index=index, input=[image, draws[1:]], Tout=[tf.float32],
                           branches=branches, output_shapes=[image.shape])[0]


_ORDERS = tuple(itertools.permutations("bcsh"))  # The 24 jitter orders, equally likely.


def distortion_plans(spec: AugmentSpec) -> tuple[tuple, tuple]:
    """The 50 straight-line colour plans and their probabilities under `spec`.

    Jitter (with `jitter_probability`, one of the 24 orders) or not, then
    grayscale (with `grayscale_probability`) or not.
    """
    plans = tuple(order + gray for gray in ((), ("g",)) for order in _ORDERS + ((),))
    p_jitter, p_gray = spec.jitter_probability, spec.grayscale_probability
    probabilities = tuple(
        (p_jitter / len(_ORDERS) if "b" in plan else 1.0 - p_jitter) * (p_gray if "g" in plan else 1.0 - p_gray)
        for plan in plans
    )
    return plans, probabilities


def color_jitter(image: tf.Tensor, spec: AugmentSpec, seed=None) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue in a uniformly random order.

    The image is clipped to [0, 1] after each step as in the reference (see
    `_run_plan` for the clips that are skipped as no-ops).

    Args:
        image: float32 RGB image `[H, W, 3]`.
        spec: The augmentation spec (jitter ranges, impl).
        seed: Optional `[2]` integer seed (see the module docstring).

    Returns:
        float32 `[H, W, 3]` in [0, 1].
    """
    return _random_plan(image, _ORDERS, (1 / len(_ORDERS),) * len(_ORDERS), spec, clip_output=True, seed=seed)


def random_color_distortion(image: tf.Tensor, spec: AugmentSpec, *, clip_output: bool = False,
                            seed=None) -> tf.Tensor:
    """Colour jitter with the spec's probability (0.8), then grayscale with its probability (0.2).

    Equal in distribution to `random_apply(color_jitter, 0.8)` followed by
    `random_apply(to_grayscale, 0.2)`, drawn as one of 50 straight-line plans.

    Args:
        image: float32 RGB image `[H, W, 3]`.
        spec: The augmentation spec.
        clip_output: Clip the result to [0, 1] (else, as the reference, an
            image without jitter keeps the resize's overshoot).
        seed: Optional `[2]` integer seed (see the module docstring).

    Returns:
        float32 `[H, W, 3]`.
    """
    plans, probabilities = distortion_plans(spec)
    return _random_plan(image, plans, probabilities, spec, clip_output, seed=seed)


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
        sigma = _uniform([], _maybe_fold(seed, _SIGMA_TAG), *spec.blur_sigma_range)
        return tf.clip_by_value(gaussian_blur(x, sigma, kernel_size), 0.0, 1.0)

    return random_apply(blur, spec.blur_probability, image, seed=_maybe_fold(seed, _APPLY_TAG))


def _crop_shape(image_height, image_width, aspect_ratio: float, crop_proportion: float):
    """Largest centred box of the output's aspect ratio scaled by `crop_proportion`."""
    h = tf.cast(image_height, tf.float32)
    w = tf.cast(image_width, tf.float32)
    wider = aspect_ratio > w / h  # Output wider than the image: width limits the crop.
    crop_height = tf.where(wider, crop_proportion / aspect_ratio * w, crop_proportion * h)
    crop_width = tf.where(wider, crop_proportion * w, crop_proportion * aspect_ratio * h)
    return tf.cast(tf.math.rint(crop_height), tf.int32), tf.cast(tf.math.rint(crop_width), tf.int32)


def center_crop(
    image: tf.Tensor, height: int, width: int, crop_proportion: float = EVAL_CROP_PROPORTION
) -> tf.Tensor:
    """Central crop with the output's aspect ratio, then bicubic resize, as the reference.

    Args:
        image: uint8 or float image `[H, W, C]`, C in {1, 3}.
        height: Output height.
        width: Output width.
        crop_proportion: Fraction kept along the less-cropped side.

    Returns:
        float32 `[height, width, 3]`, not clipped.
    """
    _check_size(height, width)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    crop_height, crop_width = _crop_shape(shape[0], shape[1], width / height, crop_proportion)
    top = (shape[0] - crop_height + 1) // 2
    left = (shape[1] - crop_width + 1) // 2
    crop = _crop(image, tf.stack([top, left, 0]), tf.stack([crop_height, crop_width, -1]))
    return _to_rgb(_resize_to_float(crop, height, width))


def preprocess_for_train(
    image: tf.Tensor,
    spec: AugmentSpec,
    *,
    crop: bool = True,
    flip: bool = True,
    color_distort: bool | None = None,
    blur: bool | None = None,
    seed=None,
) -> tf.Tensor:
    """One SimCLR training view: crop, flip, colour distortion, optional blur, as the spec says.

    The flip is applied to the crop before resizing (flips commute with the
    resize and the crop distribution is mirror-symmetric) because the crop of a
    uint8 image is the cheapest tensor to flip.

    Args:
        image: uint8 or float image `[H, W, C]`, C in {1, 3}.
        spec: The augmentation spec.
        crop: Random resized crop; otherwise only resize to the output size.
        flip: Random left-right flip.
        color_distort: Colour jitter and grayscale. Defaults to `spec.color_distort`
            (strength > 0).
        blur: Random blur last. Defaults to `spec.blur`.
        seed: Optional `[2]` integer seed: each op draws from its own sub-seed
            of it, with stateless ops only (see the module docstring).

    Returns:
        float32 `[S, S, 3]` in [0, 1].
    """
    _check_spec(spec)
    size = spec.image_size
    image = tf.convert_to_tensor(image)
    if crop:
        box = sample_crop_box(tf.shape(image), spec, seed=_maybe_fold(seed, _CROP_TAG))
        image = _crop(image, *box)
    if flip:
        image = random_flip(image, spec.flip_probability, seed=_maybe_fold(seed, _FLIP_TAG))
    image = resize(image, size, size)
    if spec.color_distort if color_distort is None else color_distort:
        image = random_color_distortion(image, spec, clip_output=True, seed=_maybe_fold(seed, _COLOR_TAG))
    else:
        image = tf.clip_by_value(image, 0.0, 1.0)
    if spec.blur if blur is None else blur:
        image = random_blur(image, spec, seed=_maybe_fold(seed, _BLUR_TAG))
    return image


def finetune_view(image: tf.Tensor, spec: AugmentSpec, seed=None) -> tf.Tensor:
    """The fine-tuning augmentation: random resized crop and flip only, as the reference."""
    return preprocess_for_train(image, spec, color_distort=False, blur=False, seed=seed)


def preprocess_for_eval(image: tf.Tensor, height: int, width: int, *, crop: bool = True) -> tf.Tensor:
    """Evaluation preprocessing: central crop (87.5%) and resize, or just resize.

    The reference skips the central crop when image_size <= 32 (CIFAR), so
    callers pass `crop=False` there (`AugmentSpec.eval_crop`). Without a crop the
    reference requires the image to be `height` x `width` already; we resize
    instead (skipped when the static size matches).

    Args:
        image: uint8 or float image `[H, W, C]`, C in {1, 3}.
        height: Output height.
        width: Output width.
        crop: Take the central crop first.

    Returns:
        float32 `[height, width, 3]` in [0, 1].
    """
    image = center_crop(image, height, width) if crop else resize(image, height, width)
    return tf.clip_by_value(image, 0.0, 1.0)


def eval_view(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Evaluation preprocessing at `image_size`, with the central crop where the spec's rule takes it."""
    return preprocess_for_eval(image, image_size, image_size, crop=AugmentSpec(image_size).eval_crop())


def pretrain_views(image: tf.Tensor, spec: AugmentSpec, *, num_views: int = 2, seed=None) -> tf.Tensor:
    """Independent training views concatenated on the channel axis.

    This is the element format the trainer splits back into views.

    Args:
        image: uint8 or float image `[H, W, C]`, C in {1, 3}.
        spec: The augmentation spec.
        num_views: Number of views (2 for SimCLR).
        seed: Optional `[2]` integer seed; view i is
            `preprocess_for_train(image, spec, seed=fold_seed(seed, 100 + i))`,
            so the views draw independently.

    Returns:
        float32 `[S, S, 3 * num_views]` in [0, 1].
    """
    if not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views must be an int >= 1. Received: num_views={num_views!r}")
    views = [preprocess_for_train(image, spec, seed=_maybe_fold(seed, _VIEW_TAG_BASE + i)) for i in range(num_views)]
    return tf.concat(views, -1)
