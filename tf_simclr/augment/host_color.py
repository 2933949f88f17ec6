"""Colour distortion on the host (`tf.data`): jitter in random order, then grayscale, as 50 straight-line plans.

The whole colour distortion of a view is one of 50 plans (24 jitter orders with
and without grayscale, grayscale alone, nothing) run by a single `Case` op
(`_random_plan`) instead of nested `tf.cond`s. Ranges and probabilities are the
`AugmentSpec`'s, shared with `augment.device`.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import tensorflow as tf

from tf_simclr.augment.seeds import uniform
from tf_simclr.augment.spec import GRAY_WEIGHTS, AugmentSpec, check_spec

_GRAY_MATRIX = [[w] * 3 for w in GRAY_WEIGHTS]  # Equal columns: 3 equal channels.


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
    check_spec(spec)
    image = tf.convert_to_tensor(image, tf.float32)
    if image.shape.rank != 3 or image.shape[-1] not in (3, None):
        raise ValueError(
            f"Colour ops need an RGB image [H, W, 3]. Received: image.shape={image.shape}"
        )
    image = tf.ensure_shape(image, [None, None, 3]) if image.shape[-1] is None else image
    draws = uniform([5], seed)  # The plan, then the 4 jitter factors.
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
