"""The linear probe: multinomial logistic regression on frozen, standardized features.

The SimCLR paper's linear evaluation protocol, on extracted features so that it
runs in seconds instead of a full training run.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import keras
import numpy as np

from tf_simclr.evaluation.checks import check_features, check_labels, to_numpy

log = logging.getLogger("tf_simclr")


def standardize_features(train_features: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Zero-mean, unit-variance features using the training set's statistics.

    Constant features (std 0) are only centred, so they cannot blow up to inf.
    """
    mean = train_features.mean(axis=0, dtype=np.float64)
    std = train_features.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    return tuple(((x - mean) / std).astype(np.float32) for x in (train_features,) + others)


# Penalties the frozen-feature report chooses among, each row for itself: raw pixels want about 1e-2 and
# SimCLR features 1e-5 (Fashion-MNIST, 2026-12-07), so one fixed value would handicap one of them.
PROBE_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
VALIDATION_FRACTION = 1 / 6  # 10,000 of Fashion-MNIST's or CIFAR's 60,000 / 50,000 training images.


def choose_l2(features: np.ndarray, labels: np.ndarray, *, num_classes: int, grid=PROBE_L2_GRID,
              validation_fraction: float = VALIDATION_FRACTION, epochs: int = 30, seed: int = 0) -> dict:
    """The L2 penalty whose probe scores best on a share of the training examples held out from its training.

    The linear-evaluation protocol of SimCLR's transfer experiments: the penalty is
    tuned on a validation split carved out of the training split, never on the test
    split, and then the probe is trained again on all training examples. Ties go to
    the stronger penalty.

    Returns:
        `{"l2": chosen, "validation_accuracy": {str(l2): accuracy, ...}, "num_validation": n}`.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1). Received: {validation_fraction}")
    grid = sorted({float(l2) for l2 in grid})  # Weak to strong; the tie rule below, not the order, decides.
    if not grid:
        raise ValueError("grid must name at least one L2 penalty.")
    n = len(labels)
    n_val = int(round(n * validation_fraction))
    if n_val < 1 or n - n_val < 1:
        raise ValueError(f"Choosing the probe's L2 penalty needs at least 2 labelled training examples; got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    held, kept = order[:n_val], order[n_val:]
    results = linear_eval_per_l2(features[kept], labels[kept], features[held], labels[held], num_classes=num_classes,
                                 l2s=grid, epochs=epochs, seed=seed)
    scores = {l2: result["top_1_accuracy"] for l2, result in zip(grid, results)}
    best = max(grid, key=lambda l2: (scores[l2], l2))
    log.info("Linear probe: L2 %g chosen on %d held-out training examples (%s)", best, n_val,
             ", ".join(f"{l2:g}: {100 * a:.1f}%" for l2, a in scores.items()))
    return {"l2": best, "validation_accuracy": {f"{l2:g}": a for l2, a in scores.items()},
            "num_validation": n_val}


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k largest logits (k must be below the class count)."""
    if k >= logits.shape[1]:
        raise ValueError(f"Top-{k} accuracy of {logits.shape[1]} classes is 1 by construction; report it only for k < classes.")
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def linear_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 30,
    l2: float = 1e-5,
    learning_rate: float = 0.05,
    batch_size: Optional[int] = None,
    standardize: bool = True,
    seed: int = 0,
) -> dict:
    """Multinomial logistic regression on frozen features (the linear probe).

    A single zero-initialized Keras `Dense` layer is trained with Adam on
    mini-batches (a cosine-decayed learning rate, reshuffled each epoch with a
    numpy generator seeded by `seed`), minimizing

        mean softmax cross-entropy + l2 * ||W||^2        (bias not penalized).

    This is scikit-learn's `LogisticRegression(C=1 / (2 * l2 * N_train))`
    objective. Zero initialization makes the seed's only role the batch order,
    so the same seed gives the same result. 60k x 64 features train in seconds
    on two CPU cores.

    Args:
        train_features, test_features: `[N, D]` features (e.g. `extract_features`).
        train_labels, test_labels: `[N]` ints in `[0, num_classes)`.
        num_classes: Number of classes.
        epochs: Passes over the training set. Defaults to 30.
        l2: L2 penalty on the weights. Defaults to 1e-5.
        learning_rate: Adam's initial learning rate. Defaults to 0.05.
        batch_size: Examples per step (capped at N_train). Defaults to
            N_train / 50 clipped to [32, 1024]: about 50 steps per epoch, so
            small label fractions get as many updates as large sets.
        standardize: Standardize with the training set's mean and std first
            (logistic regression on raw ResNet features converges slowly).
            Defaults to True.
        seed: Seed of the batch order. Defaults to 0.

    Returns:
        dict with `top_1_accuracy`, `top_5_accuracy` (only with more than 5
        classes) on the test set, and `train_accuracy`.
    """
    return linear_eval_per_l2(train_features, train_labels, test_features, test_labels, num_classes=num_classes,
                              l2s=(l2,), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                              standardize=standardize, seed=seed)[0]


