"""Accuracy of the supervised head on the eval split: what `--mode=eval` and `train_then_eval` report.

Writes `result.json` and `result_<step>.json` to the model_dir, as the
reference. Top-5 accuracy is reported only for datasets of more than 5 classes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

from tf_simclr.config import Config
from tf_simclr.storage import atomic, fs

log = logging.getLogger("tf_simclr")


def evaluate_checkpoint(config: Config, model=None, strategy=None, checkpoint: Optional[str] = None, *,
                        source=None) -> dict:
    """Top-1 (top-5) accuracy and loss of the supervised head on the eval split, at a checkpoint.

    Args:
        config: The run's config.
        model: A model of the run to restore into; built from the config if None.
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
        checkpoint: The checkpoint to score; defaults to the newest in model_dir.
        source: The opened dataset; opened here if None.
    """
    import tensorflow as tf

    from tf_simclr.data import sources
    from tf_simclr.models import factory
    from tf_simclr.storage import checkpoint as ckpt_lib

    strategy = strategy or tf.distribute.get_strategy()
    t = config.train
    if source is None:
        source = sources.load_source(config.data.dataset, config.data.data_dir, splits=[config.data.eval_split])
    with strategy.scope():
        if model is None:
            model = factory.model_from_config(config, source.num_classes or None,
                                              device_augment=config.data.augment_on == "device")
        if not getattr(model, "compiled", False):
            model.compile(jit_compile=False)
        path = ckpt_lib.resolve_checkpoint(checkpoint or t.model_dir)
        step = int(ckpt_lib.restore_checkpoint(path, model, None)["step"])
    return evaluate_model(config, model, strategy, step=step, source=source)


def evaluate_model(config: Config, model, strategy=None, *, step: int, source=None) -> dict:
    """Top-1 (top-5) accuracy and loss of `model`'s supervised head on the eval split, recorded as `step`'s."""
    import tensorflow as tf

    from tf_simclr.data import pipeline, sources
    from tf_simclr.distribute import datasets

    strategy = strategy or tf.distribute.get_strategy()
    t = config.train
    if source is None:
        source = sources.load_source(config.data.dataset, config.data.data_dir, splits=[config.data.eval_split])
    if not getattr(model, "compiled", False):
        with strategy.scope():
            model.compile(jit_compile=False)
    views = pipeline.Views.eval(config.model.image_size)
    dataset = datasets.distributed_dataset(config, source, strategy, config.data.eval_split, views, t.eval_batch_size,
                                          flag="--eval_batch_size")
    with warnings.catch_warnings():  # Keras warns that a finite eval set "ran out of data": it is meant to.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        results = model.evaluate(dataset, steps=t.eval_steps or None, return_dict=True, verbose=0)
    results = {k: float(v) for k, v in results.items()}
    results["global_step"] = step
    for name in ("result.json", f"result_{step}.json"):
        atomic.write_json(fs.join(t.model_dir, name), results)
    log.debug("Eval at step %d: %s", step, results)
    return results
