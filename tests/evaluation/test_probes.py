"""Frozen-feature probes: feature extraction, weighted kNN, the linear probe, and evaluate_encoder (both at once)."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

import helpers
from tf_simclr.evaluation import features as features_lib
from tf_simclr.evaluation import knn, linear_probe, report
from tf_simclr.models import build_model

SIZE = 16


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(helpers.tiny_model_config(image_size=SIZE))


def _images(n, seed=0, size=SIZE):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")


# ---------------------------------------------------------------- kNN


def brute_force_knn_scores(train_x, train_y, test_x, k, temperature, num_classes):
    """One test example at a time: sort all cosine similarities, sum exp(sim / T) per class."""
    train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for i, query in enumerate(test_x.astype(np.float64)):
        query = query / np.linalg.norm(query)
        similarity = train_n.astype(np.float64) @ query
        nearest = np.argsort(-similarity)[: min(k, len(train_x))]
        for j in nearest:
            scores[i, train_y[j]] += np.exp(similarity[j] / temperature)
    return scores


def brute_force_accuracy(train_x, train_y, test_x, test_y, k, temperature, num_classes):
    scores = brute_force_knn_scores(train_x, train_y, test_x, k, temperature, num_classes)
    return float(np.mean(np.argmax(scores, axis=1) == test_y))


@pytest.mark.parametrize(
    "k,temperature,batch_size",
    [(1, 0.1, 256), (5, 0.1, 7), (20, 0.5, 3), (200, 0.07, 16)],  # k=200 > 60 train rows: clamped.
)
def test_knn_matches_brute_force(k, temperature, batch_size):
    rng = np.random.default_rng(k)
    train_x = rng.normal(size=(60, 12)).astype("float32") * rng.uniform(0.5, 3, size=(60, 1)).astype("float32")
    train_y = rng.integers(0, 4, size=60)
    test_x = rng.normal(size=(23, 12)).astype("float32")
    expected = brute_force_knn_scores(train_x, train_y, test_x, k, temperature, 4)

    predictions = knn.knn_classify(
        train_x, train_y, test_x, k=k, temperature=temperature, num_classes=4, batch_size=batch_size
    )
    np.testing.assert_array_equal(predictions, np.argmax(expected, axis=1))
    # Scores agree up to the per-row factor exp(-max_sim / T) used against overflow.
    scores = knn.knn_scores(
        train_x, train_y, test_x, k=k, temperature=temperature, num_classes=4, batch_size=batch_size
    )
    np.testing.assert_allclose(
        scores / scores.sum(1, keepdims=True), expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-6
    )


def test_knn_of_grayscale_as_rgb_pixels_matches_brute_force_on_all_channels(monkeypatch):
    """Repeated channels are scored on one copy (same cosines); one differing value keeps all channels."""
    rng = np.random.default_rng(3)
    gray_train, gray_test = rng.uniform(0, 1, (80, 5, 5, 1)), rng.uniform(0, 1, (30, 5, 5, 1))
    train_x, test_x = (np.repeat(g, 3, axis=-1).reshape(len(g), -1).astype("float32") for g in (gray_train, gray_test))
    train_y = rng.integers(0, 4, 80)
    widths = []
    original = knn._l2_normalize
    monkeypatch.setattr(knn, "_l2_normalize", lambda x: (widths.append(int(x.shape[-1])), original(x))[1])
    for x_test in (test_x, np.where(np.arange(test_x.size).reshape(test_x.shape) == 7, 0.5, test_x)):
        widths.clear()
        expected = brute_force_knn_scores(train_x, train_y, x_test, 20, 0.1, 4)
        scores = knn.knn_scores(train_x, train_y, x_test, k=20, temperature=0.1, num_classes=4)
        np.testing.assert_array_equal(np.argmax(scores, 1), np.argmax(expected, 1))
        np.testing.assert_allclose(scores / scores.sum(1, keepdims=True), expected / expected.sum(1, keepdims=True),
                                   rtol=1e-4, atol=1e-6)
        assert set(widths) == ({25} if x_test is test_x else {75}), widths


def test_knn_k_larger_than_train_set_is_every_training_example_voting():
    rng = np.random.default_rng(3)
    train_x, train_y = rng.normal(size=(15, 8)), rng.integers(0, 3, size=15)
    test_x = rng.normal(size=(10, 8))
    clamped = knn.knn_scores(train_x, train_y, test_x, k=1000, num_classes=3)
    # Independent expectation in NumPy: all 15 examples vote with exp(sim / T), shifted by the row's max similarity.
    train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test_n = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    similarity = test_n @ train_n.T
    weights = np.exp((similarity - similarity.max(axis=1, keepdims=True)) / 0.1)
    expected = np.stack([weights[:, train_y == c].sum(axis=1) for c in range(3)], axis=1)
    np.testing.assert_allclose(clamped, expected, rtol=1e-4, atol=1e-7)
    # With every example voting, each row's scores cover all training examples.
    assert np.all(scores_positive(clamped, train_y))


def scores_positive(scores, train_y):
    present = np.bincount(train_y, minlength=scores.shape[1]) > 0
    return (scores > 0) == present[None, :]


def test_knn_tiny_temperature_is_nearest_neighbour_and_finite():
    """exp(sim / 0.001) overflows float32; the max-shift keeps scores finite and the 1-NN decides."""
    rng = np.random.default_rng(4)
    train_x, train_y = rng.normal(size=(50, 6)), rng.integers(0, 5, size=50)
    test_x = rng.normal(size=(30, 6))
    scores = knn.knn_scores(train_x, train_y, test_x, k=10, temperature=1e-3, num_classes=5)
    assert np.all(np.isfinite(scores))
    cos = (test_x / np.linalg.norm(test_x, axis=1, keepdims=True)) @ (
        train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(np.argmax(scores, axis=1), train_y[np.argmax(cos, axis=1)])


def test_knn_accuracy_on_clusters_and_label_errors():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(3, 16)) * 5
    train_y, test_y = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    train_x = centers[train_y] + rng.normal(size=(300, 16))
    test_x = centers[test_y] + rng.normal(size=(100, 16))
    assert knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=3) > 0.97
    # Shuffled labels: chance level, so the accuracy above is not a constant.
    assert knn.knn_accuracy(train_x, rng.permutation(train_y), test_x, test_y, num_classes=3) < 0.6
    with pytest.raises(ValueError, match="num_classes=3"):
        knn.knn_classify(train_x, np.where(train_y == 0, -1, train_y), test_x, num_classes=3)
    with pytest.raises(ValueError, match="k must be"):
        knn.knn_classify(train_x, train_y, test_x, k=0, num_classes=3)


# ---------------------------------------------------------------- Linear probe


def _gaussian_classes(n, num_classes, dim, noise, seed, means=None):
    rng = np.random.default_rng(seed)
    if means is None:
        means = np.random.default_rng(99).normal(size=(num_classes, dim))
    y = rng.integers(0, num_classes, n)
    x = means[y] + noise * rng.normal(size=(n, dim))
    # Uneven scales and offsets: what standardization is for.
    x = x * np.geomspace(0.01, 100, dim) + 7.0
    return x.astype("float32"), y


def _separable(n, rng, w, margin=0.5):
    """Points labelled by the argmax of a linear map, keeping only those with a margin."""
    x = rng.normal(size=(3 * n, w.shape[0]))
    logits = np.sort(x @ w, axis=1)
    x = x[logits[:, -1] - logits[:, -2] > margin][:n]
    return x.astype("float32"), np.argmax(x @ w, axis=1)


def test_linear_eval_separable_reaches_100_percent():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 4))
    (x_train, y_train), (x_test, y_test) = _separable(1000, rng, w), _separable(300, rng, w)
    result = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=4, epochs=30, l2=0.0)
    assert result["train_accuracy"] >= 0.995
    assert result["top_1_accuracy"] >= 0.99
    # 4 classes <= 5: top-5 is 1 by construction, so it is not reported (and refused if asked for).
    assert "top_5_accuracy" not in result
    with pytest.raises(ValueError, match="1 by construction"):
        linear_probe.top_k_accuracy(np.zeros((2, 4)), np.zeros(2, int), 5)
    # The same features with shuffled labels are not separable: the probe cannot fit them.
    shuffled = linear_probe.linear_eval(x_train, rng.permutation(y_train), x_test, y_test, num_classes=4, epochs=5)
    assert shuffled["train_accuracy"] < 0.5


def test_linear_eval_matches_sklearn_logistic_regression():
    l2, n = 1e-4, 4000
    x_train, y_train = _gaussian_classes(n, 6, 24, noise=1.6, seed=1)
    x_test, y_test = _gaussian_classes(2000, 6, 24, noise=1.6, seed=2)
    result = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=6, l2=l2, seed=0)

    mean, std = x_train.mean(0), x_train.std(0)
    # Same objective: sklearn minimizes C * sum(CE) + ||W||^2 / 2 = N*C * (mean CE + ||W||^2 / (2 N C)).
    sk = LogisticRegression(C=1.0 / (2 * l2 * n), max_iter=2000).fit((x_train - mean) / std, y_train)
    sk_test = sk.score((x_test - mean) / std, y_test)
    sk_train = sk.score((x_train - mean) / std, y_train)
    assert 0.6 < sk_test < 0.95, "the problem should be neither trivial nor hopeless"
    assert abs(result["top_1_accuracy"] - sk_test) < 0.015, (result, sk_test)
    assert abs(result["train_accuracy"] - sk_train) < 0.015, (result, sk_train)
    # Top-5 of 6 classes independently: the true class is not the least likely one.
    logits = sk.decision_function((x_test - mean) / std)
    sk_top5 = np.mean(np.any(np.argsort(logits, 1)[:, 1:] == y_test[:, None], axis=1))
    assert abs(result["top_5_accuracy"] - sk_top5) < 0.01


def test_linear_eval_is_deterministic_and_standardization_matters():
    x_train, y_train = _gaussian_classes(800, 4, 12, noise=1.5, seed=3)
    x_test, y_test = _gaussian_classes(400, 4, 12, noise=1.5, seed=4)
    a = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=4, epochs=3, seed=7)
    b = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=4, epochs=3, seed=7)
    assert a == b
    raw = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=4, epochs=3, standardize=False)
    # Features spread over 4 orders of magnitude: Adam on raw features lags far behind.
    assert raw["top_1_accuracy"] < a["top_1_accuracy"] - 0.05, (raw, a)


def test_linear_eval_errors_name_the_bad_value():
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match="num_classes=2"):
        linear_probe.linear_eval(x, y + 1, x, y, num_classes=2)
    with pytest.raises(ValueError, match="differ in width"):
        linear_probe.linear_eval(x, y, np.zeros((10, 4)), y, num_classes=2)
    with pytest.raises(ValueError, match="epochs=0"):
        linear_probe.linear_eval(x, y, x, y, num_classes=2, epochs=0)


def test_probes_trained_side_by_side_score_as_each_alone():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x.astype(np.float32)[:900], y[:900]
    grid = (0.3, 1e-5, 1e-2, 0.0)  # Unsorted, with 0 (no penalty): each result must stay with its own penalty.
    side_by_side = linear_probe.linear_eval_per_l2(x[:600], y[:600], x[600:], y[600:], num_classes=10, l2s=grid,
                                                   epochs=10, seed=2)
    alone = [linear_probe.linear_eval(x[:600], y[:600], x[600:], y[600:], num_classes=10, l2=l2, epochs=10, seed=2)
             for l2 in grid]
    assert len({(r["top_1_accuracy"], r["train_accuracy"]) for r in alone}) >= 3, alone  # A mix-up would show.
    for l2, together, apart in zip(grid, side_by_side, alone):
        assert together.keys() == apart.keys()
        for key in together:  # 300 and 600 examples: one example is 1/300; float noise may move one, not more.
            assert abs(together[key] - apart[key]) <= 1 / 300 + 1e-9, (l2, key, together, apart)
    with pytest.raises(ValueError, match="at least one"):
        linear_probe.linear_eval_per_l2(x, y, x, y, num_classes=10, l2s=())
    with pytest.raises(ValueError, match="l2=-0.1"):
        linear_probe.linear_eval_per_l2(x, y, x, y, num_classes=10, l2s=(1e-3, -0.1))


def _sklearn_holdout_accuracy(x, y, held, kept, l2):
    """scikit-learn's accuracy on the held-out rows, trained on the kept ones with the probe's objective at l2."""
    x_fit, x_held = linear_probe.standardize_features(x[kept], x[held])
    sk = LogisticRegression(C=1.0 / (2 * l2 * len(kept)), max_iter=3000).fit(x_fit, y[kept])
    return sk.score(x_held, y[held])


def test_choose_l2_picks_a_penalty_scikit_learn_also_scores_best_on_the_same_held_out_rows():
    n = 1200
    x, y = _gaussian_classes(n, 3, 4, noise=1.0, seed=5)
    x = np.concatenate([x, np.random.default_rng(6).normal(size=(n, 800)).astype(np.float32)], axis=1)  # Noise.
    grid = (1e-5, 1e-3, 1e-1)
    chosen = linear_probe.choose_l2(x, y, num_classes=3, grid=grid, seed=3)
    assert chosen["num_validation"] == n // 6 and set(chosen["validation_accuracy"]) == {"1e-05", "0.001", "0.1"}
    order = np.random.default_rng(3).permutation(n)  # The split choose_l2 documents: its seed's permutation.
    held, kept = order[:n // 6], order[n // 6:]
    sklearn = {l2: _sklearn_holdout_accuracy(x, y, held, kept, l2) for l2 in grid}
    assert sklearn[chosen["l2"]] >= max(sklearn.values()) - 0.02, (chosen, sklearn)
    assert chosen["l2"] >= 1e-3, chosen  # 800 noise features on 1,000 examples: a weak penalty overfits.


def test_choose_l2_breaks_ties_towards_the_stronger_penalty():
    x, y = np.ones((60, 3), np.float32), np.arange(60) % 2  # Nothing to learn: every penalty scores the same.
    chosen = linear_probe.choose_l2(x, y, num_classes=2, grid=(1e-5, 1e-2, 1e-3), epochs=2)
    assert len(set(chosen["validation_accuracy"].values())) == 1 and chosen["l2"] == 1e-2


def test_choose_l2_errors_name_the_bad_value():
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match="validation_fraction"):
        linear_probe.choose_l2(x, y, num_classes=2, validation_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 labelled"):
        linear_probe.choose_l2(x[:1], y[:1], num_classes=2)
    with pytest.raises(ValueError, match="at least one"):
        linear_probe.choose_l2(x, y, num_classes=2, grid=())


def test_standardize_features_uses_train_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(100, 3)) * [1, 10, 0] + [0, 5, 3]  # Third column constant.
    test = rng.normal(size=(20, 3))
    train_s, test_s = linear_probe.standardize_features(train, test)
    np.testing.assert_allclose(train_s.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train_s.std(0), [1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(test_s, (test - train.mean(0)) / np.where(train.std(0) > 0, train.std(0), 1), rtol=1e-5)


# ---------------------------------------------------------------- Feature extraction


def test_extract_features_matches_a_direct_call(tiny_model, caplog):
    images, labels = _images(10), np.arange(10) % 3
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)  # Last batch is partial.
    with caplog.at_level(logging.INFO, logger="tf_simclr"):
        features, out_labels = features_lib.extract_features(tiny_model, ds, log_every=2)
    expected = tiny_model(images, training=False)
    np.testing.assert_allclose(features, expected["final_avg_pool"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out_labels, labels)
    assert features.dtype == np.float32 and out_labels.dtype == np.int64
    assert "2 batches, 8 examples" in caplog.text

    projections, _ = features_lib.extract_features(tiny_model, ds, key="proj_head_output", max_batches=2)
    np.testing.assert_allclose(projections, expected["proj_head_output"].numpy()[:8], rtol=1e-5, atol=1e-5)


def test_extract_features_uses_inference_mode(tiny_model):
    """Batch statistics would make an example's features depend on its batch mates."""
    images = _images(8, seed=1)
    alone, _ = features_lib.extract_features(tiny_model, [(images[:1], np.zeros(1))])
    in_batch, _ = features_lib.extract_features(tiny_model, [(images, np.zeros(8))])
    np.testing.assert_allclose(alone[0], in_batch[0], rtol=1e-4, atol=1e-5)


