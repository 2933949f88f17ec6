"""Projection head modes and the supervised head (models.heads) against NumPy, init, names, serialization."""

import keras
import numpy as np
import pytest

from tf_simclr.models.heads import ProjectionHead, SupervisedHead

EPS = 1e-5


def _np(x):
    """Tensor or variable to numpy (np.asarray on a keras Variable warns under numpy 2)."""
    return x.numpy() if isinstance(x, keras.Variable) else keras.ops.convert_to_numpy(x)


def _features(n=8, dim=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype("float32")


def _randomize_bn(bn, rng):
    """Give a BN layer non-trivial statistics so inference-mode checks mean something."""
    dim = bn.moving_mean.shape[0]
    bn.moving_mean.assign(rng.normal(size=dim).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=dim).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=dim).astype("float32"))
    if bn.center:
        bn.beta.assign(rng.normal(size=dim).astype("float32"))


def _numpy_bn(x, bn):
    beta = _np(bn.beta) if bn.center else 0.0
    return (x - _np(bn.moving_mean)) / np.sqrt(_np(bn.moving_variance) + EPS) * _np(bn.gamma) + beta


@pytest.mark.parametrize(
    "mode,num_layers,widths",
    [("none", 3, [16]), ("linear", 3, [16, 32]), ("nonlinear", 3, [16, 16, 16, 32]), ("nonlinear", 1, [16, 32]), ("nonlinear", 2, [16, 16, 32])],
)
def test_modes_hidden_count_and_dims(mode, num_layers, widths):
    head = ProjectionHead(mode, out_dim=32, num_layers=num_layers)
    x = _features()
    hiddens = head(x, training=True)
    assert isinstance(hiddens, list)
    assert [tuple(h.shape) for h in hiddens] == [(8, w) for w in widths]
    np.testing.assert_array_equal(hiddens[0], x)  # proj_head_input is the input.
    assert head.compute_output_shape((None, 16)) == [(None, w) for w in widths]


def test_none_mode_is_identity_without_weights():
    head = ProjectionHead("none")
    x = _features()
    hiddens = head(x, training=True)
    assert len(hiddens) == 1 and head.weights == []
    np.testing.assert_array_equal(hiddens[-1], x)


def test_batch_norm_centre_scale_and_dense_bias_settings():
    head = ProjectionHead("nonlinear", out_dim=8, num_layers=3, batch_norm_decay=0.95)
    head(_features())
    assert [d.use_bias for d in head.dense_layers] == [False] * 3
    assert [b.center for b in head.bn_layers] == [True, True, False]
    assert all(b.scale and b.momentum == pytest.approx(0.95) and b.epsilon == EPS for b in head.bn_layers)
    paths = sorted(v.path for v in head.trainable_weights)
    assert paths == sorted(
        ["projection_head/nl_0_dense/kernel", "projection_head/nl_0_bn/gamma", "projection_head/nl_0_bn/beta"]
        + ["projection_head/nl_1_dense/kernel", "projection_head/nl_1_bn/gamma", "projection_head/nl_1_bn/beta"]
        + ["projection_head/nl_2_dense/kernel", "projection_head/nl_2_bn/gamma"]
    )
    linear = ProjectionHead("linear", out_dim=8)
    linear(_features())
    assert not linear.dense_layers[0].use_bias and not linear.bn_layers[0].center and linear.bn_layers[0].scale


def test_kernel_initializer_has_stddev_001():
    head = ProjectionHead("linear", out_dim=256)
    head(_features(dim=256))
    kernel = _np(head.dense_layers[0].kernel)
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001


def test_linear_mode_matches_numpy_in_inference():
    rng = np.random.default_rng(1)
    head = ProjectionHead("linear", out_dim=4)
    x = _features(dim=6)
    head(x)
    _randomize_bn(head.bn_layers[0], rng)
    expected = _numpy_bn(x @ _np(head.dense_layers[0].kernel), head.bn_layers[0])
    hiddens = head(x, training=False)
    np.testing.assert_allclose(hiddens[-1], expected, rtol=1e-5, atol=1e-5)


