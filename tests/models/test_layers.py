"""One-pass batch statistics (models.layers): against NumPy in float64, and against Keras's own BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.models import layers as layers_lib
from tf_simclr.models.layers import BatchNorm, batch_norm, one_pass_moments

AXES = (0, 1, 2)


def _data(mean, std, shape=(16, 6, 6, 5), seed=0):
    return np.random.default_rng(seed).normal(mean, std, size=shape).astype("float32")


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.5, 0.5), (-8.0, 4.0)])
def test_one_pass_moments_match_numpy(mean, std):
    x = _data(mean, std)
    x64 = x.astype(np.float64)
    got_mean, got_var = (keras.ops.convert_to_numpy(v) for v in one_pass_moments(x, AXES))
    assert got_mean.shape == got_var.shape == (5,)
    np.testing.assert_allclose(got_mean, x64.mean(AXES), rtol=1e-5, atol=1e-6 * std)
    np.testing.assert_allclose(got_var, x64.var(AXES), rtol=5e-5)


@pytest.mark.parametrize("ratio,bound", [(10, 1e-3), (30, 1e-2)])
def test_cancellation_stays_within_its_documented_bound(ratio, bound):
    """E[x^2] - E[x]^2 loses digits as (mean / std)^2: measured 3.6e-4 at 10 and 2.7e-3 at 30 (the docstring's)."""
    x = _data(float(ratio), 1.0, shape=(256, 14, 14, 8))
    _, variance = one_pass_moments(x, AXES)
    error = np.max(np.abs(keras.ops.convert_to_numpy(variance) / x.astype(np.float64).var(AXES) - 1))
    assert error < bound


def test_the_moments_gradients_match_numpy():
    x = tf.constant(_data(1.0, 2.0, shape=(4, 3, 3, 2)))
    weights = np.array([0.3, -1.2], "float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        mean, var = one_pass_moments(x, AXES)
        objective = tf.reduce_sum(mean * weights) + tf.reduce_sum(var)
    n = 4 * 3 * 3
    x64 = x.numpy().astype(np.float64)
    expected = weights / n + 2 * (x64 - x64.mean(AXES)) / n  # d mean/dx = 1/n; d var/dx = 2 (x - mean) / n.
    np.testing.assert_allclose(tape.gradient(objective, x).numpy(), expected, rtol=1e-4, atol=1e-6)


def _pair(**kwargs):
    """tf_simclr's BatchNorm and Keras's, built alike with the same (non-trivial) variables."""
    rng = np.random.default_rng(1)
    ours = BatchNorm(epsilon=1e-5, momentum=0.9, **kwargs)
    keras_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    for layer in (ours, keras_bn):
        layer.build((None, 6, 6, 5))
    values = [rng.uniform(0.5, 1.5, 5), rng.normal(size=5), rng.normal(2.0, 1.0, 5), rng.uniform(0.5, 2.0, 5)]
    for layer in (ours, keras_bn):
        for variable, value in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), values):
            variable.assign(value.astype("float32"))
    return ours, keras_bn


def _train_call(layer, x):
    x = tf.constant(x)
    upstream = np.random.default_rng(2).normal(size=x.shape).astype("float32")  # A gradient that reaches gamma.
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        objective = tf.reduce_sum(tf.cast(y, "float32") * upstream)
    grads = tape.gradient(objective, [x, layer.gamma, layer.beta])
    return [y] + grads + [layer.moving_mean, layer.moving_variance]


def test_training_matches_keras_batch_normalization_outputs_gradients_and_moving_statistics():
    ours, keras_bn = _pair()
    x = _data(2.0, 3.0)
    names = ("output", "d input", "d gamma", "d beta", "moving mean", "moving variance")
    for name, a, b in zip(names, _train_call(ours, x), _train_call(keras_bn, x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=name)


def test_inference_is_keras_batch_normalization_exactly():
    ours, keras_bn = _pair()
    x = _data(2.0, 3.0)
    np.testing.assert_array_equal(ours(x, training=False).numpy(), keras_bn(x, training=False).numpy())


def test_mixed_bfloat16_matches_keras_within_bfloat16_rounding():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        ours, keras_bn = _pair()
        x = _data(2.0, 3.0)
        a, b = ours(x, training=True), keras_bn(x, training=True)
        assert a.dtype == b.dtype == tf.bfloat16
        np.testing.assert_allclose(tf.cast(a, "float32").numpy(), tf.cast(b, "float32").numpy(), atol=2e-2)
        np.testing.assert_allclose(ours.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-4)
    finally:
        keras.config.set_dtype_policy("float32")


def test_two_pass_switch_is_keras_bit_for_bit():
    ours, keras_bn = _pair()
    ours.one_pass_statistics = False
    x = _data(2.0, 3.0)
    for a, b in zip(_train_call(ours, x), _train_call(keras_bn, x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _count_one_pass_calls(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return one_pass_moments(*args, **kwargs)

    monkeypatch.setattr(layers_lib, "one_pass_moments", spy)
    return calls


def test_keras_still_asks_the_layer_for_its_batch_statistics(monkeypatch):
    """The override is Keras's private `_moments` hook (keras_internals, 5): an upgrade that stops calling it fails here."""
    calls = _count_one_pass_calls(monkeypatch)
    layer = batch_norm("bn")
    layer(_data(0.0, 1.0), training=True)
    assert calls == [1]
    layer(_data(0.0, 1.0), training=False)
    assert calls == [1]


def test_synchronized_layers_keep_keras_cross_replica_sums(monkeypatch):
    calls = _count_one_pass_calls(monkeypatch)
    ours, keras_bn = _pair(synchronized=True)
    x = _data(2.0, 3.0)
    np.testing.assert_allclose(ours(x, training=True).numpy(), keras_bn(x, training=True).numpy(), atol=1e-6)
    assert calls == []


def test_config_round_trip_and_saved_model_file(tmp_path):
    layer = batch_norm("bn", batch_norm_decay=0.95, zero_init=True)
    clone = BatchNorm.from_config(layer.get_config())
    assert (clone.one_pass_statistics, clone.momentum, clone.epsilon) == (True, 0.95, layers_lib.BATCH_NORM_EPSILON)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, BatchNorm(one_pass_statistics=False, name="bn")(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("bn"), BatchNorm) and not loaded.get_layer("bn").one_pass_statistics
