"""augment.device (batched keras.ops) against tf.image ops and the host pipeline's draws, and under JAX's jit.

Exact pieces (crop resize, colour ops, blur) are compared with TensorFlow's own
image ops; random pieces (crop boxes, flip/grayscale/blur shares, image
statistics) with the host pipeline's draws; one subprocess runs the same code
under JAX's jit and must reproduce the TensorFlow views for the same seed.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tf_simclr.augment import device as da
from tf_simclr.augment import device_color as dc
from tf_simclr.augment import host
from tf_simclr.augment.spec import AugmentSpec

SOURCE, SIZE = 32, 24
SPEC = AugmentSpec(SIZE)


def _colour_gradient(batch, height=SOURCE, width=SOURCE):
    """uint8 images whose brightness rises left to right at every row, with chroma everywhere."""
    ramp = np.linspace(0.2, 0.9, width, dtype=np.float32)[None, :, None]
    image = ramp * np.array([1.0, 0.55, 0.3], np.float32)
    image = np.broadcast_to(image, (height, width, 3))
    return np.repeat(np.round(image * 255).astype(np.uint8)[None], batch, axis=0)


def _smooth_image(seed=0, size=SOURCE):
    """A smooth random colour field: natural-looking enough for mean/contrast statistics."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (1, 4, 4, 3)).astype(np.float32)
    image = tf.image.resize(coarse, [size, size], "bilinear")[0].numpy()
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _host_boxes(spec, height, width, n, seed=11):
    """`[n, 4]` (top, left, height, width) boxes from `host.sample_crop_box` with seeds [seed, i]."""
    return np.array([
        np.concatenate([b[:2], s[:2]]) for b, s in (
            (x.numpy() for x in host.sample_crop_box(tf.constant([height, width, 3]), spec, seed=[seed, i]))
            for i in range(n))
    ], np.float32)


def _is_gray(views):
    return np.abs(views - views[..., :1]).max(axis=(1, 2, 3)) < 1e-6


def test_crop_boxes_follow_host_distribution():
    height, width, n = 32, 48, 400  # A wide image also exercises the width limit.
    top, left, h, w = (np.asarray(t) for t in da.sample_crop_boxes([3, 9], n, height, width, SPEC))
    assert np.all(h * w >= 0.1 * height * width) and np.all(h * w <= height * width)
    assert np.all(top >= 0) and np.all(top + h <= height)
    assert np.all(left >= 0) and np.all(left + w <= width)
    assert np.all(h == np.round(h)) and np.all(w == np.round(w))

    ht, hl, hh, hw = _host_boxes(SPEC, height, width, n).T
    assert stats.ks_2samp(h * w, hh * hw).pvalue > 0.001
    assert stats.ks_2samp(w / h, hw / hh).pvalue > 0.001
    # Offsets: uniform over the free room (as fractions of it).
    room, host_room = np.maximum(height - h, 1), np.maximum(height - hh, 1)
    assert stats.ks_2samp(top / room, ht / host_room).pvalue > 0.001
    left_share = np.mean(left / np.maximum(width - w, 1))
    assert abs(left_share - np.mean(hl / np.maximum(width - hw, 1))) < 0.08


@pytest.mark.parametrize("min_crop_area, max_crop_area", [(0.5, 1.0), (0.2, 0.4)])
def test_crop_area_range_comes_from_the_spec_on_host_and_device(min_crop_area, max_crop_area):
    """A non-default min_crop_area (and max) bounds host and device boxes alike, with one area distribution."""
    height, width, n = 32, 40, 500
    spec = AugmentSpec(SIZE, min_crop_area=min_crop_area, max_crop_area=max_crop_area)
    _, _, h, w = (np.asarray(t) for t in da.sample_crop_boxes([4, 4], n, height, width, spec))
    _, _, hh, hw = _host_boxes(spec, height, width, n, seed=12).T
    pixels = height * width
    for area in (h * w, hh * hw):
        full = area == pixels  # The fallback after `crop_attempts` failures (rare here).
        inside = (area >= min_crop_area * pixels) & (area <= max_crop_area * pixels)
        assert np.all(inside | full) and full.mean() < 0.05
        assert np.quantile(area[~full], 0.05) < (min_crop_area + 0.1) * pixels  # Draws reach the low end.
    assert stats.ks_2samp(h * w, hh * hw).pvalue > 0.001
    default_h, default_w = (np.asarray(t) for t in da.sample_crop_boxes([4, 4], n, height, width, SPEC)[2:])
    assert np.mean(default_h * default_w < min_crop_area * pixels) > 0.1  # The spec, not a constant, decides.


