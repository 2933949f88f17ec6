"""Tests for tf_simclr.augment: each op eagerly and inside tf.data, statistics over
many draws (tolerances of 4 binomial standard errors), and numbers against
independent NumPy / tf.image computations."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import augment as A

DRAWS = 2000


def _colourful(size=16, seed=0):
    """A float image in [0.1, 0.9] with strongly different channels everywhere."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.9, size=(size, size, 3)).astype(np.float32)
    base[..., 0] = np.linspace(0.1, 0.9, size, dtype=np.float32)[None, :]  # Asymmetric in width.
    base[..., 1] = 0.9 - base[..., 0]
    return base


def _uint8(height=24, width=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _in_dataset(fn, image, repeats=1, batch=None):
    """Runs `fn` inside a traced tf.data map (graph mode, unlike eager calls)."""
    ds = tf.data.Dataset.from_tensors(tf.convert_to_tensor(image)).repeat(repeats).map(fn)
    if batch:
        return np.concatenate([b.numpy() for b in ds.batch(batch)])
    return np.stack([e.numpy() for e in ds])


def _binomial_ok(count, n, p, sigmas=4.0):
    return abs(count / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# ---- Every augmentation, eagerly and in tf.data: shape, dtype, range --------------

AUGMENTATIONS = {
    "crop": (lambda x: A.random_crop_with_resize(x, 12, 10), (12, 10, 3), False),
    "flip": (lambda x: A.random_flip(A.to_float_rgb(x)), (24, 20, 3), True),
    "jitter": (lambda x: A.color_jitter(A.to_float_rgb(x), 1.0), (24, 20, 3), True),
    "jitter_v1": (
        lambda x: A.color_jitter(A.to_float_rgb(x), 0.5, impl="simclrv1"), (24, 20, 3), True
    ),
    "distortion": (lambda x: A.random_color_distortion(A.to_float_rgb(x), 1.0), (24, 20, 3), True),
    "gray": (lambda x: A.to_grayscale(A.to_float_rgb(x)), (24, 20, 3), True),
    "blur": (lambda x: A.random_blur(A.to_float_rgb(x), p=1.0), (24, 20, 3), True),
    "center": (lambda x: A.center_crop(x, 16, 16), (16, 16, 3), False),
    "train": (lambda x: A.preprocess_for_train(x, 16, 16, blur=True), (16, 16, 3), True),
    "train_plain": (
        lambda x: A.preprocess_for_train(x, 16, 16, color_distort=False), (16, 16, 3), True
    ),
    "eval": (lambda x: A.preprocess_for_eval(x, 16, 16), (16, 16, 3), True),
    "eval_nocrop": (lambda x: A.preprocess_for_eval(x, 24, 20, crop=False), (24, 20, 3), True),
    "views": (lambda x: A.pretrain_views(x, 16, 16, blur=True, num_views=3), (16, 16, 9), True),
}


@pytest.mark.parametrize("mode", ["eager", "dataset"])
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_dtype_range(name, mode):
    fn, shape, clipped = AUGMENTATIONS[name]
    image = _uint8()
    out = fn(tf.constant(image)).numpy() if mode == "eager" else _in_dataset(fn, image)[0]
    assert out.shape == shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    if clipped:
        assert out.min() >= 0.0 and out.max() <= 1.0
    else:  # Bicubic resizing may overshoot a little, as in the reference.
        assert out.min() >= -0.2 and out.max() <= 1.2


def test_grayscale_and_float_sources():
    gray = tf.constant(_uint8()[..., :1])
    out = A.preprocess_for_train(gray, 16, 16).numpy()
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    expected = gray.numpy()[..., 0] / 255.0
    np.testing.assert_allclose(A.to_float_rgb(gray).numpy()[..., 2], expected, atol=1e-7)
    floats = A.pretrain_views(tf.constant(_colourful()), 8, 8)
    assert floats.shape == (8, 8, 6)


def test_unknown_channel_count_in_dataset():
    """decode_image without `channels` gives images of unknown depth."""
    images = [_uint8(), _uint8()[..., :1]]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, None], tf.uint8)
    )
    out = list(ds.map(lambda x: A.pretrain_views(x, 16, 16)).as_numpy_iterator())
    assert [o.shape for o in out] == [(16, 16, 6)] * 2


def test_blur_with_unknown_width_in_a_graph():
    blur = tf.function(
        lambda x: A.gaussian_blur(x, 1.0, 3), input_signature=[tf.TensorSpec([8, None, 3])]
    )
    image = _colourful(8)
    np.testing.assert_allclose(blur(image), _numpy_blur(image, 1.0, 3), atol=1e-6)


