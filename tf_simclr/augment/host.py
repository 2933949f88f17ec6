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
  are skipped (see `host_color._run_plan`).

Speed matters because the input pipeline feeds every training step (see
`benchmarks/augment_benchmark.py`), so the hot path avoids work the reference
does: uint8 images are cropped and flipped *before* conversion to float, the
flip is a branch-free reverse, grayscale is one small matmul, and the whole
colour distortion of a view is one of 50 straight-line "plans" run by a single
`Case` op (`augment.host_color`) instead of nested `tf.cond`s. The price is a
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

import tensorflow as tf

from tf_simclr.augment.host_blur import gaussian_blur, random_blur  # noqa: F401  Part of this module's API.
from tf_simclr.augment.host_color import color_jitter, random_color_distortion, to_grayscale  # noqa: F401
from tf_simclr.augment.seeds import (  # noqa: F401
    BLUR_TAG, COLOR_TAG, CROP_TAG, FLIP_TAG, VIEW_TAG_BASE, as_seed, fold_seed, maybe_fold, random_apply, uniform)
from tf_simclr.augment.spec import EVAL_CROP_PROPORTION, AugmentSpec, check_spec


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(
            "height and width must be positive Python ints. "
            f"Received: height={height!r}, width={width!r}"
        )


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
        seed = as_seed(seed)
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
    check_spec(spec)
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
    return _flip_if(image, uniform([], seed) < p)


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
    check_spec(spec)
    size = spec.image_size
    image = tf.convert_to_tensor(image)
    if crop:
        box = sample_crop_box(tf.shape(image), spec, seed=maybe_fold(seed, CROP_TAG))
        image = _crop(image, *box)
    if flip:
        image = random_flip(image, spec.flip_probability, seed=maybe_fold(seed, FLIP_TAG))
    image = resize(image, size, size)
    if spec.color_distort if color_distort is None else color_distort:
        image = random_color_distortion(image, spec, clip_output=True, seed=maybe_fold(seed, COLOR_TAG))
    else:
        image = tf.clip_by_value(image, 0.0, 1.0)
    if spec.blur if blur is None else blur:
        image = random_blur(image, spec, seed=maybe_fold(seed, BLUR_TAG))
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
    views = [preprocess_for_train(image, spec, seed=maybe_fold(seed, VIEW_TAG_BASE + i)) for i in range(num_views)]
    return tf.concat(views, -1)