def test_stacked_views_use_the_specs_crop_area():
    """Through the whole view: with min_crop_area=1 every view is the full image resized (only flips vary)."""
    images = _colour_gradient(6, 20, 20)
    spec = AugmentSpec(16, min_crop_area=1.0, color_jitter_strength=0.0, blur=False)
    views = np.asarray(da.stacked_views(images, [2, 5], spec))
    whole = np.clip(tf.image.resize(images[0].astype(np.float32) / 255, [16, 16], "bicubic").numpy(), 0, 1)
    for view in views:
        error = min(np.abs(view - whole).max(), np.abs(view - whole[:, ::-1]).max())
        assert error < 3e-3


def test_resized_crops_equal_tf_bicubic_resize_of_the_crop():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 20, 28, 3), dtype=np.uint8)
    top, left, h, w = (np.array(t) for t in da.sample_crop_boxes([5, 5], 6, 20, 28, SPEC))
    h[0], w[0], top[0], left[0] = 20, 28, 0, 0  # The whole image: a plain resize.
    flips = np.array([False, True, False, True, True, False])
    got = np.asarray(da.resized_crops(images, top, left, h, w, flips, 16))
    for i in range(6):
        crop = images[i, int(top[i]):int(top[i] + h[i]), int(left[i]):int(left[i] + w[i])]
        want = tf.image.resize(crop.astype(np.float32), [16, 16], "bicubic").numpy() / 255
        want = want[:, ::-1] if flips[i] else want
        np.testing.assert_allclose(got[i], want, atol=3e-3)


def test_colour_ops_equal_tf_image_ops():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (5, 7, 9, 3)).astype(np.float32)
    images[0, :3] = 0.5  # Gray pixels: no chroma, hue undefined.
    factors = np.array([0.2, 0.7, 1.0, 1.5, 1.8], np.float32)
    deltas = np.array([-0.2, -0.05, 0.0, 0.11, 0.2], np.float32)
    checks = [
        (dc.adjust_brightness, factors, lambda x, f: x * f),
        (dc.adjust_contrast, factors, tf.image.adjust_contrast),
        (dc.adjust_saturation, factors, tf.image.adjust_saturation),
        (dc.adjust_hue, deltas, tf.image.adjust_hue),
    ]
    for fn, params, reference in checks:
        got = np.asarray(fn(images, params))
        want = np.stack([np.asarray(reference(images[i], params[i])) for i in range(5)])
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=fn.__name__)
    want = np.stack([np.asarray(tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))) for x in images])
    np.testing.assert_allclose(np.asarray(dc.to_grayscale(images)), want, atol=1e-6)
    want = np.stack([np.asarray(host.to_grayscale(tf.constant(x))) for x in images])
    np.testing.assert_allclose(np.asarray(dc.to_grayscale(images)), want, atol=1e-6)


def test_colour_jitter_applies_each_images_own_order():
    """Each image gets the 4 ops in the order of its sorted uniforms, clipped after each."""
    rng = np.random.default_rng(4)
    images = rng.uniform(-0.05, 1.05, (4, 6, 5, 3)).astype(np.float32)  # Resize overshoot too.
    images = np.clip(images, 0, 1)
    col = da._Columns(SPEC.crop_attempts)
    u = np.zeros((4, col.per_view), np.float32)
    u[:, col.factors:col.factors + 4] = rng.uniform(0, 1, (4, 4))
    orders = [rng.permutation(4) for _ in range(4)]
    for i, order in enumerate(orders):  # Uniforms that sort into `order`.
        u[i, col.order + order] = np.arange(4) / 4 + 0.1
    got = np.asarray(da._color_jitter(images, u, SPEC, col))
    tf_ops = (lambda x, f: x * f, tf.image.adjust_contrast, tf.image.adjust_saturation,
              tf.image.adjust_hue)
    for i, order in enumerate(orders):
        f = u[i, col.factors:col.factors + 4]
        factors = (0.2 + 1.6 * f[0], 0.2 + 1.6 * f[1], 0.2 + 1.6 * f[2], -0.2 + 0.4 * f[3])
        want = tf.constant(images[i])
        for op in order:
            want = tf.clip_by_value(tf_ops[op](want, factors[op]), 0.0, 1.0)
        np.testing.assert_allclose(got[i], want.numpy(), atol=3e-5, err_msg=str(order))