def test_extract_features_callables_dicts_and_errors(tiny_model):
    images, labels = _images(6, size=8), np.arange(6)
    flat = lambda x: tf.reshape(x, (tf.shape(x)[0], -1))  # noqa: E731
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(4)
    features, out_labels = features_lib.extract_features(flat, ds)
    np.testing.assert_allclose(features, images.reshape(6, -1))
    np.testing.assert_array_equal(out_labels, labels)
    # Multi-dimensional outputs are flattened per example.
    maps, _ = features_lib.extract_features(lambda x: {"map": x}, ds, key="map")
    assert maps.shape == (6, 8 * 8 * 3)
    with pytest.raises(KeyError, match="available"):
        features_lib.extract_features(lambda x: {"map": x}, ds, key="final_avg_pool")
    with pytest.raises(ValueError, match="mode='eval'"):
        features_lib.extract_features(tiny_model, [(np.zeros((2, SIZE, SIZE, 6), "float32"), np.zeros(2))])
    with pytest.raises(ValueError, match="no batches"):
        features_lib.extract_features(flat, [])
    # The raw-pixel baseline is the flattened images.
    np.testing.assert_allclose(np.asarray(features_lib.raw_pixels(images)), images.reshape(6, -1))


# ---------------------------------------------------------------- Both (evaluation.report.evaluate_encoder)


