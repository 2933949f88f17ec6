"""What pretraining bought a fine-tune on few labels: the same labels without it.

`--few_label_baselines` (with `--train_mode=finetune`) scores, on the same eval
split, two models that use exactly the labelled examples the fine-tune used
(the `--train_label_fraction` draw or `--train_subset_ids`):

* `raw_pixels`: the frozen-feature report's linear probe on the flattened
  pixels of those images (a logistic regression, the first thing a practitioner
  tries), its L2 penalty and standardization chosen by cross-validation on them
  (`choose_probe`);
* `from_scratch`: the same network and the same fine-tuning recipe (optimizer,
  learning rate, epochs, batch, augmentation) from a random init instead of
  `--checkpoint`, every layer trained. It trains in `<model_dir>/from_scratch`.

A fine-tune that does not beat both has not shown that pretraining helped.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from tf_simclr.config import Config
from tf_simclr.storage import atomic, fs

log = logging.getLogger("tf_simclr")

REPORT_FILE = "few_label_baselines.json"
SCRATCH_DIR = "from_scratch"
SCRATCH_INIT_DIR = "from_scratch_init"
L2_GRID = (1e-5, 1e-3, 1e-2, 1e-1)  # Weak to strong; 5-fold CV on a few hundred examples, so 4 values, not 5.


def scratch_config(config: Config) -> Config:
    """The fine-tune's config without its pretrained weights: same recipe, every layer trains.

    It starts from `<model_dir>/from_scratch_init` (`write_random_init`): a fine-tune
    always starts from a checkpoint, and this one holds a freshly initialized network.
    """
    model_dir = config.train.model_dir
    return config.replace(
        train={"checkpoint": fs.join(model_dir, SCRATCH_INIT_DIR), "model_dir": fs.join(model_dir, SCRATCH_DIR),
               "fine_tune_after_block": -1, "export_at_end": False, "knn_monitor_examples": 0},
        run={"few_label_baselines": False, "feature_eval": False},
    )


def write_random_init(config: Config, num_classes: int) -> str:
    """Saves a never-trained network of the config's architecture as `<init dir>/ckpt-0`; returns the dir."""
    import keras

    from tf_simclr.models import factory
    from tf_simclr.storage import checkpoint as ckpt_lib

    if config.train.seed is not None:
        keras.utils.set_random_seed(config.train.seed)
    model = factory.model_from_config(config.replace(train={"train_mode": "pretrain"}), num_classes,
                                      plain_batch_norm=True)
    ckpt_lib.save_checkpoint(config.train.checkpoint, 0, model, meta={"config": config.to_dict(), "random_init": True})
    return config.train.checkpoint


def choose_probe(x: np.ndarray, y: np.ndarray, *, num_classes: int, grid=None, folds: int = 5,
                 seed: int = 0) -> dict:
    """The probe settings (L2 penalty, standardization) with the best stratified `folds`-fold CV accuracy on (x, y).

    With a few hundred examples and thousands of pixels, a logistic regression is
    nearly unregularized at the frozen-feature report's 1e-5 and overfits, and
    standardizing pixels blows up the near-constant ones at the border; a
    practitioner tunes both on the labelled data, so the baseline does too. Ties go
    to the stronger penalty.

    Returns:
        `{"l2": ..., "standardize": ..., "cv_accuracy": ...}`.
    """
    from tf_simclr.evaluation.linear_probe import linear_eval_per_l2

    grid = sorted(L2_GRID if grid is None else grid, reverse=True)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    for label in np.unique(y):  # Stratified: each class spread over the folds.
        members = rng.permutation(np.flatnonzero(y == label))
        fold_of[members] = np.arange(members.size) % folds
    scores = {}
    for standardize in (True, False):
        accuracies = np.zeros((folds, len(grid)))
        for k in range(folds):  # The whole grid in one fit per fold (`linear_eval_per_l2`).
            held = fold_of == k
            results = linear_eval_per_l2(x[~held], y[~held], x[held], y[held], num_classes=num_classes, l2s=grid,
                                         standardize=standardize, seed=seed)
            accuracies[k] = [result["top_1_accuracy"] for result in results]
        for l2, fold_accuracies in zip(grid, accuracies.T):
            scores[(l2, standardize)] = float(np.mean(fold_accuracies))
    best = max(scores, key=lambda key: (scores[key], key[0]))
    log.info("Raw-pixel probe: L2 %g, %s, chosen by %d-fold cross-validation (best of %d settings, %.1f%%)", best[0],
             "standardized" if best[1] else "pixels as they are", folds, len(scores), 100 * scores[best])
    return {"l2": best[0], "standardize": best[1], "cv_accuracy": scores[best]}


