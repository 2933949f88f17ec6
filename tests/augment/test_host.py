"""augment.host: each op eagerly and in tf.data, draw statistics (4 binomial std errors), numbers vs NumPy / tf.image."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tf_simclr.augment import host as A
from tf_simclr.augment import host_blur as B
from tf_simclr.augment import host_color as C
from tf_simclr.augment.spec import GRAY_WEIGHTS, AugmentSpec

DRAWS = 2000
LUMA = np.array(GRAY_WEIGHTS)


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


def _is_gray(views):
    """Per view `[N, H, W, 3]`: all three channels equal everywhere."""
    return np.all((views[..., 0] == views[..., 1]) & (views[..., 1] == views[..., 2]), axis=(1, 2))


S16 = AugmentSpec(16)
S16_BLUR = AugmentSpec(16, blur=True)

# ---- Every augmentation, eagerly and in tf.data: shape, dtype, range --------------

AUGMENTATIONS = {
    "crop": (lambda x: A.random_crop_with_resize(x, AugmentSpec(12)), (12, 12, 3), False),
    "flip": (lambda x: A.random_flip(A.to_float_rgb(x)), (24, 20, 3), True),
    "jitter": (lambda x: C.color_jitter(A.to_float_rgb(x), S16), (24, 20, 3), True),
    "jitter_v1": (
        lambda x: C.color_jitter(A.to_float_rgb(x), AugmentSpec(16, color_jitter_strength=0.5, impl="simclrv1")),
        (24, 20, 3), True,
    ),
    "distortion": (lambda x: C.random_color_distortion(A.to_float_rgb(x), S16), (24, 20, 3), True),
    "gray": (lambda x: C.to_grayscale(A.to_float_rgb(x)), (24, 20, 3), True),
    "blur": (lambda x: B.random_blur(A.to_float_rgb(x), AugmentSpec(24, blur_probability=1.0)), (24, 20, 3), True),
    "center": (lambda x: A.center_crop(x, 16, 16), (16, 16, 3), False),
    "train": (lambda x: A.preprocess_for_train(x, S16_BLUR), (16, 16, 3), True),
    "train_plain": (lambda x: A.preprocess_for_train(x, S16, color_distort=False), (16, 16, 3), True),
    "finetune": (lambda x: A.finetune_view(x, S16), (16, 16, 3), True),
    "eval": (lambda x: A.preprocess_for_eval(x, 16, 16), (16, 16, 3), True),
    "eval_view": (lambda x: A.eval_view(x, 40), (40, 40, 3), True),
    "eval_nocrop": (lambda x: A.preprocess_for_eval(x, 24, 20, crop=False), (24, 20, 3), True),
    "views": (lambda x: A.pretrain_views(x, S16_BLUR, num_views=3), (16, 16, 9), True),
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
    out = A.preprocess_for_train(gray, S16).numpy()
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    expected = gray.numpy()[..., 0] / 255.0
    np.testing.assert_allclose(A.to_float_rgb(gray).numpy()[..., 2], expected, atol=1e-7)
    floats = A.pretrain_views(tf.constant(_colourful()), AugmentSpec(8))
    assert floats.shape == (8, 8, 6)


def test_unknown_channel_count_in_dataset():
    """decode_image without `channels` gives images of unknown depth."""
    images = [_uint8(), _uint8()[..., :1]]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, None], tf.uint8)
    )
    out = list(ds.map(lambda x: A.pretrain_views(x, S16)).as_numpy_iterator())
    assert [o.shape for o in out] == [(16, 16, 6)] * 2


def test_blur_with_unknown_width_in_a_graph():
    blur = tf.function(
        lambda x: B.gaussian_blur(x, 1.0, 3), input_signature=[tf.TensorSpec([8, None, 3])]
    )
    image = _colourful(8)
    np.testing.assert_allclose(blur(image), _numpy_blur(image, 1.0, 3), atol=1e-6)


def test_tiny_images_do_not_fail():
    tiny = tf.constant(_uint8(4, 3))
    assert A.pretrain_views(tiny, AugmentSpec(8, blur=True)).shape == (8, 8, 6)
    one_pixel = tf.constant(_uint8(1, 1))
    out = _in_dataset(lambda x: A.pretrain_views(x, AugmentSpec(2, blur=True)), one_pixel)
    assert out[0].shape == (2, 2, 6)
    image = tf.constant(_colourful(16))  # Output size 16: kernel radius 0, blur is the identity.
    np.testing.assert_array_equal(B.random_blur(image, AugmentSpec(16, blur_probability=1.0)), image)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: A.preprocess_for_eval(_uint8(), 0, 16), "height"),
        (lambda: A.center_crop(_uint8(), 16, 0), "width"),
        (lambda: A.to_float_rgb(np.zeros((4, 4, 4), np.uint8)), "channels"),
        (lambda: A.to_float_rgb(np.zeros((4, 4), np.uint8)), r"\[H, W, C\]"),
        (lambda: A.pretrain_views(_uint8(), AugmentSpec(8), num_views=0), "num_views"),
        (lambda: B.gaussian_blur(_colourful(), 1.0, 2.5), "kernel_size"),
        (lambda: C.random_color_distortion(_colourful()[..., :2], S16), r"\[H, W, 3\]"),
    ],
)
def test_errors_name_the_bad_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: A.preprocess_for_train(_uint8(), 16),
        lambda: C.color_jitter(_colourful(), 1.0),
        lambda: A.random_crop_with_resize(_uint8(), {"image_size": 8}),
    ],
)
def test_old_positional_arguments_are_rejected_for_a_spec(call):
    """The old (height, width, strength) arguments must not be silently taken as a spec."""
    with pytest.raises(TypeError, match="AugmentSpec"):
        call()


# ---- Statistics over many draws -------------------------------------------------


@pytest.fixture(scope="module")
def distortion_draws():
    """2000 colour distortions of one colourful 16 px image, inside tf.data."""
    tf.random.set_seed(1)
    image = _colourful()
    return image, _in_dataset(lambda x: C.random_color_distortion(x, S16), image, DRAWS, batch=500)


def test_grayscale_share(distortion_draws):
    _, out = distortion_draws
    gray = _is_gray(out)
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
    plans, probabilities = C.distortion_plans(S16)
    assert len(plans) == 50 and math.isclose(sum(probabilities), 1.0, abs_tol=1e-9)
    index = C._plan_index(probabilities, tf.random.stateless_uniform([n], [0, 1])).numpy()
    drawn = [plans[i] for i in index]
    jitter = np.array(["b" in plan for plan in drawn])
    gray = np.array(["g" in plan for plan in drawn])
    assert _binomial_ok(jitter.sum(), n, 0.8) and _binomial_ok(gray.sum(), n, 0.2)
    assert _binomial_ok((jitter & gray).sum(), n, 0.16)
    orders = [sum(plan[:4] == order for plan in drawn) for order in itertools.permutations("bcsh")]
    expected = jitter.sum() / 24
    chi2 = sum((count - expected) ** 2 / expected for count in orders)
    assert chi2 < 60, orders  # 23 degrees of freedom: P(chi2 > 60) < 1e-4.
    edges = C._plan_index(probabilities, tf.constant([0.0, 0.99999994])).numpy()
    assert edges[0] == 0 and edges[1] == len(plans) - 1


def test_plan_probabilities_follow_the_spec():
    """Non-default probabilities in the spec change the plan weights (nothing hard-coded)."""
    spec = AugmentSpec(16, jitter_probability=0.5, grayscale_probability=0.4)
    plans, probabilities = C.distortion_plans(spec)
    p = dict(zip(plans, probabilities))
    assert p[()] == pytest.approx(0.5 * 0.6) and p[("g",)] == pytest.approx(0.5 * 0.4)
    assert p[tuple("bcsh")] == pytest.approx(0.5 / 24 * 0.6) and p[tuple("hscb") + ("g",)] == pytest.approx(0.5 / 24 * 0.4)
    assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-9)


def test_flip_share():
    image = _colourful()
    tf.random.set_seed(3)
    out = _in_dataset(A.random_flip, image, DRAWS, batch=500)
    flipped = np.all(out == image[:, ::-1], axis=(1, 2, 3))
    same = np.all(out == image, axis=(1, 2, 3))
    assert np.all(flipped | same)
    assert _binomial_ok(flipped.sum(), DRAWS, 0.5), flipped.mean()
    np.testing.assert_array_equal(A._flip_if(image, True), image[:, ::-1])
    np.testing.assert_array_equal(A._flip_if(image, False), image)


def _crop_boxes(spec, height, width, target_aspect=1.0, draws=DRAWS, seed=4):
    """`[draws, 6]` (begin, size) boxes of `sample_crop_box`, drawn in tf.data."""
    tf.random.set_seed(seed)
    boxes = tf.data.Dataset.range(draws).map(
        lambda _: tf.concat(A.sample_crop_box(tf.constant([height, width, 3]), spec, target_aspect), 0)
    )
    return np.stack(list(boxes.as_numpy_iterator()))


@pytest.mark.parametrize("target_aspect", [1.0, 2.0])
def test_crop_box_area_and_aspect(target_aspect):
    height, width = 60, 80
    boxes = _crop_boxes(S16, height, width, target_aspect)
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


def test_crop_box_honours_a_non_default_min_crop_area():
    """min_crop_area=0.5: no box below half the image, while the default draws many."""
    height, width = 60, 80
    default = _crop_boxes(S16, height, width, draws=800)
    large = _crop_boxes(AugmentSpec(16, min_crop_area=0.5), height, width, draws=800)
    area = lambda b: b[:, 3] * b[:, 4] / (height * width)  # noqa: E731
    assert area(large).min() >= 0.5 and area(large).max() <= 1.0
    assert area(large).min() < 0.55  # The range starts at 0.5, not at the whole image.
    assert np.mean(area(default) < 0.5) > 0.3
    capped = _crop_boxes(AugmentSpec(16, min_crop_area=0.2, max_crop_area=0.4), height, width, draws=400)
    full = (capped[:, 3] == height) & (capped[:, 4] == width)  # The fallback after 100 failed attempts.
    assert np.all(((area(capped) >= 0.2) & (area(capped) <= 0.4)) | full) and full.mean() < 0.05


def test_crop_of_whole_image_is_a_bicubic_resize():
    image = _uint8(20, 20)
    out = A.random_crop_with_resize(image, AugmentSpec(12, min_crop_area=1.0))
    expected = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [12, 12], "bicubic")
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_blur_share_and_sigma_per_image():
    tf.random.set_seed(5)
    image = _colourful(32)  # Kernel size 3: three taps.
    out = _in_dataset(lambda x: B.random_blur(x, AugmentSpec(32)), image, DRAWS, batch=500)
    blurred = ~np.all(out == image, axis=(1, 2, 3))
    assert _binomial_ok(blurred.sum(), DRAWS, 0.5), blurred.mean()
    # Identical images in one batch must get different sigmas (the reference draws one per batch).
    ds = tf.data.Dataset.from_tensors(_colourful(64)).repeat(8)
    ds = ds.map(lambda x: B.random_blur(x, AugmentSpec(64, blur_probability=1.0)))
    batch = next(iter(ds.batch(8))).numpy()
    assert len({row.tobytes() for row in batch}) >= 7


def test_brightness_factor_range_v2_and_v1():
    """Factors from uniforms at the ends and in between, against NumPy."""
    image = np.full((4, 4, 3), 0.5, np.float32)
    for strength in (0.5, 1.0, 1.5):
        b = 0.8 * strength
        v2_spec = AugmentSpec(16, color_jitter_strength=strength)
        v1_spec = AugmentSpec(16, color_jitter_strength=strength, impl="simclrv1")
        for u in (0.0, 0.3, 0.999):
            uniforms = tf.constant([u, 0.0, 0.0, 0.0])
            v2 = C._run_plan(image, uniforms, ("b",), v2_spec, True).numpy()
            factor = max(1 - b, 0.0) + (1 + b - max(1 - b, 0.0)) * u
            np.testing.assert_allclose(v2, np.clip(image * factor, 0, 1), atol=1e-6)
            v1 = C._run_plan(image, uniforms, ("b",), v1_spec, True).numpy()
            np.testing.assert_allclose(v1, np.clip(image + (-b + 2 * b * u), 0, 1), atol=1e-6)


def test_brightness_factors_cover_their_range():
    tf.random.set_seed(6)
    factors = np.array([float(C._jitter_factors(tf.random.uniform([4]), S16)["b"]) for _ in range(300)])
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
    out = B.gaussian_blur(image, sigma, kernel_size).numpy()
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


@pytest.mark.parametrize("size", [32, 40])
def test_eval_view_crops_centrally_only_above_32_pixels(size):
    image = _uint8(48, 48)
    top, left, ch, cw = _numpy_center_box(48, 48, size, size) if size > 32 else (0, 0, 48, 48)
    crop = image[top : top + ch, left : left + cw].astype(np.float32) / 255
    expected = np.clip(tf.image.resize(crop, [size, size], "bicubic").numpy(), 0, 1)
    np.testing.assert_allclose(A.eval_view(image, size), expected, atol=1e-5)


def test_grayscale_equal_channels_and_luma():
    image = np.random.default_rng(8).uniform(size=(17, 19, 3)).astype(np.float32)
    for out in (C.to_grayscale(image).numpy(), _in_dataset(C.to_grayscale, image)[0]):
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
        np.testing.assert_allclose(out[..., 0], image @ LUMA, atol=1e-6)
    np.testing.assert_allclose(C.to_grayscale(image)[..., :1], tf.image.rgb_to_grayscale(image), atol=1e-6)


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
    # The factors from the uniforms by the spec's ranges, computed here (not by the module).
    factors = {"b": 0.2 + 1.6 * 0.9, "c": 0.2 + 1.6 * 0.2, "s": 0.2 + 1.6 * 0.7, "h": -0.2 + 0.4 * 0.1}
    got = {k: float(v) for k, v in C._jitter_factors(uniforms, S16).items()}
    assert got == pytest.approx(factors, abs=1e-6)
    branches = C._plan_functions(C._ORDERS, S16, True)
    assert len(C._ORDERS) == 24
    for order, branch in zip(C._ORDERS, branches):
        expected = _tf_image_jitter(image, order, factors).numpy()
        eager = C._run_plan(image, uniforms, order, S16, True)
        np.testing.assert_allclose(eager, expected, atol=2e-6)
        np.testing.assert_allclose(branch(image, uniforms), expected, atol=2e-6)


def test_distortion_without_jitter_keeps_overshoot_then_grays():
    """Like the reference: grayscale of the unclipped image, clipped only at the end."""
    image = tf.image.resize(_uint8(9, 11) / 255, [16, 16], "bicubic")
    gray = C._run_plan(image, tf.zeros([4]), ("g",), S16, False).numpy()
    assert gray.min() < 0 or gray.max() > 1
    luma = image.numpy() @ LUMA
    np.testing.assert_allclose(gray[..., 0], luma, atol=1e-6)
    clipped = C._run_plan(image, tf.zeros([4]), ("g",), S16, True).numpy()
    np.testing.assert_array_equal(clipped, np.clip(gray, 0, 1))


def test_zero_strength_jitter_only_clips():
    image = tf.image.resize(_uint8(9, 11) / 255, [16, 16], "bicubic")
    spec = AugmentSpec(16, color_jitter_strength=0.0)
    np.testing.assert_array_equal(C.color_jitter(image, spec), tf.clip_by_value(image, 0.0, 1.0))


def test_strong_jitter_is_clamped_not_rejected():
    spec = AugmentSpec(16, color_jitter_strength=3.0)
    out = C.color_jitter(_colourful(), spec).numpy()  # The reference raises above 1.25.
    assert out.min() >= 0 and out.max() <= 1
    factors = C._jitter_factors(tf.constant([0.0, 0.0, 0.0, 0.999]), spec)
    assert float(factors["c"]) == 0.0 and float(factors["h"]) <= 0.5


# ---- color_jitter_strength=0: no colour distortion at all (grayscale included) ---------


def _seeded_views(image, spec, n, **kwargs):
    """`preprocess_for_train(image, spec, seed=[9, i])` for i < n, inside tf.data."""
    ds = tf.data.Dataset.range(n).map(
        lambda i: A.preprocess_for_train(image, spec, seed=tf.stack([tf.constant(9, tf.int64), i]), **kwargs))
    return np.concatenate(list(ds.batch(100).as_numpy_iterator()))


def test_strength_zero_views_are_never_gray_or_jittered():
    """As the reference's `if color_jitter_strength > 0`: grayscale goes with the jitter."""
    image = (_colourful(24) * 255).astype(np.uint8)
    n = 400
    off = _seeded_views(image, AugmentSpec(16, color_jitter_strength=0.0, blur=False), n)
    on = _seeded_views(image, AugmentSpec(16, color_jitter_strength=1.0, blur=False), n)
    assert not _is_gray(off).any()
    assert _binomial_ok(_is_gray(on).sum(), n, 0.2)  # The check sees grayscale when it is on.
    # Same seeds, no colour step: exactly crop + flip + resize (the fine-tuning view).
    plain = _seeded_views(image, AugmentSpec(16, blur=False), n, color_distort=False)
    np.testing.assert_array_equal(off, plain)
    changed = np.abs(on - plain).max(axis=(1, 2, 3)) > 1e-6
    assert _binomial_ok(changed.sum(), n, 1 - 0.2 * 0.8)  # Strength 1: jitter or grayscale change 84%.


