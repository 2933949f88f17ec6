"""The supervised head's loss (losses.supervised): cross-entropy and accuracy over labelled examples only."""

import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.losses import supervised_loss


def test_supervised_loss_ignores_unlabeled_examples():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], "float32")
    loss, acc = supervised_loss(np.array([0, -1, 1]), logits)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(float(loss), -(np.log(p[0, 0]) + np.log(p[2, 1])) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(acc), 0.5)


def test_matches_keras_cross_entropy_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 5)).astype("float32") * 3
    labels = rng.integers(0, 5, 16)
    loss, acc = supervised_loss(labels, logits)
    want = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)  # A second code path.
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(loss), helpers.numpy_softmax_cross_entropy(labels, logits)[0], rtol=1e-5)
    np.testing.assert_allclose(float(acc), np.mean(np.argmax(logits, 1) == labels))


def test_all_unlabeled_gives_zero_not_nan_and_float16_is_computed_in_float32():
    loss, acc = supervised_loss(np.array([-1, -1]), np.ones((2, 3), "float32"))
    assert float(loss) == 0.0 and float(acc) == 0.0
    logits = np.array([[60000.0, -60000.0]], "float16")  # log-softmax in float16 would overflow.
    loss, _ = supervised_loss(np.array([1]), logits)
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(120000.0, rel=1e-3)
