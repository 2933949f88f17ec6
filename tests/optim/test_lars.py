"""LARS (optim.lars) against an independent NumPy implementation of the SimCLR update rule."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from tf_simclr.optim.lars import LARS
from tf_simclr.optim.schedules import WarmUpAndCosineDecay

RTOL = 1e-5


def np_lars_step(w, g, v, lr, *, momentum, weight_decay, decay, adapt, classic, nesterov, eeta):
    """One LARS step in float64, written from the paper/reference equations."""
    w, g, v = (np.asarray(a, np.float64) for a in (w, g, v))
    if decay:
        g = g + weight_decay * w

    def ratio(d):
        wn, dn = np.linalg.norm(w), np.linalg.norm(d)
        return eeta * wn / dn if (adapt and wn > 0 and dn > 0) else 1.0

    if classic:
        step_lr = lr * ratio(g)
        v = momentum * v + step_lr * g
        update = momentum * v + step_lr * g if nesterov else v
        return w - update, v
    v = momentum * v + g
    update = momentum * v + g if nesterov else v
    return w - lr * ratio(update) * update, v


def _dense(name="dense", units=3, in_dim=4, seed=0):
    layer = keras.layers.Dense(units, name=name)
    layer.build((None, in_dim))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(size=(in_dim, units)).astype("float32"))
    layer.bias.assign(rng.normal(size=(units,)).astype("float32"))
    return layer


@pytest.mark.parametrize("classic", [True, False])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("steps", [1, 5])
def test_matches_numpy_decayed_and_excluded(classic, nesterov, steps):
    layer = _dense()
    hp = dict(momentum=0.9, weight_decay=0.1, classic=classic, nesterov=nesterov, eeta=0.05)
    opt = LARS(
        0.5,
        momentum=0.9,
        use_nesterov=nesterov,
        weight_decay=0.1,
        exclude_from_weight_decay=["bias"],
        classic_momentum=classic,
        eeta=0.05,
    )
    rng = np.random.default_rng(1)
    ref = {"kernel": [layer.kernel.numpy(), 0.0], "bias": [layer.bias.numpy(), 0.0]}
    for _ in range(steps):
        gk = rng.normal(size=(4, 3)).astype("float32")
        gb = rng.normal(size=(3,)).astype("float32")
        opt.apply([gk, gb], [layer.kernel, layer.bias])
        ref["kernel"] = np_lars_step(*ref["kernel"][:1], gk, ref["kernel"][1], 0.5,
                                     decay=True, adapt=True, **hp)
        ref["bias"] = np_lars_step(*ref["bias"][:1], gb, ref["bias"][1], 0.5,
                                   decay=False, adapt=False, **hp)
    np.testing.assert_allclose(layer.kernel.numpy(), ref["kernel"][0], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(layer.bias.numpy(), ref["bias"][0], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(opt.variables[2].numpy(), ref["kernel"][1], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(opt.variables[3].numpy(), ref["bias"][1], rtol=RTOL, atol=1e-6)
    assert int(opt.iterations.numpy()) == steps


def test_schedule_learning_rate_is_used_per_step():
    layer = _dense()
    schedule = WarmUpAndCosineDecay(1.0, warmup_steps=2, total_steps=6)
    opt = LARS(schedule, weight_decay=1e-3, eeta=0.1)
    hp = dict(momentum=0.9, weight_decay=1e-3, classic=True, nesterov=False, eeta=0.1)
    rng = np.random.default_rng(2)
    w, v = layer.kernel.numpy(), 0.0
    wb, vb = layer.bias.numpy(), 0.0
    for step in range(6):
        gk, gb = rng.normal(size=(4, 3)), rng.normal(size=(3,))
        opt.apply([gk.astype("float32"), gb.astype("float32")], layer.trainable_variables)
        lr = step / 2 if step < 2 else 0.5 * (1 + np.cos(np.pi * (step - 2) / 4))
        w, v = np_lars_step(w, gk, v, lr, decay=True, adapt=True, **hp)
        wb, vb = np_lars_step(wb, gb, vb, lr, decay=True, adapt=True, **hp)
    np.testing.assert_allclose(layer.kernel.numpy(), w, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(layer.bias.numpy(), wb, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("classic", [True, False])
def test_zero_weight_and_zero_gradient_guards(classic):
    zero_w = keras.Variable(np.zeros((5,), "float32"), name="zero_w")
    zero_g = keras.Variable(np.arange(1, 6, dtype="float32"), name="zero_g")
    opt = LARS(0.1, momentum=0.9, classic_momentum=classic)
    g = np.arange(5, dtype="float32") - 2.0
    opt.apply([g, np.zeros(5, "float32")], [zero_w, zero_g])
    # Zero weight: trust ratio falls back to 1, the step is the plain momentum step.
    np.testing.assert_allclose(zero_w.numpy(), -0.1 * g, rtol=RTOL)
    # Zero gradient (no decay): nothing moves and nothing becomes NaN.
    np.testing.assert_array_equal(zero_g.numpy(), np.arange(1, 6, dtype="float32"))
    assert all(np.isfinite(v.numpy()).all() for v in opt.variables)


def test_weight_decay_alone_drives_update_when_gradient_is_zero():
    var = keras.Variable(np.full((4,), 2.0, "float32"), name="w")
    opt = LARS(0.1, momentum=0.0, weight_decay=0.5, eeta=0.01)
    opt.apply([np.zeros(4, "float32")], [var])
    # g = 0.5 * w, trust = eeta * |w| / |0.5 w| = 0.02, step = 0.1 * 0.02 * 0.5 * w.
    np.testing.assert_allclose(var.numpy(), 2.0 - 0.1 * 0.02 * 1.0, rtol=RTOL)


def _updates_as(layer, opt):
    """Which of (decay, adapt) the optimizer applied to the kernel, via NumPy."""
    w0 = layer.kernel.numpy()
    g = np.random.default_rng(3).normal(size=w0.shape).astype("float32")
    opt.apply([g, np.zeros_like(layer.bias.numpy())], layer.trainable_variables)
    hp = dict(momentum=0.9, weight_decay=0.1, classic=True, nesterov=False, eeta=0.01)
    for decay, adapt in [(True, True), (False, False), (False, True), (True, False)]:
        w1, _ = np_lars_step(w0, g, 0.0, 0.5, decay=decay, adapt=adapt, **hp)
        if np.allclose(layer.kernel.numpy(), w1, rtol=RTOL, atol=1e-7):
            return decay, adapt
    raise AssertionError("Update matches no NumPy variant.")


def _opt(**kwargs):
    return LARS(0.5, momentum=0.9, weight_decay=0.1, eeta=0.01, **kwargs)


def test_exclusion_matches_full_path_not_name():
    # Keras 3: kernel.name == "kernel", kernel.path == "head_supervised/kernel".
    layer = _dense("head_supervised")
    assert layer.kernel.name == "kernel"
    assert _updates_as(layer, _opt(exclude_from_weight_decay=["head_supervised"])) == (
        False,
        False,
    )
    layer = _dense("head_supervised")
    # "^kernel$" matches the name but not the path, so the kernel stays decayed.
    assert _updates_as(layer, _opt(exclude_from_weight_decay=["^kernel$"])) == (True, True)
    layer = _dense("head_supervised")
    assert _updates_as(layer, _opt(exclude_from_weight_decay=["/kernel$"])) == (False, False)


def test_layer_adaptation_exclusions_are_separate_when_given():
    layer = _dense()
    opt = _opt(exclude_from_weight_decay=["kernel"], exclude_from_layer_adaptation=[])
    assert _updates_as(layer, opt) == (False, True)
    layer = _dense()
    opt = _opt(exclude_from_weight_decay=None, exclude_from_layer_adaptation=["dense/"])
    assert _updates_as(layer, opt) == (True, False)


def test_exclusion_by_variable_object_and_method_patterns():
    layer = _dense()
    opt = _opt()
    opt.exclude_from_weight_decay(var_list=[layer.kernel])
    assert _updates_as(layer, opt) == (False, False)
    layer = _dense()
    opt = _opt()
    opt.exclude_from_weight_decay(var_names=["dense/ker"])
    assert _updates_as(layer, opt) == (False, False)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_weight_decay(var_names=["x"])


def test_invalid_arguments():
    with pytest.raises(TypeError, match="name patterns"):
        LARS(0.1, exclude_from_weight_decay=[keras.Variable(1.0)])
    with pytest.raises(ValueError, match="weight_decay=-1"):
        LARS(0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="momentum=-0.5"):
        LARS(0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="eeta=0"):
        LARS(0.1, eeta=0.0)
    with pytest.raises(TypeError, match="var_names"):
        LARS(0.1).exclude_from_weight_decay(var_names=[3])


def test_base_class_decoupled_decay_is_off():
    opt = LARS(0.1, weight_decay=0.3)
    assert opt.weight_decay is None  # Keras would otherwise decay a second time.
    assert opt.get_config()["weight_decay"] == 0.3


def test_serialization_round_trip():
    schedule = WarmUpAndCosineDecay(0.3, 10, 100)
    opt = LARS(
        schedule,
        momentum=0.8,
        use_nesterov=True,
        weight_decay=1e-4,
        exclude_from_weight_decay=["bias", "bn"],
        classic_momentum=False,
        eeta=0.002,
        clipnorm=1.0,
    )
    config = opt.get_config()
    assert config["exclude_from_weight_decay"] == ["bias", "bn"]
    assert config["exclude_from_layer_adaptation"] is None
    serialized = keras.optimizers.serialize(opt)
    assert serialized["registered_name"] == "tf_simclr>LARS"
    for clone in (keras.optimizers.deserialize(serialized), LARS.from_config(opt.get_config())):
        assert isinstance(clone, LARS)
        assert clone.get_config() == config
        assert isinstance(clone._learning_rate, WarmUpAndCosineDecay)
        assert clone.lars_weight_decay == 1e-4 and clone.weight_decay is None
        assert clone.clipnorm == 1.0


def test_momentum_slots_restore_in_stable_order():
    layer_a, layer_b = _dense(seed=4), _dense(seed=4)
    opt_a = LARS(0.5, weight_decay=0.1, exclude_from_weight_decay=["bias"], eeta=0.05)
    rng = np.random.default_rng(5)
    grads = [[rng.normal(size=s).astype("float32") for s in ((4, 3), (3,))] for _ in range(4)]
    for g in grads[:2]:
        opt_a.apply(g, layer_a.trainable_variables)
    names = [v.path for v in opt_a.variables]
    assert names == ["lars/iteration", "lars/learning_rate",
                     "lars/dense_kernel_momentum", "lars/dense_bias_momentum"]

    store = {}
    opt_a.save_own_variables(store)
    opt_b = LARS.from_config(opt_a.get_config())
    opt_b.build(layer_b.trainable_variables)
    opt_b.load_own_variables(store)
    for v, w in zip(layer_b.trainable_variables, layer_a.trainable_variables):
        v.assign(w)
    for g in grads[2:]:
        opt_a.apply(g, layer_a.trainable_variables)
        opt_b.apply(g, layer_b.trainable_variables)
    for va, vb in zip(opt_a.variables + layer_a.weights, opt_b.variables + layer_b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert np.abs(opt_b.variables[2].numpy()).sum() > 0


def test_float16_variable_uses_float32_math():
    # sum(w**2) = 1000 * 300**2 overflows float16 (max 65504); float32 does not.
    init = np.full((1000,), 300.0, "float16")
    var = keras.Variable(init, dtype="float16", name="w16")
    g = np.full((1000,), 0.5, "float16")
    opt = LARS(1.0, momentum=0.0, eeta=0.001)
    opt.apply([g], [var])
    expected, _ = np_lars_step(init, g, 0.0, 1.0, momentum=0.0, weight_decay=0.0, decay=False,
                               adapt=True, classic=True, nesterov=False, eeta=0.001)
    assert np.isfinite(var.numpy().astype("float32")).all()
    np.testing.assert_allclose(var.numpy().astype("float64"), expected, rtol=1e-3)


def test_loss_scale_optimizer_wrapping_matches_plain():
    layer_a, layer_b = _dense(seed=6), _dense(seed=6)
    g = [np.full((4, 3), 0.25, "float32"), np.full((3,), -0.5, "float32")]
    plain = LARS(0.5, weight_decay=0.1, eeta=0.05)
    scaled = keras.optimizers.LossScaleOptimizer(LARS(0.5, weight_decay=0.1, eeta=0.05),
                                                 initial_scale=1024.0)
    plain.apply(g, layer_a.trainable_variables)
    scaled.apply([x * 1024.0 for x in g], layer_b.trainable_variables)
    for a, b in zip(layer_a.weights, layer_b.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL)


def test_compile_and_fit_tiny_model(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 2))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False)])
    w0 = model.layers[0].kernel.numpy()
    model.compile(optimizer=LARS(0.5, weight_decay=1e-3, eeta=0.1), loss="mse")
    # One full-batch step equals the NumPy step with the analytic MSE gradient.
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    grad = 2.0 / y.size * x.T @ (x @ w0 - y)
    w1, _ = np_lars_step(w0, grad, 0.0, 0.5, momentum=0.9, weight_decay=1e-3, decay=True,
                         adapt=True, classic=True, nesterov=False, eeta=0.1)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), w1, rtol=1e-4, atol=1e-6)

    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses

    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, LARS)
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mirrored_strategy_matches_single_device(two_cpu_strategy):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs the 2 logical CPUs set up in conftest.py")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    init = _dense(seed=9)

    def make():
        layer = keras.layers.Dense(3, name="dense")
        layer.build((None, 4))
        for v, w in zip(layer.weights, init.weights):
            v.assign(w)
        opt = LARS(0.5, weight_decay=0.1, exclude_from_weight_decay=["bias"], eeta=0.05)
        opt.build(layer.trainable_variables)
        return layer, opt

    def loss_fn(layer, xb, yb, replicas):
        return keras.ops.mean(keras.ops.square(layer(xb) - yb)) / replicas

    def train_step(layer, opt, xb, yb, replicas):
        with tf.GradientTape() as tape:
            loss = loss_fn(layer, xb, yb, replicas)
        grads = tape.gradient(loss, layer.trainable_variables)
        opt.apply(grads, layer.trainable_variables)

    single, single_opt = make()
    for _ in range(3):
        train_step(single, single_opt, x, y, 1)

    strategy = two_cpu_strategy
    with strategy.scope():
        layer, opt = make()

    @tf.function
    def distributed_step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            xb = tf.gather(tf.constant(x), tf.range(4) + 4 * rid)
            yb = tf.gather(tf.constant(y), tf.range(4) + 4 * rid)
            train_step(layer, opt, xb, yb, 2)

        strategy.run(replica_fn)

    for _ in range(3):
        distributed_step()
    for a, b in zip(layer.weights + opt.variables, single.weights + single_opt.variables):
        np.testing.assert_allclose(np.asarray(a.numpy()), b.numpy(), rtol=1e-5, atol=1e-6)
