"""Evaluating a frozen encoder: feature extraction, weighted kNN and linear probes.

The two standard ways to score self-supervised features without fine-tuning:

- Weighted k-nearest neighbours on cosine similarity, as InstDisc (Wu et al.
  2018, arXiv:1805.01978) and solo-learn / lightly use for monitoring: cheap, no
  training, no hyper-parameters beyond k and a temperature.
- A linear probe: multinomial logistic regression on frozen, standardized
  features (the SimCLR paper's "linear evaluation protocol", here on extracted
  features so it runs in seconds instead of a full training run).

`evaluate_encoder` runs both; the quickstart uses it to compare a pretrained
encoder against a randomly initialized one (the baseline any learned features
must beat). The mathematics uses only numpy, `keras` and `keras.ops`; TensorFlow
appears only to compile the inference call on the TensorFlow backend.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable, Iterable, Optional, Union

import keras
import numpy as np
from keras import ops

log = logging.getLogger(__name__)

FeatureFn = Callable[[Any], Any]


# ---------------------------------------------------------------- Feature extraction


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(ops.convert_to_numpy(x))


def _select(outputs, key: str):
    """The requested output of a model that returns a dict, or the output itself."""
    if isinstance(outputs, dict):
        if key not in outputs:
            raise KeyError(f"The model's outputs have no {key!r}. Received: key={key!r}; available: {sorted(outputs)}")
        return outputs[key]
    return outputs


# Compiled inference calls per model, so repeated extractions do not retrace.
# Weak keys: the cache must not keep a model alive.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tf_compiled(model: keras.Model, key: str, images) -> FeatureFn:
    """A `tf.function` for this model, output key and image shape (any batch size)."""
    import tensorflow as tf  # Only to compile the call; the math is backend-neutral.

    images = tf.convert_to_tensor(images)
    spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
    signature = (key, tuple(spec.shape.as_list()), spec.dtype.name)
    cache = _COMPILED.setdefault(model, {})
    if signature not in cache:
        model_ref = weakref.ref(model)  # A strong reference would pin the weak key forever.
        cache[signature] = tf.function(
            lambda x: _select(model_ref()(x, training=False), key), input_signature=[spec]
        )
    return cache[signature]


def _inference_fn(model: Union[keras.Model, FeatureFn], key: str) -> FeatureFn:
    """`images -> features` in inference mode, compiled when `model` is a Keras model.

    Eager calls of a ResNet cost several times a compiled call, so Keras models
    are wrapped in `tf.function` (TensorFlow) or `jax.jit` over `stateless_call`
    (JAX); other callables are called as they are (compile them yourself).
    """
    if not isinstance(model, keras.Model):
        return lambda images: _select(model(images), key)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return lambda images: _tf_compiled(model, key, images)(images)
    if backend == "jax":
        import jax

        @jax.jit
        def call(trainable, non_trainable, images):
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
            return _select(outputs, key)

        def run(images):
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return call(trainable, non_trainable, _to_numpy(images))

        return run
    return lambda images: _select(model(images, training=False), key)


def _unpack(batch):
    """(images, labels) from a tuple/list batch or a dict with 'image' and 'label'."""
    if isinstance(batch, dict):
        try:
            return batch["image"], batch["label"]
        except KeyError:
            raise ValueError(f"A dict batch needs 'image' and 'label'. Received keys: {sorted(batch)}") from None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "extract_features needs batches of (images, labels), e.g. from "
        "data.build_dataset(..., is_training=False, mode='eval'). "
        f"Received a batch of type {type(batch).__name__}."
    )


def extract_features(
    model_or_encoder_fn: Union[keras.Model, FeatureFn],
    dataset: Iterable,
    *,
    key: str = "final_avg_pool",
    max_batches: Optional[int] = None,
    log_every: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every example of a batched dataset, with the model in inference mode.

    Args:
        model_or_encoder_fn: A `SimCLRModel`, an encoder (`resnet.resnet(...)`) or
            any Keras model called as `model(images, training=False)`; or any
            callable `images -> dict | array`. Dict outputs are indexed by `key`.
        dataset: Iterable of batches `(images [B, H, W, 3], labels [B])` (e.g. a
            `tf.data.Dataset` from `data.build_dataset(..., mode='eval')`), or of
            dicts with 'image' and 'label'.
        key: Which output to use: 'final_avg_pool' (encoder features, the
            SimCLR linear-eval input), 'proj_head_input', 'proj_head_output', ...
            Outputs with more than 2 dimensions are flattened per example.
        max_batches: Stop after this many batches. Defaults to None (all).
        log_every: Log progress every this many batches (0 = never).

    Returns:
        `(features float32 [N, D], labels int64 [N])` as numpy arrays.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None. Received: max_batches={max_batches}")
    fn = _inference_fn(model_or_encoder_fn, key)
    features, labels = [], []
    count, start = 0, time.perf_counter()
    for step, batch in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            break
        images, batch_labels = _unpack(batch)
        if getattr(images, "shape", None) is not None and len(images.shape) == 4 and images.shape[-1] == 6:
            raise ValueError(
                "Images have 6 channels: two pretraining views stacked. Build the dataset with "
                f"mode='eval' (or is_training=False). Received images of shape {tuple(images.shape)}"
            )
        out = _to_numpy(fn(images)).astype(np.float32, copy=False)
        features.append(out.reshape(out.shape[0], -1))
        labels.append(_to_numpy(batch_labels).astype(np.int64).reshape(-1))
        count += out.shape[0]
        if log_every and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - start
            total = f"/{max_batches}" if max_batches else ""
            log.info("extract_features: %d%s batches, %d examples, %.1f examples/s", step + 1, total, count, count / max(elapsed, 1e-9))
    if not features:
        raise ValueError("The dataset yielded no batches: nothing to extract features from.")
    return np.concatenate(features, axis=0), np.concatenate(labels, axis=0)


# ---------------------------------------------------------------- Weighted kNN


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array. Received shape {features.shape}")
    return features


def _check_labels(name: str, labels, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the features have {n} rows.")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} must be in [0, num_classes={num_classes}). Received e.g. {bad[:5].tolist()}: "
            "drop unlabeled (-1) examples first, or pass the right num_classes."
        )
    return labels


def _l2_normalize(x):
    # Same epsilon convention as tf.math.l2_normalize: zero vectors stay zero.
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def knn_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Per-class weighted-vote scores of each test example (see `knn_classify`).

    Scores are scaled per test example by `exp(-max_sim / temperature)` (which
    leaves the ranking unchanged) so that small temperatures cannot overflow.

    Returns:
        float32 `[N_test, num_classes]`.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int. Received: k={k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    train_features = _check_features("train_features", train_features)
    test_features = _check_features("test_features", test_features)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"Train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}."
        )
    train_labels = _check_labels("train_labels", train_labels, train_features.shape[0], num_classes)
    # With fewer training examples than k, every training example votes.
    k = int(min(k, train_features.shape[0]))
    bank = _l2_normalize(ops.convert_to_tensor(train_features))
    bank_labels = ops.convert_to_tensor(train_labels.astype(np.int32))
    scores = []
    for start in range(0, test_features.shape[0], batch_size):
        queries = _l2_normalize(ops.convert_to_tensor(test_features[start:start + batch_size]))
        similarity = ops.matmul(queries, ops.transpose(bank))  # [b, N_train] cosine similarities.
        top_sim, top_idx = ops.top_k(similarity, k=k)  # Sorted: top_sim[:, 0] is the maximum.
        weights = ops.exp((top_sim - top_sim[:, :1]) / temperature)
        neighbour_labels = ops.take(bank_labels, top_idx, axis=0)  # [b, k]
        # Sum the weights per (row, class) without a [b, k, C] one-hot tensor.
        rows = ops.shape(top_idx)[0]
        segment = ops.arange(rows, dtype="int32")[:, None] * num_classes + neighbour_labels
        summed = ops.segment_sum(
            ops.reshape(weights, (-1,)), ops.reshape(segment, (-1,)), num_segments=int(rows) * num_classes
        )
        scores.append(_to_numpy(ops.reshape(summed, (rows, num_classes))))
    return np.concatenate(scores, axis=0).astype(np.float32)


def knn_classify(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Weighted cosine k-nearest-neighbour predictions (InstDisc, Wu et al. 2018).

    Features are L2-normalized; each test example takes its k most
    cosine-similar training examples, each votes for its class with weight
    `exp(similarity / temperature)`, and the class with the largest summed
    weight wins. Test examples are processed `batch_size` at a time, so memory
    is `O(batch_size * N_train)`, not `O(N_test * N_train)`.

    Args:
        train_features: `[N_train, D]` memory bank.
        train_labels: `[N_train]` ints in `[0, num_classes)`.
        test_features: `[N_test, D]` queries.
        k: Neighbours per query; clamped to `N_train` when larger (every
            training example then votes). Defaults to 200 (InstDisc, solo-learn).
        temperature: Softmax-like temperature of the vote weights. Defaults to 0.1.
        num_classes: Number of classes.
        batch_size: Queries per similarity matrix. Defaults to 256.

    Returns:
        int64 `[N_test]` predicted classes.
    """
    scores = knn_scores(
        train_features, train_labels, test_features,
        k=k, temperature=temperature, num_classes=num_classes, batch_size=batch_size,
    )
    return np.argmax(scores, axis=1).astype(np.int64)


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of `knn_classify` on labelled test features."""
    predictions = knn_classify(
        train_features, train_labels, test_features,
        k=k, temperature=temperature, num_classes=num_classes, batch_size=batch_size,
    )
    test_labels = _check_labels("test_labels", test_labels, predictions.shape[0], num_classes)
    return float(np.mean(predictions == test_labels))


# ---------------------------------------------------------------- Linear probe


def standardize_features(train_features: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Zero-mean, unit-variance features using the training set's statistics.

    Constant features (std 0) are only centred, so they cannot blow up to inf.
    """
    mean = train_features.mean(axis=0, dtype=np.float64)
    std = train_features.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    return tuple(((x - mean) / std).astype(np.float32) for x in (train_features,) + others)


