"""The distillation loss against NumPy: softened cross-entropy, the tau^2 factor, the labelled mix, its gradient."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import numpy_log_softmax as _log_softmax
from tf_simclr.losses import Distillation, distillation_loss
from tf_simclr.losses.distillation import agreement


def _numpy_distill(teacher, student, tau, squared):
    targets = np.exp(_log_softmax(teacher / tau))
    loss = -(targets * _log_softmax(student / tau)).sum(axis=-1).mean()
    return loss * tau**2 if squared else loss


def _numpy_ce_sum_over_batch(labels, logits):
    """Cross-entropy summed over labelled examples, divided by the batch size (unlabelled ones add 0)."""
    valid = labels >= 0
    ce = -_log_softmax(logits)[np.arange(len(labels)), np.maximum(labels, 0)]
    return ce[valid].sum() / len(labels)


RNG = np.random.default_rng(3)
TEACHER = RNG.normal(scale=3.0, size=(16, 10)).astype(np.float64)
STUDENT = RNG.normal(scale=2.0, size=(16, 10)).astype(np.float64)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("squared", [True, False])
def test_loss_equals_numpy(tau, squared):
    got = float(distillation_loss(tf.constant(TEACHER, tf.float32), tf.constant(STUDENT, tf.float32), tau, squared))
    np.testing.assert_allclose(got, _numpy_distill(TEACHER, STUDENT, tau, squared), rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_objective_mixes_labelled_cross_entropy(tau, weight):
    labels = RNG.integers(0, 10, 16)
    labels[::3] = -1  # Unlabelled examples count in distillation only.
    objective = Distillation(temperature=tau, label_weight=weight, temperature_squared=True)
    outputs = {"logits_sup": tf.constant(STUDENT, tf.float32), "teacher_logits": tf.constant(TEACHER, tf.float32)}
    loss, logs = objective(outputs, tf.constant(labels))
    expected = weight * _numpy_ce_sum_over_batch(labels, STUDENT) + (1 - weight) * _numpy_distill(TEACHER, STUDENT, tau, True)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    same = (TEACHER.argmax(-1) == STUDENT.argmax(-1)).mean()
    np.testing.assert_allclose(float(logs["teacher_agreement"]), same)
    assert ("sup_loss" in logs) == bool(weight) and set(logs) == set(objective.metric_names)


def test_labels_are_not_read_without_label_weight():
    outputs = {"logits_sup": tf.constant(STUDENT, tf.float32), "teacher_logits": tf.constant(TEACHER, tf.float32)}
    loss, _ = Distillation()(outputs, None)  # No labels at all.
    np.testing.assert_allclose(float(loss), _numpy_distill(TEACHER, STUDENT, 1.0, True), rtol=1e-5)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_gradient_is_the_closed_form_and_stops_at_the_teacher(tau):
    """d loss / d student = tau^2 (p_S - p_T) / (tau B) with the tau^2 factor; the teacher gets no gradient."""
    teacher, student = tf.Variable(TEACHER, dtype=tf.float32), tf.Variable(STUDENT, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = distillation_loss(teacher, student, tau, True)
    d_student, d_teacher = tape.gradient(loss, [student, teacher])
    p_s, p_t = np.exp(_log_softmax(STUDENT / tau)), np.exp(_log_softmax(TEACHER / tau))
    np.testing.assert_allclose(d_student.numpy(), tau * (p_s - p_t) / len(STUDENT), rtol=1e-4, atol=1e-7)
    assert d_teacher is None


def test_agreement_counts_matching_top_classes():
    teacher = tf.constant([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    student = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(agreement(teacher, student)) == 0.5


@pytest.mark.parametrize("kwargs, flag", [({"temperature": 0.0}, "--distill_temperature"),
                                          ({"label_weight": 1.5}, "--distill_label_weight")])
def test_bad_values_name_their_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        Distillation(**kwargs)