def test_evaluate_encoder_separates_informative_from_random_features():
    rng = np.random.default_rng(0)
    num_classes, dim = 3, 16
    means = rng.normal(size=(num_classes, dim)) * 4

    def dataset(n, seed):
        r = np.random.default_rng(seed)
        y = r.integers(0, num_classes, n)
        x = (means[y] + r.normal(size=(n, dim))).astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(64), y

    train_ds, _ = dataset(600, 1)
    test_ds, _ = dataset(200, 2)
    informative = report.evaluate_encoder(lambda x: x, train_ds, test_ds, num_classes=3, k=20, linear_epochs=10)
    assert informative["linear_top_1"] > 0.95 and informative["knn_top_1"] > 0.95
    assert informative["num_train"] == 600 and informative["num_test"] == 200 and informative["feature_dim"] == dim
    assert "linear_top_5" not in informative  # 3 classes.

    noise = lambda x: tf.random.stateless_normal(tf.shape(x), seed=[1, 2])  # noqa: E731
    uninformative = report.evaluate_encoder(noise, train_ds, test_ds, num_classes=3, k=20, linear_epochs=10)
    assert uninformative["linear_top_1"] < 0.6 and uninformative["knn_top_1"] < 0.6


def test_evaluate_encoder_on_a_model_drops_unlabeled(tiny_model, caplog):
    images = _images(12, seed=2)
    labels = np.array([0, 1, -1, 0, 1, 0, 1, 0, -1, 1, 0, 1])
    test_labels = np.arange(6) % 2
    train_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)
    test_ds = tf.data.Dataset.from_tensor_slices((images[:6], test_labels)).batch(5)
    with caplog.at_level(logging.WARNING, logger="tf_simclr"):
        result = report.evaluate_encoder(tiny_model, train_ds, test_ds, num_classes=2, k=3, linear_epochs=2)
    assert "dropping 2 unlabeled train" in caplog.text
    assert result["num_train"] == 10 and result["num_test"] == 6 and result["feature_dim"] == 64
    assert "linear_top_5" not in result  # 2 classes.
    for name in ("linear_top_1", "linear_train_top_1", "knn_top_1"):
        assert 0.0 <= result[name] <= 1.0
    # Independently: the model's own features of the 10 labelled images, scored by the brute-force kNN and by
    # the probe directly (the same numbers, so the extraction and the dropping fed the right rows).
    keep = labels >= 0
    x_train = np.asarray(tiny_model(images[keep], training=False)["final_avg_pool"])
    x_test = np.asarray(tiny_model(images[:6], training=False)["final_avg_pool"])
    assert result["knn_top_1"] == pytest.approx(
        brute_force_accuracy(x_train, labels[keep], x_test, test_labels, 3, 0.1, 2), abs=1e-6)
    probe = linear_probe.linear_eval(x_train, labels[keep], x_test, test_labels, num_classes=2, epochs=2)
    assert result["linear_top_1"] == pytest.approx(probe["top_1_accuracy"], abs=1e-6)
    assert result["linear_train_top_1"] == pytest.approx(probe["train_accuracy"], abs=1e-6)
