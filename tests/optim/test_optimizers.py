"""Optimizers by name (optim.optimizers): build_optimizer, register_optimizer, where weight decay lives, L2 loss vs NumPy."""

import re

import numpy as np
import pytest

import keras
import tensorflow as tf

from tf_simclr.optim import optimizers as optimizers_lib
from tf_simclr.optim.lars import LARS
from tf_simclr.optim.optimizers import (
    OPTIMIZERS,
    build_optimizer,
    l2_weight_decay_loss,
    register_optimizer,
    uses_optimizer_weight_decay,
)


@pytest.fixture
def registry():
    """OPTIMIZERS (and which of them decay weights themselves) are process-wide: restore them after a test."""
    before, decaying = dict(OPTIMIZERS), set(optimizers_lib._DECAY_IN_OPTIMIZER)
    yield
    OPTIMIZERS.clear()
    OPTIMIZERS.update(before)
    optimizers_lib._DECAY_IN_OPTIMIZER.clear()
    optimizers_lib._DECAY_IN_OPTIMIZER.update(decaying)


def _dense(name="dense"):
    layer = keras.layers.Dense(3, name=name)
    layer.build((None, 4))
    rng = np.random.default_rng(0)
    layer.kernel.assign(rng.normal(size=(4, 3)).astype("float32"))
    layer.bias.assign(rng.normal(size=(3,)).astype("float32"))
    return layer


def test_registry_names():
    assert sorted(OPTIMIZERS) == ["adam", "lars", "momentum"]
    assert uses_optimizer_weight_decay("lars")
    assert not uses_optimizer_weight_decay("momentum")
    assert not uses_optimizer_weight_decay("adam")


def test_unknown_name_lists_valid_ones():
    # The message names the flag now: "Received: optimizer='sgd'" (was "name='sgd'").
    with pytest.raises(ValueError, match=r"\['adam', 'lars', 'momentum'\].*register_optimizer.*optimizer='sgd'"):
        build_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="optimizer='lamb'"):
        uses_optimizer_weight_decay("lamb")


def test_lars_gets_decay_and_exclusions():
    layer, other = _dense(), _dense("head")
    opt = build_optimizer(
        "lars", 1, momentum=0.8, weight_decay=0.1,
        excluded_variables=[layer.bias], excluded_names=["head/"],
    )
    assert isinstance(opt, LARS)
    assert opt.momentum == 0.8 and opt.lars_weight_decay == 0.1 and opt.weight_decay is None
    variables = [layer.kernel, layer.bias, other.kernel]
    before = [v.numpy() for v in variables]
    grads = [np.full(v.shape, 0.5, "float32") for v in variables]
    opt.apply(grads, variables)
    # Excluded variables take a plain first momentum step: w - lr * g.
    np.testing.assert_allclose(layer.bias.numpy(), before[1] - 0.5, rtol=1e-6)
    np.testing.assert_allclose(other.kernel.numpy(), before[2] - 0.5, rtol=1e-6)
    # The kernel is decayed and trust-scaled: w - lr * eeta * |w| / |g'| * g'.
    w = before[0].astype("float64")
    g = 0.5 + 0.1 * w
    expected = w - 0.001 * np.linalg.norm(w) / np.linalg.norm(g) * g
    np.testing.assert_allclose(layer.kernel.numpy(), expected, rtol=1e-5)


def test_momentum_is_nesterov_sgd_without_decay():
    opt = build_optimizer("momentum", 0.1, momentum=0.9, weight_decay=0.5)
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.nesterov and opt.momentum == pytest.approx(0.9)
    assert opt.weight_decay is None  # The L2 term goes in the loss instead.
    var = keras.Variable(np.ones(3, "float32"))
    opt.apply([np.full(3, 2.0, "float32")], [var])
    # Nesterov first step: w - lr * g * (1 + momentum).
    np.testing.assert_allclose(var.numpy(), 1.0 - 0.1 * 2.0 * 1.9, rtol=1e-6)