def test_strength_zero_view_equals_the_crop_resized_by_tf_image():
    """Independent path: the view is tf.image's bicubic resize of the seeded crop box, flipped or not."""
    image = _uint8(30, 26, seed=3)
    spec = AugmentSpec(16, color_jitter_strength=0.0, blur=False)
    for i in range(12):
        seed = tf.constant([5, i], tf.int64)
        view = A.preprocess_for_train(image, spec, seed=seed).numpy()
        begin, size = (t.numpy() for t in A.sample_crop_box(tf.shape(image), spec, seed=A.fold_seed(seed, A.CROP_TAG)))
        crop = image[begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]].astype(np.float32) / 255
        resized = np.clip(tf.image.resize(crop, [16, 16], "bicubic").numpy(), 0, 1)
        flipped = resized[:, ::-1]
        error = min(np.abs(view - resized).max(), np.abs(view - flipped).max())
        assert error < 1e-5, (i, error)


def test_views_are_independent():
    tf.random.set_seed(9)
    views = A.pretrain_views(_uint8(32, 32), S16, num_views=2).numpy()
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
        runs.append(A.pretrain_views(image, S16_BLUR).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_finetune_view_is_crop_and_flip_only():
    """Fine-tuning: same seed gives the view of `preprocess_for_train` without colour and blur."""
    image = (_colourful(24) * 255).astype(np.uint8)
    seed = tf.constant([2, 3], tf.int64)
    view = A.finetune_view(image, S16_BLUR, seed=seed)
    np.testing.assert_array_equal(view, A.preprocess_for_train(image, S16, color_distort=False, blur=False, seed=seed))
    # Over many seeds: never gray (a pretraining spec's grayscale is not applied).
    views = np.stack([A.finetune_view(image, S16_BLUR, seed=[4, i]).numpy() for i in range(40)])
    assert not _is_gray(views).any()


def test_seeded_and_unseeded_crop_areas_agree_for_min_crop_area():
    """Both ways of drawing a box (stateless seed or the global seed) honour the spec's area range."""
    spec = AugmentSpec(16, min_crop_area=0.4)
    shape = tf.constant([40, 40, 3])
    seeded = np.array([np.prod(A.sample_crop_box(shape, spec, seed=[1, i])[1].numpy()[:2]) for i in range(300)])
    unseeded = _crop_boxes(spec, 40, 40, draws=300)
    unseeded = unseeded[:, 3] * unseeded[:, 4]
    assert seeded.min() >= 0.4 * 1600 and unseeded.min() >= 0.4 * 1600
    assert stats.ks_2samp(seeded, unseeded).pvalue > 1e-3
