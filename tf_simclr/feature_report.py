"""What pretraining bought: frozen-feature linear probe and kNN, next to a random-init encoder.

The quickstart's last step (and `run.py --feature_eval`). A contrastive loss that
falls proves little by itself; accuracy of a linear probe and of kNN on frozen
features, compared with an encoder of the same shape that never trained, shows
whether the representation is worth keeping.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Optional

import keras

from tf_simclr import data as data_lib
from tf_simclr import evaluate as evaluate_lib
from tf_simclr import model as model_lib
from tf_simclr.config import Config

log = logging.getLogger("tf_simclr")

_BATCH = 500


def _eval_dataset(config: Config, source, split: str):
    return data_lib.build_dataset(
        source, split, batch_size=_BATCH, is_training=False, mode="eval", image_size=config.data.image_size
    )


def frozen_feature_report(
    config: Config,
    model: model_lib.SimCLRModel,
    *,
    max_examples: Optional[int] = None,
    compare_random_init: bool = True,
    k: int = 200,
    temperature: float = 0.1,
    seed: int = 0,
) -> dict:
    """Linear-probe and kNN accuracy of `model`'s encoder (and of a random-init twin) on frozen features.

    Trains the probe and fills the kNN memory on `config.data.train_split`, scores on
    `config.data.eval_split`; writes `feature_eval.json` to the model_dir.

    Args:
        config: The run's config (dataset, splits, image size, model shape).
        model: The trained model.
        max_examples: Use at most this many examples of each split. Defaults to all.
        compare_random_init: Also score a randomly initialized encoder of the same shape.
        k, temperature: kNN settings (InstDisc's protocol: k=200, T=0.1).
        seed: Seed of the random-init encoder and of the probe.

    Returns:
        {"pretrained": {...}, "random_init": {...}} with `linear_top_1`, `knn_top_1`, ...
    """
    source = data_lib.load_source(config.data.dataset, config.data.data_dir,
                                  splits=[config.data.train_split, config.data.eval_split])
    if not source.num_classes:
        raise ValueError(f"{source.name} has no labels: frozen-feature evaluation needs a labelled dataset.")
    max_batches = math.ceil(max_examples / _BATCH) if max_examples else None
    encoders = {"pretrained": model}
    if compare_random_init:
        keras.utils.set_random_seed(seed)
        encoders["random_init"] = model_lib.build_model(config.model)
    report = {}
    for name, encoder in encoders.items():
        log.info("Frozen-feature evaluation of the %s encoder on %s (%s -> %s)", name, source.name,
                 config.data.train_split, config.data.eval_split)
        report[name] = evaluate_lib.evaluate_encoder(
            encoder,
            _eval_dataset(config, source, config.data.train_split),
            _eval_dataset(config, source, config.data.eval_split),
            num_classes=source.num_classes, k=k, temperature=temperature, max_batches=max_batches, seed=seed,
        )
    path = os.path.join(config.train.model_dir, "feature_eval.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return report


def format_report(report: dict) -> str:
    """A small table: one row per encoder, linear-probe and kNN top-1 in percent."""
    lines = [f"{'encoder':<12} {'linear top-1':>12} {'kNN top-1':>10}  (train/test examples)"]
    for name, r in report.items():
        lines.append(f"{name:<12} {100 * r['linear_top_1']:11.1f}% {100 * r['knn_top_1']:9.1f}%  "
                     f"({r['num_train']}/{r['num_test']})")
    return "\n".join(lines)