def _top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k largest logits (1.0 when k >= classes)."""
    if k >= logits.shape[1]:
        return 1.0
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
        dict with `top_1_accuracy`, `top_5_accuracy` (1.0 when num_classes <= 5)
        on the test set, and `train_accuracy`.
    """
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int. Received: epochs={epochs!r}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
    if num_classes < 2:
        raise ValueError(f"A linear probe needs at least 2 classes. Received: num_classes={num_classes}")
    x_train = _check_features("train_features", train_features)
    x_test = _check_features("test_features", test_features)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"Train and test features differ in width: {x_train.shape[1]} vs {x_test.shape[1]}.")
    y_train = _check_labels("train_labels", train_labels, x_train.shape[0], num_classes)
    y_test = _check_labels("test_labels", test_labels, x_test.shape[0], num_classes)
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
    dense = keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
        name="linear_probe",
    )
    inputs = keras.Input((x_train.shape[1],))
    probe = keras.Model(inputs, dense(inputs), name="linear_probe")
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1))
    probe.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    rng = np.random.default_rng(seed)
    y_train32 = y_train.astype(np.int32)
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            probe.train_on_batch(x_train[idx], y_train32[idx])
    log.info("linear_eval: %d steps on %d x %d features in %.1f s", total_steps, n, x_train.shape[1], time.perf_counter() - start)

    kernel, bias = (_to_numpy(v) for v in (dense.kernel, dense.bias))
    train_logits = x_train @ kernel + bias
    test_logits = x_test @ kernel + bias
    return {
        "top_1_accuracy": float(np.mean(np.argmax(test_logits, axis=1) == y_test)),
        "top_5_accuracy": _top_k_accuracy(test_logits, y_test, 5),
        "train_accuracy": float(np.mean(np.argmax(train_logits, axis=1) == y_train)),
    }


