"""`--augment_on=device`: the host hands over uint8 images; the model draws the views inside its step."""

import os

import keras
import numpy as np
import tensorflow as tf

import helpers
from tf_simclr.augment import device as device_augment
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import pipeline, sources
from tf_simclr.models import build_model

SPEC = AugmentSpec(16, blur=True)


def _folder(root, sizes):
    rng = np.random.default_rng(0)
    images = {}
    for i, (h, w) in enumerate(sizes):
        os.makedirs(root / "c", exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tf.io.write_file(str(root / "c" / f"{i}.png"), tf.io.encode_png(pixels))
        images[i] = pixels
    return images


def test_host_batches_uint8_images_of_one_size(tmp_path):
    images = _folder(tmp_path, [(19, 19), (30, 40), (50, 25), (19, 19)])
    source = sources.load_source(f"folder:{tmp_path}")
    side = pipeline.device_input_size(source, 16)
    assert side == (19, 19)  # ceil(16 * 8/7): the short side, then a centre crop.
    views = pipeline.Views("pretrain", SPEC, on_device=True)
    ds = pipeline.build_dataset(source, "train", views, 4, seed=0)
    batch, labels = next(iter(ds))
    assert batch.dtype == tf.uint8 and tuple(batch.shape) == (4, 19, 19, 3)
    # Images already 19x19 pass through untouched (second path: the PNGs' own pixels).
    originals = [p.tobytes() for p in images.values() if p.shape == (19, 19, 3)]
    got = [b.tobytes() for b in batch.numpy()]
    assert sum(g in originals for g in got) >= 2


def _models(device):
    keras.utils.set_random_seed(4)
    layer = device_augment.DeviceAugment(SPEC, seed=7, name="device_augment") if device else None
    return build_model(helpers.tiny_model_config(), device_augment=layer)


def test_model_loss_on_uint8_equals_loss_on_views_drawn_separately():
    images = np.random.default_rng(1).integers(0, 256, (8, 19, 19, 3), dtype=np.uint8)
    labels = np.zeros(8, "int32")
    with_layer, plain = _models(True), _models(False)
    plain.set_weights([w for w in with_layer.get_weights() if w.shape != (2,)])  # Same weights, no seed state.
    seed = keras.ops.convert_to_numpy(with_layer.device_augment.seed_generator.state)
    loss, _ = with_layer.compute_losses(images, labels, training=False)
    views = device_augment.device_views(images, np.asarray(seed, "int32"), SPEC)
    assert tuple(views.shape) == (8, 16, 16, 6)  # Two views side by side on the channel axis, as the host's.
    expected, _ = plain.compute_losses(views, labels, training=False)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    # The seed state advanced: the next call draws other views.
    assert not np.array_equal(keras.ops.convert_to_numpy(with_layer.device_augment.seed_generator.state), seed)


def test_replicas_draw_different_views_of_the_same_image(two_cpu_strategy):
    with two_cpu_strategy.scope():
        model = _models(True)
    images = np.random.default_rng(2).integers(0, 256, (2, 19, 19, 3), dtype=np.uint8)
    views = two_cpu_strategy.run(tf.function(lambda: model.views(tf.constant(images))))
    first, second = (v.numpy() for v in two_cpu_strategy.experimental_local_results(views))
    assert first.shape == (4, 16, 16, 3)  # Both views of both images, stacked on the batch axis.
    assert not np.allclose(first, second)