def test_tiny_images_do_not_fail():
    tiny = tf.constant(_uint8(4, 3))
    assert A.pretrain_views(tiny, 8, 8, blur=True).shape == (8, 8, 6)
    one_pixel = tf.constant(_uint8(1, 1))
    out = _in_dataset(lambda x: A.pretrain_views(x, 2, 2, blur=True), one_pixel)
    assert out[0].shape == (2, 2, 6)
    image = tf.constant(_colourful(16))  # Height 16: kernel radius 0, blur is the identity.
    np.testing.assert_array_equal(A.random_blur(image, p=1.0), image)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: A.preprocess_for_train(_uint8(), 0, 16), "height"),
        (lambda: A.color_jitter(_colourful(), 1.0, impl="v3"), "impl"),
        (lambda: A.color_jitter(_colourful(), -1.0), "strength"),
        (lambda: A.to_float_rgb(np.zeros((4, 4, 4), np.uint8)), "channels"),
        (lambda: A.pretrain_views(_uint8(), 8, 8, num_views=0), "num_views"),
        (lambda: A.gaussian_blur(_colourful(), 1.0, 2.5), "kernel_size"),
        (lambda: A.random_color_distortion(_colourful()[..., :2]), r"\[H, W, 3\]"),
    ],
)
def test_errors_name_the_bad_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- Statistics over many draws -------------------------------------------------


@pytest.fixture(scope="module")
def distortion_draws():
    """2000 colour distortions of one colourful 16 px image, inside tf.data."""
    tf.random.set_seed(1)
    image = _colourful()
    return image, _in_dataset(lambda x: A.random_color_distortion(x, 1.0), image, DRAWS, batch=500)


def test_grayscale_share(distortion_draws):
    _, out = distortion_draws
    gray = np.all((out[..., 0] == out[..., 1]) & (out[..., 1] == out[..., 2]), axis=(1, 2))
    assert _binomial_ok(gray.sum(), DRAWS, 0.2), gray.mean()


def test_jitter_share(distortion_draws):
    """Unchanged images need 'no jitter' (0.2) and 'no grayscale' (0.8)."""
    image, out = distortion_draws
    unchanged = np.all(out == image, axis=(1, 2, 3))
    assert _binomial_ok(unchanged.sum(), DRAWS, 0.2 * 0.8), unchanged.mean()


def test_plan_draws_are_uniform_over_orders():
    """The inverse-CDF draw of the 50 colour plans: jitter 0.8 in 24 equally likely orders,
    grayscale 0.2, independently."""
    n = 48_000
    index = A._plan_index(A._DISTORTION_PROBS, tf.random.stateless_uniform([n], [0, 1])).numpy()
    plans = [A._DISTORTIONS[i] for i in index]
    jitter = np.array(["b" in plan for plan in plans])
    gray = np.array(["g" in plan for plan in plans])
    assert _binomial_ok(jitter.sum(), n, 0.8) and _binomial_ok(gray.sum(), n, 0.2)
    assert _binomial_ok((jitter & gray).sum(), n, 0.16)
    orders = [sum(plan[:4] == order for plan in plans) for order in itertools.permutations("bcsh")]
    expected = jitter.sum() / 24
    chi2 = sum((count - expected) ** 2 / expected for count in orders)
    assert chi2 < 60, orders  # 23 degrees of freedom: P(chi2 > 60) < 1e-4.
    edges = A._plan_index(A._DISTORTION_PROBS, tf.constant([0.0, 0.99999994])).numpy()
    assert edges[0] == 0 and edges[1] == len(A._DISTORTIONS) - 1


def test_flip_share():
    image = _colourful()
    tf.random.set_seed(3)
    out = _in_dataset(A.random_flip, image, DRAWS, batch=500)
    flipped = np.all(out == image[:, ::-1], axis=(1, 2, 3))
    same = np.all(out == image, axis=(1, 2, 3))
    assert np.all(flipped | same)
    assert _binomial_ok(flipped.sum(), DRAWS, 0.5), flipped.mean()
    np.testing.assert_array_equal(A._flip_if(image, True), image[:, ::-1])


@pytest.mark.parametrize("target_aspect", [1.0, 2.0])
def test_crop_box_area_and_aspect(target_aspect):
    height, width = 60, 80
    tf.random.set_seed(4)
    boxes = tf.data.Dataset.range(DRAWS).map(
        lambda _: tf.concat(A.sample_crop_box(tf.constant([height, width, 3]), target_aspect), 0)
    )
    boxes = np.stack(list(boxes.as_numpy_iterator()))
    top, left, h, w = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4]
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    area = h * w / (height * width)
    assert area.min() >= 0.08 and area.max() <= 1.0
    assert area.mean() > 0.3 and area.min() < 0.15  # Covers the range, not just the full image.
    aspect = w / h  # Allow one pixel of rounding on each side.
    low, high = 3 / 4 * target_aspect, 4 / 3 * target_aspect
    assert np.all((w + 1) / np.maximum(h - 1, 1) >= low) and np.all((w - 1) / (h + 1) <= high)
    full = (h == height) & (w == width)  # The fallback after 100 failed attempts.
    inside = (aspect >= low - 0.05) & (aspect <= high + 0.05)
    assert np.all(inside | full)


