"""Argument checks and conversions shared by the probes: clear errors for features and labels."""

from __future__ import annotations

import numpy as np
from keras import ops


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(ops.convert_to_numpy(x))


def check_features(name: str, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array. Received shape {features.shape}")
    return features


def check_labels(name: str, labels, n: int, num_classes: int) -> np.ndarray:
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