def test_column_layout_gives_every_draw_its_own_column():
    col = da._Columns(100)
    singles = [col.top, col.left, col.flip, col.jitter, col.gray, col.blur, col.sigma]
    spans = [range(col.aspect, col.aspect + 100), range(col.height, col.height + 100),
             range(col.factors, col.factors + 4), range(col.order, col.order + 4)]
    used = [c for span in spans for c in span] + singles
    assert sorted(used) == list(range(col.per_view)) and col.per_view == 2 * 100 + 15
    assert da._Columns(3).per_view == 2 * 3 + 15  # Follows spec.crop_attempts.


@pytest.mark.parametrize("kernel_size", [4, 7])  # Radius 2 (host: shifts) and 3 (host: conv).
def test_gaussian_blur_equals_host_blur(kernel_size):
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (3, 12, 10, 3)).astype(np.float32)
    sigmas = np.array([0.1, 0.9, 2.0], np.float32)
    got = np.asarray(da.gaussian_blur(images, sigmas, kernel_size))
    for i in range(3):
        want = host.gaussian_blur(images[i], sigmas[i], kernel_size).numpy()
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_flip_grayscale_and_blur_shares():
    n = 512
    images = _colour_gradient(n)
    views = np.asarray(da.device_views(images, [7, 1], AugmentSpec(SIZE, blur=True)))
    unblurred = np.asarray(da.device_views(images, [7, 1], AugmentSpec(SIZE, blur=False)))
    assert views.shape == (n, SIZE, SIZE, 6) and views.min() >= 0 and views.max() <= 1
    views = np.concatenate([views[..., :3], views[..., 3:]])  # 2n single views.
    unblurred = np.concatenate([unblurred[..., :3], unblurred[..., 3:]])

    brightness = views.mean(axis=(1, 3))  # [2n, width]
    slope = brightness[:, SIZE // 2:].mean(1) - brightness[:, :SIZE // 2].mean(1)
    decided = np.abs(slope) > 1e-4  # Crops always keep part of the ramp.
    assert decided.mean() > 0.97
    flipped = slope[decided] < 0
    assert abs(flipped.mean() - 0.5) < 0.07
    # The two views of an image flip independently.
    both = decided[:n] & decided[n:]
    assert abs(np.mean((slope[:n] < 0)[both] == (slope[n:] < 0)[both]) - 0.5) < 0.08

    gray = _is_gray(views)
    assert abs(gray.mean() - 0.2) < 0.05

    # Sigmas near 0.1 change a view by less than float noise (as on the host): the
    # visible share is 0.5 * P(sigma > ~0.2) ~ 0.47.
    changed = np.abs(views - unblurred).max(axis=(1, 2, 3)) > 1e-5
    assert 0.40 < changed.mean() < 0.56
    # Without blur nothing else in the view changes: the same draws are used.
    np.testing.assert_allclose(views[~changed], unblurred[~changed], atol=1e-5)


def test_strength_zero_disables_jitter_and_grayscale_on_device():
    """color_jitter_strength=0: no view is gray, and each equals tf.image's resize of its crop, flipped or not."""
    n = 256
    images = _colour_gradient(n)
    off = AugmentSpec(SIZE, color_jitter_strength=0.0, blur=False)
    views = np.asarray(da.stacked_views(images, [6, 2], off))  # [2n, S, S, 3]
    assert not _is_gray(views).any()
    on = np.asarray(da.stacked_views(images, [6, 2], AugmentSpec(SIZE, blur=False)))
    assert abs(_is_gray(on).mean() - 0.2) < 0.05  # The same check sees grayscale at strength 1.
    # Independently of the device resize: crop each box with NumPy, resize with tf.image.
    col = da._Columns(off.crop_attempts)
    for v in range(2):
        top, left, h, w = (np.asarray(t) for t in da.sample_crop_boxes([6, 2], n, SOURCE, SOURCE, off, view=v))
        for i in range(0, n, 16):
            crop = images[i, int(top[i]):int(top[i] + h[i]), int(left[i]):int(left[i] + w[i])]
            want = np.clip(tf.image.resize(crop.astype(np.float32) / 255, [SIZE, SIZE], "bicubic").numpy(), 0, 1)
            got = views[v * n + i]
            assert min(np.abs(got - want).max(), np.abs(got - want[:, ::-1]).max()) < 3e-3, (v, i)
    # Flips still happen: the flip column decides, about half of the views.
    flips = np.asarray(da.hashed_uniforms(da.seed_key([6, 2]), n, col.flip, 1))[:, 0] < off.flip_probability
    assert 0.4 < flips.mean() < 0.6


def _host_views(image, n, spec):
    dataset = tf.data.Dataset.range(n).map(
        lambda i: host.preprocess_for_train(image, spec, seed=tf.stack([tf.constant(17, tf.int64), i])))
    return np.stack(list(dataset.batch(n).as_numpy_iterator())[0])


def _summary(views):
    """Per-view mean, contrast (std), colourfulness (chroma) and blur-sensitive gradient energy."""
    chroma = views.max(-1) - views.min(-1)
    return {
        "mean": views.mean(axis=(1, 2, 3)),
        "std": views.std(axis=(1, 2, 3)),
        "chroma": chroma.mean(axis=(1, 2)),
        "grad": np.abs(np.diff(views, axis=2)).mean(axis=(1, 2, 3)),
    }


def test_image_statistics_match_host_pipeline():
    n = 400
    image = _smooth_image()
    spec = AugmentSpec(SIZE, blur=True)
    device = np.asarray(da.device_views(np.repeat(image[None], n, 0), [4, 2], spec, num_views=1))
    theirs_views = _host_views(image, n, spec)
    assert device.min() >= 0 and device.max() <= 1
    ours, theirs = _summary(device), _summary(theirs_views)
    for name in ours:
        mean_gap = abs(ours[name].mean() - theirs[name].mean())
        assert mean_gap < 0.1 * theirs[name].mean() + 0.01, (name, mean_gap)
        assert stats.ks_2samp(ours[name], theirs[name]).pvalue > 1e-3, name


def test_device_views_are_stacked_views_regrouped_on_channels():
    images = _colour_gradient(3)
    stacked = np.asarray(da.stacked_views(images, [1, 2], SPEC))  # Row v * B + i: view v of image i.
    on_channels = np.asarray(da.device_views(images, [1, 2], SPEC))
    assert stacked.shape == (6, SIZE, SIZE, 3) and on_channels.shape == (3, SIZE, SIZE, 6)
    np.testing.assert_array_equal(on_channels[..., :3], stacked[:3])
    np.testing.assert_array_equal(on_channels[..., 3:], stacked[3:])


def test_seeds_layer_and_xla_tf():
    images = _colour_gradient(4)
    first = np.asarray(da.device_views(images, [1, 2], SPEC))
    views = lambda x, seed: np.asarray(da.device_views(x, seed, SPEC))  # noqa: E731
    np.testing.assert_array_equal(first, views(images, [1, 2]))
    assert np.abs(first - views(images, [1, 3])).max() > 0.05
    # Views of one image do not depend on the rest of the batch.
    np.testing.assert_allclose(first[:2], views(images[:2], [1, 2]), atol=1e-6)

    compiled = tf.function(lambda x, s: da.device_views(x, s, SPEC), jit_compile=True)
    np.testing.assert_allclose(compiled(images, tf.constant([1, 2])).numpy(), first, atol=1e-4)

    layer = da.DeviceAugment(SPEC, seed=5)
    a, b = layer(images), layer(images)
    assert a.shape == (8, SIZE, SIZE, 3)  # Stacked views: [2B, S, S, 3].
    assert np.abs(a.numpy() - b.numpy()).max() > 0.05  # The seed generator advances per call.
    assert layer.compute_output_shape((4, SOURCE, SOURCE, 3)) == (8, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="static H and W"):
        da.device_views(images[0], [1, 2], SPEC)
    with pytest.raises(TypeError, match="AugmentSpec"):
        da.device_views(images, [1, 2], SIZE)
    with pytest.raises(ValueError, match="num_views"):
        da.stacked_views(images, [1, 2], SPEC, num_views=0)
    with pytest.raises(ValueError, match="impl='simclrv1'"):  # Additive brightness is host only.
        da.device_views(images, [1, 2], AugmentSpec(SIZE, impl="simclrv1"))


def test_layer_folds_the_replica_id_into_the_seed():
    """Replicas share the seed state but must draw different views of their images."""
    images = _colour_gradient(2)
    a = da.DeviceAugment(SPEC, seed=3)
    b = da.DeviceAugment(SPEC, seed=3)
    np.testing.assert_array_equal(a(images).numpy(), b(images).numpy())  # Same seed, same views.
    assert np.abs(a(images, replica_id=0).numpy() - b(images, replica_id=1).numpy()).max() > 0.05


def test_layer_config_round_trip_keeps_the_spec():
    spec = AugmentSpec(SIZE, color_jitter_strength=0.5, blur=False, min_crop_area=0.3)
    layer = da.DeviceAugment(spec, num_views=3, seed=9, name="augment")
    again = da.DeviceAugment.from_config(json.loads(json.dumps(layer.get_config())))  # As saved: tuples -> lists.
    assert again.spec == spec and again.num_views == 3 and again.seed == 9
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, da.DeviceAugment) and restored.spec == spec


