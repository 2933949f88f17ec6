"""A run's model with a checkpoint loaded, for evaluation (no optimizer, no training)."""

from __future__ import annotations

from typing import Optional

from tf_simclr.config import Config
from tf_simclr.storage import checkpoint as ckpt_lib


def load_trained_model(config: Config, num_classes: Optional[int], strategy=None, checkpoint: Optional[str] = None):
    """Builds the run's model (`models.factory`) and loads its newest checkpoint (or `checkpoint`), without training.

    Returns:
        `(model, step)`.
    """
    import tensorflow as tf

    from tf_simclr.models import factory

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = factory.model_from_config(config, num_classes, device_augment=config.data.augment_on == "device")
        meta = ckpt_lib.restore_checkpoint(checkpoint or config.train.model_dir, model, None)
    return model, int(meta["step"])