def test_adam_and_schedule_learning_rate():
    opt = build_optimizer("adam", 0.01, weight_decay=0.5)
    assert isinstance(opt, keras.optimizers.Adam) and opt.weight_decay is None
    assert float(opt.learning_rate) == pytest.approx(0.01)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    assert build_optimizer("lars", schedule)._learning_rate is schedule
    assert float(build_optimizer("momentum", np.float32(0.2)).learning_rate) == pytest.approx(0.2)


def test_l2_weight_decay_loss_matches_numpy():
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(3, 4)), rng.normal(size=(5,)), rng.normal(size=(2, 2, 2))]
    variables = [keras.Variable(a.astype("float32")) for a in arrays]
    want = 1e-4 * sum(0.5 * np.sum(a.astype("float32").astype("float64") ** 2) for a in arrays)
    got = float(l2_weight_decay_loss(variables, 1e-4))
    assert got == pytest.approx(want, rel=1e-6)
    # tf.nn.l2_loss is the convention the reference used.
    assert got == pytest.approx(1e-4 * sum(float(tf.nn.l2_loss(v.value)) for v in variables),
                                rel=1e-6)
    assert float(l2_weight_decay_loss([], 0.1)) == 0.0


def test_l2_weight_decay_loss_float16_and_gradient():
    big = keras.Variable(np.full((1000,), 100.0, "float16"), dtype="float16")
    # 0.5 * 1000 * 100**2 = 5e6 would overflow float16.
    assert float(l2_weight_decay_loss([big], 1.0)) == pytest.approx(5e6)
    var = keras.Variable(np.array([1.0, -2.0, 3.0], "float32"))
    with tf.GradientTape() as tape:
        loss = l2_weight_decay_loss([var], 0.3)
    np.testing.assert_allclose(tape.gradient(loss, var.value).numpy(), 0.3 * var.numpy())


def test_register_optimizer_builds_by_name_with_the_flag_values(registry):
    calls = []

    def rmsprop(learning_rate, momentum, weight_decay, excluded_variables, excluded_names):
        calls.append((learning_rate, momentum, weight_decay, list(excluded_variables), list(excluded_names)))
        return keras.optimizers.RMSprop(learning_rate, momentum=momentum)

    register_optimizer("rmsprop", rmsprop)
    assert {"adam", "lars", "momentum", "rmsprop"} <= set(OPTIMIZERS)
    assert not uses_optimizer_weight_decay("rmsprop")  # Its decay goes in the loss.
    var = keras.Variable(np.ones(2, "float32"))
    opt = build_optimizer("rmsprop", np.float64(0.5), momentum=0.25, weight_decay=0.1, excluded_variables=[var],
                          excluded_names=["bias"])
    assert isinstance(opt, keras.optimizers.RMSprop)
    assert calls == [(0.5, 0.25, 0.1, [var], ["bias"])]
    assert type(calls[0][0]) is float  # NumPy floats become Python floats (Keras rejects them).
    with pytest.raises(ValueError, match=re.escape(str(sorted(OPTIMIZERS)))):
        build_optimizer("sgd", 0.1)


def test_register_optimizer_weight_decay_flag_duplicates_and_overwrite(registry):
    def decoupled(learning_rate, momentum, weight_decay, excluded_variables, excluded_names):
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)

    register_optimizer("adamw", decoupled, applies_weight_decay=True)
    assert uses_optimizer_weight_decay("adamw")
    assert build_optimizer("adamw", 0.1, weight_decay=0.01).weight_decay == pytest.approx(0.01)
    with pytest.raises(ValueError, match="'adamw' is already registered.*overwrite=True"):
        register_optimizer("adamw", decoupled)
    with pytest.raises(ValueError, match="'lars' is already registered"):
        register_optimizer("lars", decoupled)
    assert isinstance(build_optimizer("lars", 0.1), LARS)
    register_optimizer("adamw", decoupled, overwrite=True)  # Now without applies_weight_decay.
    assert not uses_optimizer_weight_decay("adamw")
