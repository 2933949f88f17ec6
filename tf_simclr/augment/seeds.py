"""Random draws of the host augmentations: stateful, or stateless from a `[2]` seed.

Every random function of `augment.host` takes an optional `seed`. Without it the
draws come from TF's stateful generator; with it only stateless ops run, each on
its own sub-seed (`fold_seed` with a distinct tag per op and per view), so the same
seed gives the same view in any process, order and parallelism.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

# Tags that derive the independent sub-seeds of one seed (any distinct ints work).
CROP_TAG, FLIP_TAG, COLOR_TAG, BLUR_TAG = 1, 2, 3, 4
APPLY_TAG, SIGMA_TAG = 5, 6
VIEW_TAG_BASE = 100  # View i of `host.pretrain_views` uses tag 100 + i.


def as_seed(seed) -> tf.Tensor:
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
    return tf.random.experimental.stateless_fold_in(as_seed(seed), tf.cast(tag, tf.int64))


def uniform(shape, seed, minval=0.0, maxval=1.0) -> tf.Tensor:
    """float32 uniforms: stateful when `seed` is None, else stateless from `seed`."""
    if seed is None:
        return tf.random.uniform(shape, minval, maxval)
    return tf.random.stateless_uniform(shape, as_seed(seed), minval, maxval)


def maybe_fold(seed, tag):
    """`fold_seed(seed, tag)`, or None (stateful draws) without a seed."""
    return None if seed is None else fold_seed(seed, tag)


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
    return tf.cond(uniform([], seed) < p, lambda: fn(x), lambda: x)