def test_crop_of_whole_image_is_a_bicubic_resize():
    image = _uint8(20, 20)
    out = A.random_crop_with_resize(image, 12, 12, area_range=(1.0, 1.0))
    expected = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [12, 12], "bicubic")
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_blur_share_and_sigma_per_image():
    tf.random.set_seed(5)
    image = _colourful(32)  # Kernel size 3: three taps.
    out = _in_dataset(lambda x: A.random_blur(x, p=0.5), image, DRAWS, batch=500)
    blurred = ~np.all(out == image, axis=(1, 2, 3))
    assert _binomial_ok(blurred.sum(), DRAWS, 0.5), blurred.mean()
    # Identical images in one batch must get different sigmas (the reference draws one per batch).
    ds = tf.data.Dataset.from_tensors(_colourful(64)).repeat(8)
    ds = ds.map(lambda x: A.random_blur(x, p=1.0))
    batch = next(iter(ds.batch(8))).numpy()
    assert len({row.tobytes() for row in batch}) >= 7


def test_brightness_factor_range_v2_and_v1():
    """Factors from uniforms at the ends and in between, against NumPy."""
    image = np.full((4, 4, 3), 0.5, np.float32)
    for strength in (0.5, 1.0, 1.5):
        b = 0.8 * strength
        for u in (0.0, 0.3, 0.999):
            uniforms = tf.constant([u, 0.0, 0.0, 0.0])
            v2 = A._run_plan(image, uniforms, ("b",), strength, "simclrv2", True).numpy()
            factor = max(1 - b, 0.0) + (1 + b - max(1 - b, 0.0)) * u
            np.testing.assert_allclose(v2, np.clip(image * factor, 0, 1), atol=1e-6)
            v1 = A._run_plan(image, uniforms, ("b",), strength, "simclrv1", True).numpy()
            np.testing.assert_allclose(v1, np.clip(image + (-b + 2 * b * u), 0, 1), atol=1e-6)


def test_brightness_factors_cover_their_range():
    tf.random.set_seed(6)
    factors = np.array(
        [float(A._jitter_factors(tf.random.uniform([4]), 1.0, "simclrv2")["b"]) for _ in range(300)]
    )
    assert factors.min() >= 0.2 and factors.max() <= 1.8
    assert factors.min() < 0.3 and factors.max() > 1.7


# ---- Numbers against independent computations ------------------------------------


def _numpy_blur(image, sigma, kernel_size):
    radius = kernel_size // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(image.astype(np.float64), ((0, 0), (radius, radius), (0, 0)))
    rows = sum(k[i] * padded[:, i : i + image.shape[1]] for i in range(len(k)))
    padded = np.pad(rows, ((radius, radius), (0, 0), (0, 0)))
    return sum(k[i] * padded[i : i + image.shape[0]] for i in range(len(k)))


@pytest.mark.parametrize("kernel_size, sigma", [(7, 1.3), (6, 0.7), (3, 2.0), (1, 1.0), (0, 1.0)])
def test_gaussian_blur_matches_numpy(kernel_size, sigma):
    image = np.random.default_rng(7).uniform(size=(20, 24, 3)).astype(np.float32)
    out = A.gaussian_blur(image, sigma, kernel_size).numpy()
    np.testing.assert_allclose(out, _numpy_blur(image, sigma, kernel_size), atol=1e-5)


def _numpy_center_box(h, w, out_h, out_w, proportion=0.875):
    aspect = out_w / out_h
    if aspect > w / h:
        ch, cw = np.rint(proportion / aspect * w), np.rint(proportion * w)
    else:
        ch, cw = np.rint(proportion * h), np.rint(proportion * aspect * h)
    ch, cw = int(ch), int(cw)
    return (h - ch + 1) // 2, (w - cw + 1) // 2, ch, cw


@pytest.mark.parametrize(
    "shape, out",
    [((40, 60), (16, 16)), ((60, 40), (16, 16)), ((33, 33), (8, 12)), ((30, 50), (20, 10))],
)
def test_center_crop_matches_numpy_box(shape, out):
    image = _uint8(*shape)
    top, left, ch, cw = _numpy_center_box(*shape, *out)
    crop = tf.image.convert_image_dtype(image[top : top + ch, left : left + cw], tf.float32)
    expected = tf.image.resize(crop, out, "bicubic").numpy()
    np.testing.assert_allclose(A.center_crop(image, *out).numpy(), expected, atol=1e-5)
    graph = _in_dataset(lambda x: A.center_crop(x, *out), image)[0]
    np.testing.assert_allclose(graph, expected, atol=1e-5)


