"""What pretraining bought: frozen-feature linear probe and kNN, beside the baselines a practitioner checks first.

The quickstart's last step (`--feature_eval`). A contrastive loss that falls
proves little by itself. The same protocol (the same probe, standardization,
train and test examples, and the probe's L2 penalty chosen for each input on
training examples held out from its training) runs on three inputs:

* `pretrained`: the trained encoder's `final_avg_pool` features;
* `random_init`: an encoder of the same shape that never trained;
* `raw_pixels`: the images themselves, flattened at the size the encoder sees.

An encoder that does not beat the raw pixels has not shown anything yet.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterable, Optional, Sequence, Union

import keras
import numpy as np

from tf_simclr.config import Config
from tf_simclr.evaluation.features import FeatureFn, extract_features, raw_pixels
from tf_simclr.evaluation.knn import knn_accuracy
from tf_simclr.evaluation.linear_probe import PROBE_L2_GRID, choose_l2, linear_eval
from tf_simclr.storage import atomic, fs

log = logging.getLogger("tf_simclr")

REPORT_FILE = "feature_eval.json"
ROWS = ("pretrained", "random_init", "raw_pixels")
_BATCH = 500


def evaluate_features(x_train, y_train, x_test, y_test, *, num_classes: int, k: int = 200, temperature: float = 0.1,
                      linear_epochs: int = 30, l2: Union[float, Sequence[float]] = PROBE_L2_GRID, seed: int = 0) -> dict:
    """Linear probe and weighted kNN on extracted features (unlabeled, -1, examples dropped).

    `l2` is the probe's penalty, or a grid to choose it from on a held-out share of
    the training examples (`choose_l2`); the default grid, so that every row gets
    the penalty that suits it and a baseline is not handicapped by one fixed value.
    """
    x_train, y_train = _labelled(x_train, y_train, "train")
    x_test, y_test = _labelled(x_test, y_test, "test")
    chosen = None
    if np.ndim(l2):  # A grid; a number (NumPy scalars too) is used as it is.
        chosen = choose_l2(x_train, y_train, num_classes=num_classes, grid=l2, epochs=linear_epochs, seed=seed)
        l2 = chosen["l2"]
    l2 = float(l2)
    linear = linear_eval(x_train, y_train, x_test, y_test, num_classes=num_classes, epochs=linear_epochs, l2=l2,
                         seed=seed)
    knn = knn_accuracy(x_train, y_train, x_test, y_test, k=k, temperature=temperature, num_classes=num_classes)
    result = {
        "linear_top_1": linear["top_1_accuracy"],
        "linear_train_top_1": linear["train_accuracy"],
        "knn_top_1": knn,
        "num_train": int(x_train.shape[0]),
        "num_test": int(x_test.shape[0]),
        "feature_dim": int(x_train.shape[1]),
        "linear_l2": l2,
    }
    if chosen is not None:
        result["linear_l2_validation"] = chosen["validation_accuracy"]
    if "top_5_accuracy" in linear:
        result["linear_top_5"] = linear["top_5_accuracy"]
    return result


def evaluate_encoder(
    model: Union[keras.Model, FeatureFn],
    train_ds: Iterable,
    test_ds: Iterable,
    *,
    num_classes: int,
    key: str = "final_avg_pool",
    max_batches: Optional[int] = None,
    **probe_args,
) -> dict:
    """Scores an encoder's frozen features with a linear probe and weighted kNN (`evaluate_features`).

    Args:
        model: What `extract_features` accepts (a `SimCLRModel`, any Keras model,
            or a callable `images -> features`, e.g. `features.raw_pixels`).
        train_ds, test_ds: Batched `(images, labels)` datasets in eval mode.
        num_classes: Number of classes.
        key: Model output used as features. Defaults to 'final_avg_pool'.
        max_batches: Cap on batches read from each dataset. Defaults to None.
        **probe_args: `k`, `temperature`, `linear_epochs`, `l2`, `seed` of `evaluate_features`.

    Returns:
        dict with `linear_top_1`, `linear_top_5` (more than 5 classes only),
        `linear_train_top_1`, `knn_top_1`, `num_train`, `num_test`, `feature_dim`,
        `linear_l2` (the probe's penalty) and, where it was chosen, `linear_l2_validation`.
    """
    x_train, y_train = extract_features(model, train_ds, key=key, max_batches=max_batches)
    x_test, y_test = extract_features(model, test_ds, key=key, max_batches=max_batches)
    return evaluate_features(x_train, y_train, x_test, y_test, num_classes=num_classes, **probe_args)


def _labelled(features: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    keep = labels >= 0
    if not keep.all():
        log.warning("Frozen-feature evaluation: dropping %d unlabeled %s examples.", int((~keep).sum()), name)
    if not keep.any():
        raise ValueError(f"The {name} dataset has no labelled examples (all labels are -1); use a labelled split.")
    return features[keep], labels[keep]


def frozen_feature_report(
    config: Config,
    model,
    *,
    source=None,
    max_examples: Optional[int] = None,
    rows: Iterable[str] = ROWS,
    seed: int = 0,
    write: bool = True,
) -> dict:
    """Linear-probe and kNN accuracy of `model`'s encoder, a random-init twin and the raw pixels.

    Trains the probe and fills the kNN memory on `config.data.train_split`, scores on
    `config.data.eval_split`; writes `feature_eval.json` to the model_dir.

    Args:
        config: The run's config (dataset, splits, image size, model shape).
        model: The trained model.
        source: The opened dataset (`data.load_source`); opened here if None.
        max_examples: Use at most this many examples of each split. Defaults to all.
        rows: Which of `ROWS` to score. Defaults to all three.
        seed: Seed of the random-init encoder and of the probe.
        write: Write `feature_eval.json`.

    Returns:
        `{"pretrained": {...}, "random_init": {...}, "raw_pixels": {...}}` with
        `linear_top_1`, `knn_top_1`, ... (see `evaluate_encoder`).
    """
    from tf_simclr.data import sources
    from tf_simclr.models import factory

    d = config.data
    if source is None:
        source = sources.load_source(d.dataset, d.data_dir, splits=[d.train_split, d.eval_split])
    if not source.num_classes:
        raise ValueError(f"{source.name} has no labels: frozen-feature evaluation needs a labelled dataset.")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise ValueError(f"Unknown report rows {unknown}; choose from {ROWS}.")
    max_batches = math.ceil(max_examples / _BATCH) if max_examples else None
    size = config.model.image_size
    train_ds = sources.eval_batches(source, d.train_split, size, _BATCH)
    test_ds = sources.eval_batches(source, d.eval_split, size, _BATCH)
    inputs = {}
    for row in rows:
        if row == "pretrained":
            inputs[row] = model
        elif row == "random_init":
            keras.utils.set_random_seed(seed)
            inputs[row] = factory.build_model(dataclasses.replace(config.model, global_bn=False))
        else:
            inputs[row] = raw_pixels
    report = {}
    for row, encoder in inputs.items():
        log.info("Frozen-feature evaluation of %s on %s (%s -> %s)", row.replace("_", " "), source.name,
                 d.train_split, d.eval_split)
        report[row] = evaluate_encoder(encoder, train_ds, test_ds, num_classes=source.num_classes,
                                       max_batches=max_batches, seed=seed)
    if write:
        atomic.write_json(fs.join(config.train.model_dir, REPORT_FILE), report)
    return report


def format_report(report: dict) -> str:
    """A small table: one row per input, linear-probe and kNN top-1 in percent, feature width."""
    lines = [f"{'features':<12} {'linear top-1':>12} {'kNN top-1':>10} {'dim':>6} {'probe L2':>8}  (train/test examples)"]
    for name, r in report.items():
        l2 = f"{r['linear_l2']:g}" if "linear_l2" in r else "-"
        lines.append(f"{name:<12} {100 * r['linear_top_1']:11.1f}% {100 * r['knn_top_1']:9.1f}% "
                     f"{r['feature_dim']:6d} {l2:>8}  ({r['num_train']}/{r['num_test']})")
    if "pretrained" in report and "raw_pixels" in report:
        gain = 100 * (report["pretrained"]["linear_top_1"] - report["raw_pixels"]["linear_top_1"])
        lines.append(f"pretrained vs raw pixels, linear probe: {gain:+.1f} points")
    return "\n".join(lines)