def raw_pixel_baseline(config: Config, source) -> dict:
    """A linear probe on the raw pixels of the fine-tune's labelled examples, scored on the eval split.

    The frozen-feature report's probe (softmax regression), its L2 penalty and
    standardization chosen by cross-validation on the labelled examples (`choose_probe`).
    """
    from tf_simclr.data import pipeline, subsets
    from tf_simclr.evaluation.features import extract_features, raw_pixels
    from tf_simclr.evaluation.linear_probe import linear_eval

    d, size = config.data, config.model.image_size
    labelled = subsets.labelled_subset(config, source)
    x_train, y_train = extract_features(raw_pixels, pipeline.eval_dataset(labelled, d.train_split, size))
    x_test, y_test = extract_features(raw_pixels, pipeline.eval_dataset(source, d.eval_split, size))
    seed = config.train.seed or 0
    chosen = choose_probe(x_train, y_train, num_classes=source.num_classes, seed=seed)
    result = linear_eval(x_train, y_train, x_test, y_test, num_classes=source.num_classes, l2=chosen["l2"],
                         standardize=chosen["standardize"], seed=seed)
    return {"linear_top_1": result["top_1_accuracy"], **chosen, "num_train": int(len(y_train)),
            "num_test": int(len(y_test))}


def few_label_baselines(config: Config, source, fine_tuned: Optional[dict] = None, strategy=None) -> dict:
    """Scores `raw_pixels` and `from_scratch` (see the module docstring); writes `few_label_baselines.json`.

    Args:
        config: The fine-tune's config.
        source: The opened dataset.
        fine_tuned: The fine-tune's own eval result (`top_1_accuracy`, ...), put beside the baselines.
        strategy: The `tf.distribute.Strategy` the from-scratch run trains under.

    Returns:
        `{"fine_tuned": top-1, "raw_pixels": top-1, "from_scratch": top-1, "num_labelled": n}`.
    """
    from tf_simclr.evaluation import supervised
    from tf_simclr.training import trainer

    if config.train.train_mode != "finetune":
        raise ValueError("--few_label_baselines compares a fine-tune with its baselines; pass --train_mode=finetune.")
    log.info("Few-label baseline 1/2: a linear probe on the raw pixels of the same labelled images")
    raw = raw_pixel_baseline(config, source)
    log.info("Few-label baseline 2/2: the same network and recipe from random init, in %s",
             fs.join(config.train.model_dir, SCRATCH_DIR))
    scratch = scratch_config(config)
    write_random_init(scratch, source.num_classes)
    model = trainer.train(scratch, strategy, source=source)
    scratch_result = supervised.evaluate_checkpoint(scratch, model, strategy, source=source)
    report = {
        "raw_pixels": raw["linear_top_1"],
        "raw_pixels_probe": {"l2": raw["l2"], "standardize": raw["standardize"]},
        "from_scratch": scratch_result["top_1_accuracy"],
        "num_labelled": raw["num_train"],
        "num_test": raw["num_test"],
    }
    if fine_tuned is not None:
        report["fine_tuned"] = fine_tuned["top_1_accuracy"]
    atomic.write_json(fs.join(config.train.model_dir, REPORT_FILE), report)
    return report


def format_baselines(report: dict) -> str:
    """One line per model, top-1 on the eval split in percent."""
    lines = [f"Few labels ({report['num_labelled']} labelled images; top-1 on {report['num_test']} eval images):"]
    names = {"fine_tuned": "fine-tuned from the checkpoint", "from_scratch": "same network, from scratch",
             "raw_pixels": "linear probe on raw pixels"}
    for key in ("fine_tuned", "from_scratch", "raw_pixels"):
        if key in report:
            probe = report.get("raw_pixels_probe") if key == "raw_pixels" else None
            note = f"  (L2 {probe['l2']:g}, {'standardized' if probe['standardize'] else 'unstandardized'}; " \
                   "chosen by cross-validation)" if probe else ""
            lines.append(f"  {names[key]:<32} {100 * report[key]:5.1f}%{note}")
    return "\n".join(lines)