def test_eval_without_crop_keeps_same_size_images():
    image = _uint8(16, 16)
    out = A.preprocess_for_eval(image, 16, 16, crop=False)
    np.testing.assert_allclose(out, image / 255.0, atol=1e-7)


def test_grayscale_equal_channels_and_luma():
    image = np.random.default_rng(8).uniform(size=(17, 19, 3)).astype(np.float32)
    for out in (A.to_grayscale(image).numpy(), _in_dataset(A.to_grayscale, image)[0]):
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
        np.testing.assert_allclose(out[..., 0], image @ np.array([0.2989, 0.587, 0.114]), atol=1e-6)


def _tf_image_jitter(image, order, factors):
    """The reference's composition with stock tf.image ops, clipping after every step."""
    ops = {
        "b": lambda x: x * factors["b"],
        "c": lambda x: tf.image.adjust_contrast(x, factors["c"]),
        "s": lambda x: tf.image.adjust_saturation(x, factors["s"]),
        "h": lambda x: tf.image.adjust_hue(x, factors["h"]),
    }
    for name in order:
        image = tf.clip_by_value(ops[name](image), 0.0, 1.0)
    return image


def test_every_jitter_order_matches_tf_image_composition():
    """Plans (eager and traced Case branches) against stock ops, incl. resize overshoot."""
    image = tf.image.resize(_uint8(9, 11) / 255, [16, 16], "bicubic")  # Overshoots [0, 1].
    uniforms = tf.constant([0.9, 0.2, 0.7, 0.1])
    factors = {k: float(v) for k, v in A._jitter_factors(uniforms, 1.0, "simclrv2").items()}
    branches = A._plan_functions(A._ORDERS, 1.0, "simclrv2", True)
    for order, branch in zip(A._ORDERS, branches):
        expected = _tf_image_jitter(image, order, factors).numpy()
        eager = A._run_plan(image, uniforms, order, 1.0, "simclrv2", True)
        np.testing.assert_allclose(eager, expected, atol=2e-6)
        np.testing.assert_allclose(branch(image, uniforms), expected, atol=2e-6)


def test_distortion_without_jitter_keeps_overshoot_then_grays():
    """Like the reference: grayscale of the unclipped image, clipped only at the end."""
    image = tf.image.resize(_uint8(9, 11) / 255, [16, 16], "bicubic")
    gray = A._run_plan(image, tf.zeros([4]), ("g",), 1.0, "simclrv2", False).numpy()
    assert gray.min() < 0 or gray.max() > 1
    luma = image.numpy() @ np.array([0.2989, 0.587, 0.114])
    np.testing.assert_allclose(gray[..., 0], luma, atol=1e-6)
    clipped = A._run_plan(image, tf.zeros([4]), ("g",), 1.0, "simclrv2", True).numpy()
    np.testing.assert_array_equal(clipped, np.clip(gray, 0, 1))


def test_zero_strength_jitter_only_clips():
    image = tf.image.resize(_uint8(9, 11) / 255, [16, 16], "bicubic")
    np.testing.assert_array_equal(A.color_jitter(image, 0.0), tf.clip_by_value(image, 0.0, 1.0))


def test_strong_jitter_is_clamped_not_rejected():
    out = A.color_jitter(_colourful(), 3.0).numpy()  # The reference raises above 1.25.
    assert out.min() >= 0 and out.max() <= 1
    factors = A._jitter_factors(tf.constant([0.0, 0.0, 0.0, 0.999]), 3.0, "simclrv2")
    assert float(factors["c"]) == 0.0 and float(factors["h"]) <= 0.5


def test_views_are_independent():
    tf.random.set_seed(9)
    views = A.pretrain_views(_uint8(32, 32), 16, 16, num_views=2).numpy()
    assert not np.array_equal(views[..., :3], views[..., 3:])


def test_random_apply_edges():
    x = tf.constant(2.0)
    assert float(A.random_apply(lambda v: v + 1, 1.0, x)) == 3.0
    assert float(A.random_apply(lambda v: v + 1, 0.0, x)) == 2.0


def test_global_seed_repeats_views():
    """The crop box follows tf.random.set_seed too (the stateful crop op would not)."""
    image = _uint8(32, 32)
    runs = []
    for _ in range(2):
        tf.random.set_seed(11)
        runs.append(A.pretrain_views(image, 16, 16, blur=True).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