def linear_eval_per_l2(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    l2s,
    epochs: int = 30,
    learning_rate: float = 0.05,
    batch_size: Optional[int] = None,
    standardize: bool = True,
    seed: int = 0,
) -> list[dict]:
    """`linear_eval` at each penalty of `l2s` (its results, in that order), the probes trained side by side.

    One Keras model holds a probe per penalty and minimizes the sum of their
    objectives. Each probe's weights get only their own objective's gradient, the
    probes share the batches and the learning-rate schedule, and Adam's update is
    elementwise, so each trains as it would alone (the tests compare it with
    separate fits), at about the cost of one fit: tuning the penalty on a grid
    costs a second probe fit, not one per grid value.
    """
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int. Received: epochs={epochs!r}")
    l2s = [float(l2) for l2 in l2s]
    if not l2s:
        raise ValueError("l2s must name at least one L2 penalty.")
    for l2 in l2s:
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
    if num_classes < 2:
        raise ValueError(f"A linear probe needs at least 2 classes. Received: num_classes={num_classes}")
    x_train = check_features("train_features", train_features)
    x_test = check_features("test_features", test_features)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"Train and test features differ in width: {x_train.shape[1]} vs {x_test.shape[1]}.")
    y_train = check_labels("train_labels", train_labels, x_train.shape[0], num_classes)
    y_test = check_labels("test_labels", test_labels, x_test.shape[0], num_classes)
    if standardize:
        x_train, x_test = standardize_features(x_train, x_test)

    n = x_train.shape[0]
    if batch_size is None:
        batch_size = int(np.clip(n // 50, 32, 1024))
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None. Received: batch_size={batch_size}")
    batch_size = int(min(batch_size, n))
    steps_per_epoch = n // batch_size  # Full batches only: one compiled shape; the order changes each epoch.
    total_steps = steps_per_epoch * epochs
    probes = len(l2s)
    penalties = np.repeat(np.asarray(l2s, np.float32), num_classes)  # One per output column, probe by probe.
    dense = keras.layers.Dense(
        probes * num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        kernel_regularizer=_ColumnL2(penalties) if penalties.any() else None,
        name="linear_probe",
    )
    inputs = keras.Input((x_train.shape[1],))
    probe = keras.Model(inputs, dense(inputs), name="linear_probe")
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1))
    probe.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=_summed_cross_entropy(probes, num_classes),
        jit_compile=keras.backend.backend() == "jax",  # Eager JAX runs op by op; TF XLA would only add compile time.
    )
    rng = np.random.default_rng(seed)
    y_train32 = y_train.astype(np.int32)
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            probe.train_on_batch(x_train[idx], y_train32[idx])
    log.info("linear_eval: %d steps on %d x %d features, %d penalt%s, in %.1f s", total_steps, n, x_train.shape[1],
             probes, "y" if probes == 1 else "ies", time.perf_counter() - start)

    kernels = to_numpy(dense.kernel).reshape(x_train.shape[1], probes, num_classes)
    biases = to_numpy(dense.bias).reshape(probes, num_classes)
    results = []
    for p in range(probes):
        train_logits = x_train @ kernels[:, p] + biases[p]
        test_logits = x_test @ kernels[:, p] + biases[p]
        result = {
            "top_1_accuracy": float(np.mean(np.argmax(test_logits, axis=1) == y_test)),
            "train_accuracy": float(np.mean(np.argmax(train_logits, axis=1) == y_train)),
        }
        if num_classes > 5:
            result["top_5_accuracy"] = top_k_accuracy(test_logits, y_test, 5)
        results.append(result)
    return results


class _ColumnL2(keras.regularizers.Regularizer):
    """`sum_j penalties[j] * ||W[:, j]||^2`: Keras's `L2` regularizer with a penalty per output column."""

    def __init__(self, penalties):
        self.penalties = np.asarray(penalties, np.float32)

    def __call__(self, weights):
        return keras.ops.sum(keras.ops.square(weights) * self.penalties)

    def get_config(self):
        return {"penalties": self.penalties.tolist()}


def _summed_cross_entropy(probes: int, num_classes: int):
    """Loss of `probes` side-by-side softmax regressions: the sum over probes of each one's cross-entropy.

    A sum, not Keras's mean over outputs, so each probe's gradient is its own objective's, unscaled.
    """

    def loss(labels, logits):
        logits = keras.ops.reshape(logits, (-1, probes, num_classes))
        labels = keras.ops.reshape(keras.ops.cast(labels, "int32"), (-1, 1))
        labels = keras.ops.repeat(labels, probes, axis=1)
        per_probe = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return keras.ops.sum(per_probe, axis=1)

    return loss