def test_nonlinear_mode_matches_numpy_in_inference():
    rng = np.random.default_rng(2)
    head = ProjectionHead("nonlinear", out_dim=3, num_layers=3)
    x = _features(dim=5)
    head(x)
    for bn in head.bn_layers:
        _randomize_bn(bn, rng)
    expected, h = [x], x
    for j, (dense, bn) in enumerate(zip(head.dense_layers, head.bn_layers)):
        h = _numpy_bn(h @ _np(dense.kernel), bn)
        if j < 2:
            h = np.maximum(h, 0)
        expected.append(h)
    hiddens = head(x, training=False)
    assert (expected[1] < 0).sum() == 0 and (expected[3] < 0).any()  # ReLU on hidden layers only.
    for got, want in zip(hiddens, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_training_mode_uses_batch_statistics():
    head = ProjectionHead("linear", out_dim=4, batch_norm_decay=0.9)
    x = _features(n=16, dim=6, seed=3)
    out = _np(head(x, training=True)[-1])
    z = x @ _np(head.dense_layers[0].kernel)
    expected = (z - z.mean(0)) / np.sqrt(z.var(0) + EPS)  # gamma = 1, no beta.
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(_np(head.bn_layers[0].moving_mean), 0.1 * z.mean(0), rtol=1e-4, atol=1e-7)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="mode='bogus'"):
        ProjectionHead("bogus")
    with pytest.raises(ValueError, match="num_layers=0"):
        ProjectionHead("nonlinear", num_layers=0)
    with pytest.raises(ValueError, match="input_shape"):
        ProjectionHead()(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="out_dim=0"):
        ProjectionHead("linear", out_dim=0)
    ProjectionHead("none", out_dim=0)  # 'none' has no output width to check.
    with pytest.raises(ValueError, match="num_classes=0"):
        SupervisedHead(0)


def test_supervised_head_zero_init_gives_zero_logits():
    head = SupervisedHead(10, zero_init=True)
    logits = head(_features(dim=12))
    assert tuple(logits.shape) == (8, 10)
    np.testing.assert_array_equal(logits, 0.0)


def test_supervised_head_default_init_and_names():
    head = SupervisedHead(64)
    x = _features(dim=128)
    logits = _np(head(x))
    kernel, bias = _np(head.linear_layer.kernel), _np(head.linear_layer.bias)
    assert abs(kernel.std() - 0.01) < 0.001
    np.testing.assert_array_equal(bias, 0.0)
    np.testing.assert_allclose(logits, x @ kernel + bias, rtol=1e-5, atol=1e-6)
    assert [v.path for v in head.weights] == ["head_supervised/linear_layer/kernel", "head_supervised/linear_layer/bias"]


def test_get_config_round_trip():
    for head in (ProjectionHead("linear", out_dim=7, batch_norm_decay=0.8, global_bn=True), SupervisedHead(5, zero_init=True)):
        config = head.get_config()
        clone = type(head).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
        assert type(restored) is type(head) and restored.get_config() == config


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("mode", ["none", "linear", "nonlinear"])
def test_heads_in_a_functional_model_save_and_load(tmp_path, mode):
    inputs = keras.Input((6,))
    hiddens = ProjectionHead(mode, out_dim=4, num_layers=2)(inputs)
    logits = SupervisedHead(3)(hiddens[0])
    model = keras.Model(inputs, {"proj": hiddens[-1], "sup": logits})
    x = _features(dim=6, seed=4)
    model(x, training=True)  # Non-trivial BN statistics.
    expected = model(x, training=False)
    model.save(tmp_path / "heads.keras")
    loaded = keras.models.load_model(tmp_path / "heads.keras")
    got = loaded(x, training=False)
    for key in ("proj", "sup"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
    assert tuple(got["proj"].shape) == (8, 6 if mode == "none" else 4)
