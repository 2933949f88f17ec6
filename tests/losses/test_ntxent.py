"""NT-Xent (losses.ntxent) against NumPy on 1 and 2 replicas, embedding_std, and the LOSSES registry."""

import re

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import helpers
from tf_simclr import losses
from tf_simclr.config import TrainConfig
from tf_simclr.losses import LOSSES, NTXent, build_loss, register_loss
from tf_simclr.losses import ntxent as objective
from tf_simclr.models.factory import build_model

numpy_nt_xent = helpers.numpy_nt_xent


@pytest.fixture
def registry():
    """The LOSSES registry is process-wide: restore it after a test that registers."""
    before = dict(LOSSES)
    yield
    LOSSES.clear()
    LOSSES.update(before)


# ----------------------------------------------------------------------------- contrastive_loss


@pytest.mark.parametrize("temperature,hidden_norm", [(0.1, True), (0.5, True), (1.0, False)])
def test_matches_numpy_single_replica(temperature, hidden_norm):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(16, 8)).astype(np.float32) * (1.0 if hidden_norm else 0.3)
    loss, logits, labels = objective.contrastive_loss(
        tf.constant(hidden), hidden_norm=hidden_norm, temperature=temperature
    )
    np.testing.assert_allclose(float(loss), numpy_nt_xent(hidden, temperature, hidden_norm), rtol=1e-5)
    assert logits.shape == (8, 8) and labels.shape == (8, 16)
    np.testing.assert_array_equal(np.argmax(labels.numpy(), 1), np.arange(8))


def test_identical_views_give_lowest_loss():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 16)).astype(np.float32)
    same = np.concatenate([a, a])
    other = np.concatenate([a, rng.normal(size=(8, 16)).astype(np.float32)])
    loss_same = float(objective.contrastive_loss(tf.constant(same), temperature=0.1)[0])
    loss_other = float(objective.contrastive_loss(tf.constant(other), temperature=0.1)[0])
    assert loss_same < loss_other
    acc, entropy = objective.contrastive_metrics(*objective.contrastive_loss(tf.constant(same), temperature=0.1)[1:])
    assert float(acc) == 1.0 and float(entropy) >= 0.0


def test_symmetric_in_the_two_views():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(12, 4)).astype(np.float32)
    swapped = np.concatenate([h[6:], h[:6]])
    l1 = float(objective.contrastive_loss(tf.constant(h), temperature=0.2)[0])
    l2 = float(objective.contrastive_loss(tf.constant(swapped), temperature=0.2)[0])
    np.testing.assert_allclose(l1, l2, rtol=1e-6)


def test_float16_input_does_not_overflow():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(8, 4)).astype(np.float16)
    loss = float(objective.contrastive_loss(tf.constant(h), temperature=0.1)[0])
    np.testing.assert_allclose(loss, numpy_nt_xent(h.astype(np.float32), 0.1), rtol=1e-3)


def test_metrics_match_numpy():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(10, 6)).astype(np.float32)
    _, logits, labels = objective.contrastive_loss(tf.constant(h), temperature=0.3)
    acc, entropy = objective.contrastive_metrics(logits, labels)
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    ab = z[:5] @ z[5:].T / 0.3
    np.testing.assert_allclose(float(acc), np.mean(np.argmax(ab, 1) == np.arange(5)), rtol=1e-6)
    p = np.exp(ab - ab.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(float(entropy), -np.mean(np.sum(p * np.log(p + 1e-8), 1)), rtol=1e-5)


def test_two_replicas_equal_one_replica_loss_and_gradients(two_cpu_strategy):
    """Each replica holds half the images; summed per-replica gradients of loss/N equal the global ones."""
    strategy = two_cpu_strategy
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 5)).astype(np.float32)  # 8 images; views are x @ w1 and x @ w2.
    w_init = rng.normal(size=(5, 3)).astype(np.float32)
    with strategy.scope():
        w = tf.Variable(w_init)

    def views(images, weights):
        return tf.concat([tf.matmul(images, weights), tf.tanh(tf.matmul(images, weights))], 0)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        local = tf.gather(tf.constant(x), tf.range(4) + 4 * ctx.replica_id_in_sync_group)
        with tf.GradientTape() as tape:
            loss, _, _ = objective.contrastive_loss(views(local, w), temperature=0.5)
            scaled = loss / ctx.num_replicas_in_sync
        return loss, tape.gradient(scaled, w)

    losses_, grads = strategy.run(tf.function(replica_fn))
    local_losses = [float(v) for v in strategy.experimental_local_results(losses_)]
    summed_grad = sum(g.numpy() for g in strategy.experimental_local_results(grads))

    w_single = tf.Variable(w_init)
    with tf.GradientTape() as tape:
        single_loss, _, _ = objective.contrastive_loss(views(tf.constant(x), w_single), temperature=0.5)
    single_grad = tape.gradient(single_loss, w_single).numpy()

    np.testing.assert_allclose(np.mean(local_losses), float(single_loss), rtol=1e-5)
    np.testing.assert_allclose(summed_grad, single_grad, rtol=1e-4, atol=1e-6)
    # And against the independent NumPy value of the whole global batch.
    np.testing.assert_allclose(float(single_loss), numpy_nt_xent(views(tf.constant(x), w_init).numpy(), 0.5), rtol=1e-5)


