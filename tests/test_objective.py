"""NT-Xent against an independent NumPy implementation, on 1 and 2 replicas."""

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import objective


def numpy_nt_xent(hidden, temperature, hidden_norm=True):
    """The paper's per-anchor form (eq. 1), written independently of the reference's layout.

    Anchor i in [0, 2N) has positive (i + N) mod 2N; every other vector is a negative.
    The reference reports the sum of both views' means, i.e. twice the 2N-anchor mean.
    """
    z = hidden.astype(np.float64)
    if hidden_norm:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = z.shape[0]
    n = n2 // 2
    sim = z @ z.T / temperature
    losses = []
    for i in range(n2):
        pos = (i + n) % n2
        others = [k for k in range(n2) if k != i]
        log_denominator = np.log(np.sum(np.exp(sim[i, others])))
        losses.append(log_denominator - sim[i, pos])
    return 2.0 * np.mean(losses)


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

    losses, grads = strategy.run(tf.function(replica_fn))
    local_losses = [float(v) for v in strategy.experimental_local_results(losses)]
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