def test_seed_key_accepts_generators_ints_and_pairs():
    np.testing.assert_array_equal(np.asarray(da.seed_key(7)), [7, 0])
    np.testing.assert_array_equal(np.asarray(da.seed_key([3, 4])), [3, 4])
    generator = keras.random.SeedGenerator(1)
    first, second = np.asarray(da.seed_key(generator)), np.asarray(da.seed_key(generator))
    assert not np.array_equal(first, second)  # Advanced once per call.
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        da.seed_key([1, 2, 3])
    u = np.asarray(da.hashed_uniforms(da.seed_key([1, 1]), 500, 0, 8))
    assert u.shape == (500, 8) and u.min() >= 0 and u.max() < 1
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3


_JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, jax, jax.numpy as jnp, keras
    from tf_simclr.augment import device as da
    from tf_simclr.augment.spec import AugmentSpec
    spec = AugmentSpec({size})
    images = np.load(sys.argv[1])
    fn = jax.jit(lambda x, s: da.device_views(x, s, spec))
    out = np.asarray(fn(images, jnp.array([1, 2], jnp.uint32)))
    again = np.asarray(fn(images, jnp.array([1, 2], jnp.uint32)))
    other = np.asarray(fn(images, jnp.array([1, 3], jnp.uint32)))
    layer = da.DeviceAugment(spec, seed=5)
    layer.build(images.shape)
    step = jax.jit(lambda state, x: layer.stateless_call([], state, x))
    state = [v.value for v in layer.non_trainable_variables]
    a, state = step(state, images)
    b, state = step(state, images)
    np.save(sys.argv[2], out)
    print(json.dumps({{"shape": out.shape, "min": float(out.min()), "max": float(out.max()),
                      "same": bool((out == again).all()), "other": float(np.abs(out - other).max()),
                      "layer_shape": list(np.asarray(a).shape),
                      "layer_steps_differ": float(np.abs(np.asarray(a) - np.asarray(b)).max())}}))
""")


def test_jax_jit_reproduces_tensorflow_views(tmp_path):
    images = np.concatenate([_colour_gradient(4), np.repeat(_smooth_image()[None], 4, 0)])
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT.format(size=SIZE), str(tmp_path / "images.npy"),
         str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [8, SIZE, SIZE, 6] and report["layer_shape"] == [16, SIZE, SIZE, 3]
    assert 0 <= report["min"] and report["max"] <= 1
    assert report["same"] and report["other"] > 0.05 and report["layer_steps_differ"] > 0.05
    # Same seed, same hash draws: JAX's views equal TensorFlow's up to float rounding.
    jax_views = np.load(tmp_path / "out.npy")
    tf_views = np.asarray(da.device_views(images, [1, 2], SPEC))
    np.testing.assert_allclose(jax_views, tf_views, atol=1e-4)
