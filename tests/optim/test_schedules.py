"""Learning-rate scaling, step counts and WarmUpAndCosineDecay (optim.schedules) vs closed forms and Keras."""

import math

import numpy as np
import pytest

import keras
import tensorflow as tf

from tf_simclr.optim.schedules import (
    WarmUpAndCosineDecay,
    scale_learning_rate,
    total_train_steps,
    warmup_steps_for,
)


def closed_form(step, peak, warmup, total):
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def test_scale_learning_rate():
    assert scale_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scale_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scale_learning_rate(0.1, 256, "linear") == pytest.approx(0.1)
    assert scale_learning_rate(0.5, 9, "sqrt") == pytest.approx(1.5)
    with pytest.raises(ValueError, match="scaling='cubic'"):
        scale_learning_rate(0.1, 256, "cubic")
    with pytest.raises(ValueError, match="batch_size=0"):
        scale_learning_rate(0.1, 0, "linear")


@pytest.mark.parametrize(
    "num_examples, batch, epochs, steps",
    [(50000, 512, 100, 0), (1281167, 4096, 100, 0), (60000, 256, 10, 0), (1000, 7, 3, 0),
     (50000, 512, 100, 123)],
)
def test_total_and_warmup_steps_follow_reference(num_examples, batch, epochs, steps):
    # The reference's expressions, written out literally.
    expected_total = steps or (num_examples * epochs // batch + 1)
    assert total_train_steps(num_examples, batch, epochs, steps) == expected_total
    for warmup_epochs in (0, 0.5, 1, 10):
        expected = int(round(warmup_epochs * num_examples // batch))
        assert warmup_steps_for(num_examples, batch, warmup_epochs) == expected


def test_step_counts_known_values():
    assert total_train_steps(50000, 512, 100) == 9766  # 5_000_000 // 512 + 1
    assert total_train_steps(1281167, 4096, 100) == 31279
    assert warmup_steps_for(50000, 512, 10) == 976
    assert warmup_steps_for(1281167, 4096, 0.5) == 156
    with pytest.raises(ValueError, match="train_batch_size=0"):
        total_train_steps(10, 0, 1)


@pytest.mark.parametrize("dtype", ["int64", "int32", "float32"])
def test_schedule_matches_closed_form(dtype):
    peak, warmup, total = 2.4, 10, 50
    schedule = WarmUpAndCosineDecay(peak, warmup, total)
    checks = {0: 0.0, 5: peak / 2, 10: peak, 30: peak / 2, 50: 0.0, 80: 0.0}
    for step, value in checks.items():
        got = float(schedule(np.array(step, dtype)))
        assert got == pytest.approx(value, abs=1e-6), step
    steps = np.arange(0, 61)
    got = np.array([float(schedule(np.array(s, dtype))) for s in steps])
    want = [closed_form(s, peak, warmup, total) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_schedule_matches_keras_cosine_decay_with_warmup():
    # A second code path: Keras's own CosineDecay with a linear warmup from 0.
    ours = WarmUpAndCosineDecay(0.8, 7, 40)
    keras_sched = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=33, warmup_target=0.8, warmup_steps=7
    )
    for step in range(0, 45):
        assert float(ours(step)) == pytest.approx(float(keras_sched(step)), abs=1e-6)


def test_no_warmup_and_degenerate_cosine():
    no_warmup = WarmUpAndCosineDecay(1.0, 0, 10)
    assert float(no_warmup(0)) == pytest.approx(1.0)
    assert float(no_warmup(5)) == pytest.approx(0.5, abs=1e-6)
    only_warmup = WarmUpAndCosineDecay(1.0, 4, 4)  # The reference would give NaN here.
    assert [float(only_warmup(s)) for s in range(6)] == pytest.approx([0, 0.25, 0.5, 0.75, 0, 0])
    with pytest.raises(ValueError, match="total_steps=3"):
        WarmUpAndCosineDecay(1.0, 5, 3)
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        WarmUpAndCosineDecay(1.0, -1, 3)


def test_schedule_under_tf_function_jit():
    schedule = WarmUpAndCosineDecay(1.5, 4, 20)
    fn = tf.function(lambda s: schedule(s), jit_compile=True)
    for step in (0, 2, 4, 12, 20, 25):
        got = float(fn(tf.constant(step, tf.int64)))
        assert got == pytest.approx(closed_form(step, 1.5, 4, 20), abs=1e-6)


def test_schedule_serialization_and_optimizer_use():
    schedule = WarmUpAndCosineDecay(0.6, 3, 12, name="lr")
    config = schedule.get_config()
    assert config == {"peak_learning_rate": 0.6, "warmup_steps": 3, "total_steps": 12,
                      "name": "lr"}
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(clone, WarmUpAndCosineDecay) and clone.get_config() == config
    # The optimizer evaluates it at its iteration count.
    opt = keras.optimizers.SGD(schedule)
    var = keras.Variable(np.zeros(2, "float32"))
    opt.apply([np.ones(2, "float32")], [var])
    opt.apply([np.ones(2, "float32")], [var])
    assert float(opt.learning_rate) == pytest.approx(closed_form(2, 0.6, 3, 12))
