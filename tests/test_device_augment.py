"""Batched keras.ops augmentation (device_augment) against the host pipeline (augment.py).

Exact pieces (crop resize, colour ops, blur) are compared with TensorFlow's
own image ops; random pieces (crop boxes, flip/grayscale/blur shares, image
statistics) with the host pipeline's draws; one subprocess runs the same code
under JAX's jit and must reproduce the TensorFlow views for the same seed.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tf_simclr import augment
from tf_simclr import device_augment as da

SOURCE, SIZE = 32, 24


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


def test_crop_boxes_follow_host_distribution():
    height, width, n = 32, 48, 400  # A wide image also exercises the width limit.
    top, left, h, w = (np.asarray(t) for t in da.sample_crop_boxes([3, 9], n, height, width))
    assert np.all(h * w >= 0.1 * height * width) and np.all(h * w <= height * width)
    assert np.all(top >= 0) and np.all(top + h <= height)
    assert np.all(left >= 0) and np.all(left + w <= width)
    assert np.all(h == np.round(h)) and np.all(w == np.round(w))

    host = np.array([
        np.concatenate([b[:2], s[:2]]) for b, s in (
            (x.numpy() for x in augment.sample_crop_box(tf.constant([height, width, 3]),
                                                        seed=[11, i])) for i in range(n))
    ], np.float32)
    ht, hl, hh, hw = host.T
    assert stats.ks_2samp(h * w, hh * hw).pvalue > 0.001
    assert stats.ks_2samp(w / h, hw / hh).pvalue > 0.001
    # Offsets: uniform over the free room (as fractions of it).
    room, host_room = np.maximum(height - h, 1), np.maximum(height - hh, 1)
    assert stats.ks_2samp(top / room, ht / host_room).pvalue > 0.001
    left_share = np.mean(left / np.maximum(width - w, 1))
    assert abs(left_share - np.mean(hl / np.maximum(width - hw, 1))) < 0.08


def test_resized_crops_equal_tf_bicubic_resize_of_the_crop():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 20, 28, 3), dtype=np.uint8)
    top, left, h, w = (np.array(t) for t in da.sample_crop_boxes([5, 5], 6, 20, 28))
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
        (da.adjust_brightness, factors, lambda x, f: x * f),
        (da.adjust_contrast, factors, tf.image.adjust_contrast),
        (da.adjust_saturation, factors, tf.image.adjust_saturation),
        (da.adjust_hue, deltas, tf.image.adjust_hue),
    ]
    for fn, params, reference in checks:
        got = np.asarray(fn(images, params))
        want = np.stack([np.asarray(reference(images[i], params[i])) for i in range(5)])
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=fn.__name__)
    want = np.stack([np.asarray(augment.to_grayscale(tf.constant(x))) for x in images])
    np.testing.assert_allclose(np.asarray(da.to_grayscale(images)), want, atol=1e-6)


def test_colour_jitter_applies_each_images_own_order():
    """Each image gets the 4 ops in the order of its sorted uniforms, clipped after each."""
    rng = np.random.default_rng(4)
    images = rng.uniform(-0.05, 1.05, (4, 6, 5, 3)).astype(np.float32)  # Resize overshoot too.
    images = np.clip(images, 0, 1)
    u = np.zeros((4, da._COLS_PER_VIEW), np.float32)
    u[:, da._COL_FACTORS:da._COL_FACTORS + 4] = rng.uniform(0, 1, (4, 4))
    orders = [rng.permutation(4) for _ in range(4)]
    for i, order in enumerate(orders):  # Uniforms that sort into `order`.
        u[i, da._COL_ORDER + order] = np.arange(4) / 4 + 0.1
    got = np.asarray(da._color_jitter(images, u, 1.0))
    tf_ops = (lambda x, f: x * f, tf.image.adjust_contrast, tf.image.adjust_saturation,
              tf.image.adjust_hue)
    for i, order in enumerate(orders):
        f = u[i, da._COL_FACTORS:da._COL_FACTORS + 4]
        factors = (0.2 + 1.6 * f[0], 0.2 + 1.6 * f[1], 0.2 + 1.6 * f[2], -0.2 + 0.4 * f[3])
        want = tf.constant(images[i])
        for op in order:
            want = tf.clip_by_value(tf_ops[op](want, factors[op]), 0.0, 1.0)
        np.testing.assert_allclose(got[i], want.numpy(), atol=3e-5, err_msg=str(order))


@pytest.mark.parametrize("kernel_size", [4, 7])  # Radius 2 (host: shifts) and 3 (host: conv).
def test_gaussian_blur_equals_host_blur(kernel_size):
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (3, 12, 10, 3)).astype(np.float32)
    sigmas = np.array([0.1, 0.9, 2.0], np.float32)
    got = np.asarray(da.gaussian_blur(images, sigmas, kernel_size))
    for i in range(3):
        want = augment.gaussian_blur(images[i], sigmas[i], kernel_size).numpy()
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_flip_grayscale_and_blur_shares():
    n = 512
    images = _colour_gradient(n)
    views = np.asarray(da.device_views(images, [7, 1], image_size=SIZE, blur=True))
    unblurred = np.asarray(da.device_views(images, [7, 1], image_size=SIZE, blur=False))
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

    gray = np.abs(views - views[..., :1]).max(axis=(1, 2, 3)) < 1e-6
    assert abs(gray.mean() - 0.2) < 0.05

    # Sigmas near 0.1 change a view by less than float noise (as on the host): the
    # visible share is 0.5 * P(sigma > ~0.2) ~ 0.47.
    changed = np.abs(views - unblurred).max(axis=(1, 2, 3)) > 1e-5
    assert 0.40 < changed.mean() < 0.56
    # Without blur nothing else in the view changes: the same draws are used.
    np.testing.assert_allclose(views[~changed], unblurred[~changed], atol=1e-5)


def _host_views(image, n):
    dataset = tf.data.Dataset.range(n).map(
        lambda i: augment.preprocess_for_train(image, SIZE, SIZE, blur=True,
                                               seed=tf.stack([tf.constant(17, tf.int64), i])))
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
    device = np.asarray(da.device_views(np.repeat(image[None], n, 0), [4, 2],
                                        image_size=SIZE, num_views=1))
    host = _host_views(image, n)
    assert device.min() >= 0 and device.max() <= 1
    ours, theirs = _summary(device), _summary(host)
    for name in ours:
        mean_gap = abs(ours[name].mean() - theirs[name].mean())
        assert mean_gap < 0.1 * theirs[name].mean() + 0.01, (name, mean_gap)
        assert stats.ks_2samp(ours[name], theirs[name]).pvalue > 1e-3, name


def test_seeds_layer_and_xla_tf():
    images = _colour_gradient(4)
    first = np.asarray(da.device_views(images, [1, 2], image_size=SIZE))
    views = lambda x, seed: np.asarray(da.device_views(x, seed, image_size=SIZE))  # noqa: E731
    np.testing.assert_array_equal(first, views(images, [1, 2]))
    assert np.abs(first - views(images, [1, 3])).max() > 0.05
    # Views of one image do not depend on the rest of the batch.
    np.testing.assert_allclose(first[:2], views(images[:2], [1, 2]), atol=1e-6)

    compiled = tf.function(lambda x, s: da.device_views(x, s, image_size=SIZE), jit_compile=True)
    np.testing.assert_allclose(compiled(images, tf.constant([1, 2])).numpy(), first, atol=1e-4)

    layer = da.DeviceAugment(SIZE, seed=5)
    a, b = layer(images), layer(images)
    assert a.shape == (4, SIZE, SIZE, 6) and np.abs(a.numpy() - b.numpy()).max() > 0.05
    with pytest.raises(ValueError, match="static H and W"):
        da.device_views(images[0], [1, 2], image_size=SIZE)


_JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, jax, jax.numpy as jnp, keras
    from tf_simclr import device_augment as da
    images = np.load(sys.argv[1])
    fn = jax.jit(lambda x, s: da.device_views(x, s, image_size={size}))
    out = np.asarray(fn(images, jnp.array([1, 2], jnp.uint32)))
    again = np.asarray(fn(images, jnp.array([1, 2], jnp.uint32)))
    other = np.asarray(fn(images, jnp.array([1, 3], jnp.uint32)))
    layer = da.DeviceAugment({size}, seed=5)
    layer.build(images.shape)
    step = jax.jit(lambda state, x: layer.stateless_call([], state, x))
    state = [v.value for v in layer.non_trainable_variables]
    a, state = step(state, images)
    b, state = step(state, images)
    np.save(sys.argv[2], out)
    print(json.dumps({{"shape": out.shape, "min": float(out.min()), "max": float(out.max()),
                      "same": bool((out == again).all()), "other": float(np.abs(out - other).max()),
                      "layer_steps_differ": float(np.abs(np.asarray(a) - np.asarray(b)).max())}}))
""")


def test_jax_jit_reproduces_tensorflow_views(tmp_path):
    images = np.concatenate([_colour_gradient(4), np.repeat(_smooth_image()[None], 4, 0)])
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT.format(size=SIZE), str(tmp_path / "images.npy"),
         str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [8, SIZE, SIZE, 6]
    assert 0 <= report["min"] and report["max"] <= 1
    assert report["same"] and report["other"] > 0.05 and report["layer_steps_differ"] > 0.05
    # Same seed, same hash draws: JAX's views equal TensorFlow's up to float rounding.
    jax_views = np.load(tmp_path / "out.npy")
    tf_views = np.asarray(da.device_views(images, [1, 2], image_size=SIZE))
    np.testing.assert_allclose(jax_views, tf_views, atol=1e-4)
