"""tf_simclr: SimCLR v1/v2 self-supervised pretraining for TensorFlow / Keras 3.

The package, one concern per module:

    config      plain frozen dataclasses (what run.py parses flags into)
    data        datasets (TFDS, image folders) and the tf.data input pipeline
    augment     SimCLR augmentations, per image, in tf.data
    resnet      ResNet v1 encoders (SK, SE, CIFAR stem, fractional widths)
    heads       projection head and supervised (linear) head
    objective   NT-Xent contrastive loss with cross-replica negatives
    lars        the LARS optimizer;  optimizers: name -> optimizer
    schedule    learning-rate scaling, warmup and cosine decay
    model       SimCLRModel: encoder + heads + train_step
    train       the training loop (fit), restore and evaluation
    checkpoint  atomic, backend-neutral checkpoints
    distribute  choosing a tf.distribute strategy;  replica: cross-replica context
    evaluate    frozen-feature protocols (linear probe, kNN);  subsets: label fractions
    export      SavedModel / TF-Hub modules and `load_encoder`

Run a whole configured job with `tf_simclr.train.train(config)` (what run.py does).
"""

from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig
from tf_simclr.heads import ProjectionHead, SupervisedHead
from tf_simclr.lars import LARS
from tf_simclr.model import SimCLRModel, build_model
from tf_simclr.objective import contrastive_loss, contrastive_metrics
from tf_simclr.optimizers import build_optimizer
from tf_simclr.schedule import WarmUpAndCosineDecay, scale_learning_rate

__version__ = "0.1.0"

# The model, loss and optimizer above import with Keras alone (any backend, no
# TensorFlow: e.g. a JAX-only GPU machine); the input pipeline needs TensorFlow
# and is imported on first use.
_NEEDS_TENSORFLOW = {"build_dataset": "tf_simclr.data", "load_source": "tf_simclr.data"}


def __getattr__(name):
    if name in _NEEDS_TENSORFLOW:
        import importlib

        return getattr(importlib.import_module(_NEEDS_TENSORFLOW[name]), name)
    raise AttributeError(f"module 'tf_simclr' has no attribute {name!r}")

__all__ = [
    "Config", "DataConfig", "ModelConfig", "TrainConfig", "build_dataset", "load_source", "ProjectionHead",
    "SupervisedHead", "LARS", "SimCLRModel", "build_model", "contrastive_loss", "contrastive_metrics",
    "build_optimizer", "WarmUpAndCosineDecay", "scale_learning_rate",
]