def test_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        objective.contrastive_loss(tf.ones((4, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="temperature=-1"):
        NTXent(temperature=-1)


# ----------------------------------------------------------------------------- embedding_std


def _numpy_embedding_std(h):
    z = np.asarray(h, np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return float(np.mean(np.std(z, axis=0)))


@pytest.mark.parametrize("dim", [8, 64])
def test_embedding_std_of_random_unit_vectors_is_one_over_sqrt_d(dim):
    h = np.random.default_rng(6).normal(size=(4096, dim)).astype(np.float32)
    got = float(objective.embedding_std(h))
    np.testing.assert_allclose(got, _numpy_embedding_std(h), rtol=1e-5)
    # Uniform on the sphere: every coordinate has mean 0 and variance 1/d.
    np.testing.assert_allclose(got, 1 / np.sqrt(dim), rtol=0.05)


def test_embedding_std_is_zero_for_identical_vectors_and_ignores_scale():
    v = np.random.default_rng(7).normal(size=(1, 16)).astype(np.float32)
    assert float(objective.embedding_std(np.repeat(v, 32, axis=0))) == pytest.approx(0.0, abs=1e-7)
    h = np.random.default_rng(8).normal(size=(32, 16)).astype(np.float32)
    scales = np.random.default_rng(9).uniform(0.1, 10.0, (32, 1)).astype(np.float32)
    np.testing.assert_allclose(float(objective.embedding_std(h * scales)), _numpy_embedding_std(h), rtol=1e-5)


def test_embedding_std_has_no_gradient():
    h = tf.Variable(np.random.default_rng(10).normal(size=(8, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = objective.embedding_std(h)
    assert tape.gradient(value, h) is None


# ----------------------------------------------------------------------------- NTXent


def test_ntxent_logs_its_metric_names_against_numpy():
    h = np.random.default_rng(11).normal(size=(12, 6)).astype(np.float32)
    loss, logs = NTXent(temperature=0.2)({"proj_head_output": tf.constant(h)})
    assert tuple(logs) == NTXent.metric_names == ("contrast_loss", "contrast_acc", "contrast_entropy", "embedding_std")
    np.testing.assert_allclose(float(loss), numpy_nt_xent(h, 0.2), rtol=1e-5)
    np.testing.assert_allclose(float(logs["contrast_loss"]), float(loss))
    np.testing.assert_allclose(float(logs["embedding_std"]), _numpy_embedding_std(h), rtol=1e-5)
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    np.testing.assert_allclose(float(logs["contrast_acc"]), np.mean(np.argmax(z[:6] @ z[6:].T, 1) == np.arange(6)))


def test_ntxent_from_config_reads_temperature_and_hidden_norm():
    made = NTXent.from_config(TrainConfig(model_dir="/unused", temperature=0.7, hidden_norm=False))
    assert made.temperature == pytest.approx(0.7) and made.hidden_norm is False
    h = np.random.default_rng(12).normal(size=(8, 3)).astype(np.float32) * 0.2
    np.testing.assert_allclose(float(made({"proj_head_output": h})[0]), numpy_nt_xent(h, 0.7, hidden_norm=False), rtol=1e-5)


# ----------------------------------------------------------------------------- Registry


def test_build_loss_default_and_unknown_names_list_the_registered_ones(registry):
    assert "nt_xent" in LOSSES and TrainConfig().loss == "nt_xent"
    assert isinstance(build_loss(TrainConfig(model_dir="/unused")), NTXent)
    register_loss("alignment", lambda config: None)
    names = sorted(LOSSES)
    assert {"alignment", "nt_xent"} <= set(names)
    with pytest.raises(ValueError, match=rf"loss='nope'.*{re.escape(str(names))}.*register_loss"):
        build_loss(TrainConfig(model_dir="/unused", loss="nope"))


def test_register_loss_refuses_duplicates_unless_overwritten(registry):
    with pytest.raises(ValueError, match="'nt_xent' is already registered.*overwrite=True"):
        register_loss("nt_xent", lambda config: None)
    assert LOSSES["nt_xent"] == NTXent.from_config
    register_loss("nt_xent", lambda config: NTXent(temperature=config.temperature * 2), overwrite=True)
    assert build_loss(TrainConfig(model_dir="/unused", temperature=0.25)).temperature == pytest.approx(0.5)


class Alignment:
    """A custom objective: mean squared distance between the two views' unit projections (+ a scaled copy)."""

    metric_names = ("align_loss", "align_half")

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, outputs, labels=None):
        z = ops.normalize(ops.cast(outputs["proj_head_output"], "float32"), axis=-1)
        a, b = ops.split(z, 2, axis=0)
        loss = self.weight * ops.mean(ops.sum(ops.square(a - b), axis=-1))
        return loss, {"align_loss": loss, "align_half": 0.5 * loss}


def test_a_registered_loss_trains_a_step_and_reports_its_metrics(registry):
    seen = []

    def factory(train_config):
        seen.append(train_config.temperature)
        return Alignment(weight=2.0)

    register_loss("alignment", factory)
    objective_ = build_loss(TrainConfig(model_dir="/unused", loss="alignment", temperature=0.3))
    assert isinstance(objective_, Alignment) and seen == [0.3]  # The factory gets the train config.
    model = build_model(helpers.tiny_model_config(), objective=objective_)
    helpers.compile_simclr(model, "momentum", 0.1, weight_decay=0.0)
    x = np.random.default_rng(13).random((4, 16, 16, 6), dtype=np.float32)
    out = model(np.concatenate([x[..., :3], x[..., 3:]]), training=True)  # The step's forward pass (batch stats).
    z = out["proj_head_output"].numpy().astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    expected = 2.0 * np.mean(np.sum((z[:4] - z[4:]) ** 2, axis=1))
    head_kernel = model.projection_head.dense_layers[-1].kernel
    before = head_kernel.numpy().copy()

    logs = model.train_on_batch(x, np.zeros(4, "int32"), return_dict=True)
    assert {"align_loss", "align_half", "total_loss", "weight_decay", "learning_rate"} <= set(logs)
    assert not any(name.startswith("contrast") for name in logs)  # NT-Xent's metrics are gone with it.
    np.testing.assert_allclose(logs["align_loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(logs["align_half"], expected / 2, rtol=1e-4)
    np.testing.assert_allclose(logs["total_loss"], expected, rtol=1e-4)  # No weight decay, no supervised head.
    assert np.linalg.norm(head_kernel.numpy() - before) > 1e-3 * np.linalg.norm(before)


def test_model_from_config_builds_the_registered_loss(registry):
    from tf_simclr.config import Config
    from tf_simclr.models.factory import model_from_config

    register_loss("alignment", lambda config: Alignment(weight=config.temperature))
    config = Config(model=helpers.tiny_model_config(), train=TrainConfig(model_dir="/unused", loss="alignment",
                                                                        temperature=0.4))
    model = model_from_config(config, None)
    assert isinstance(model.objective, Alignment) and model.objective.weight == pytest.approx(0.4)
    assert "align_loss" in model.step_results(0.1)


def test_public_names():
    assert losses.contrastive_loss is objective.contrastive_loss and losses.NTXent is NTXent