# ---------------------------------------------------------------- Both at once


def evaluate_encoder(
    model: Union[keras.Model, FeatureFn],
    train_ds: Iterable,
    test_ds: Iterable,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    key: str = "final_avg_pool",
    linear_epochs: int = 30,
    l2: float = 1e-5,
    max_batches: Optional[int] = None,
    seed: int = 0,
) -> dict:
    """Scores an encoder's frozen features with a linear probe and weighted kNN.

    Extracts features of both datasets (inference mode), drops unlabeled (-1)
    examples, then runs `linear_eval` and `knn_accuracy` with the training
    features as the probe's training set and the kNN memory bank. Call it on a
    pretrained and on a randomly initialized model to see what pretraining bought.

    Args:
        model: What `extract_features` accepts (e.g. a `SimCLRModel`).
        train_ds, test_ds: Batched `(images, labels)` datasets in eval mode.
        num_classes: Number of classes.
        k, temperature: kNN settings.
        key: Model output used as features. Defaults to 'final_avg_pool'.
        linear_epochs, l2: Linear probe settings.
        max_batches: Cap on batches read from each dataset. Defaults to None.
        seed: Seed of the linear probe's batch order.

    Returns:
        dict with `linear_top_1`, `linear_top_5`, `linear_train_top_1`,
        `knn_top_1`, `num_train`, `num_test` and `feature_dim`.
    """
    x_train, y_train = extract_features(model, train_ds, key=key, max_batches=max_batches)
    x_test, y_test = extract_features(model, test_ds, key=key, max_batches=max_batches)
    x_train, y_train = _labelled(x_train, y_train, "train")
    x_test, y_test = _labelled(x_test, y_test, "test")
    linear = linear_eval(
        x_train, y_train, x_test, y_test, num_classes=num_classes, epochs=linear_epochs, l2=l2, seed=seed
    )
    knn = knn_accuracy(x_train, y_train, x_test, y_test, k=k, temperature=temperature, num_classes=num_classes)
    return {
        "linear_top_1": linear["top_1_accuracy"],
        "linear_top_5": linear["top_5_accuracy"],
        "linear_train_top_1": linear["train_accuracy"],
        "knn_top_1": knn,
        "num_train": int(x_train.shape[0]),
        "num_test": int(x_test.shape[0]),
        "feature_dim": int(x_train.shape[1]),
    }


def _labelled(features: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    keep = labels >= 0
    if not keep.all():
        log.warning("evaluate_encoder: dropping %d unlabeled %s examples.", int((~keep).sum()), name)
    if not keep.any():
        raise ValueError(f"The {name} dataset has no labelled examples (all labels are -1); use a labelled split.")
    return features[keep], labels[keep]
