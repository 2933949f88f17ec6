"""tf_simclr: SimCLR v1/v2 self-supervised pretraining and transfer learning for TensorFlow / Keras 3.

The package, one area per folder (docs/architecture.md draws it):

    config      Config and its sections: every field is also a flag
    jobs        run(config): a whole job, checked before any work
    data        sources (TFDS, image folders, in-memory arrays, label subsets) and the tf.data pipeline
    augment     one augmentation spec; host (tf.data) and device (keras.ops) implementations
    models      backbones by name, heads, SimCLRModel, the one model factory
    losses      NT-Xent and the supervised loss; losses by name
    optim       LARS, optimizers by name, schedules, the run's plan, weight decay, precision
    distribute  strategies, replica context, JAX data parallelism
    steps       one optimizer step, on TensorFlow and on JAX
    training    the trainer, restore, callbacks, preemption
    evaluation  linear probe, kNN, frozen-feature report with baselines, eval loop
    export      TF-Hub modules and loading them
    visualize   learning curves and embeddings as pictures
    storage     crash-safe files and checkpoints on any filesystem
    cli         the command line (run.py, `tf_simclr`, `python -m tf_simclr`)

    import tf_simclr
    config = tf_simclr.Config(model=tf_simclr.ModelConfig(resnet_depth=18), ...)
    tf_simclr.run(config)

The model, losses, optimizers and on-device augmentation import with Keras alone
(any backend, no TensorFlow); under KERAS_BACKEND=jax, pretraining on in-memory
arrays (`ArraySource`, `--dataset=idx:DIR`) and the frozen-feature report run
without TensorFlow too. Names that need TensorFlow load on first use.
"""

import importlib

__version__ = "0.2.0"

# Every public name, and the module it lives in. Loaded on first use: `import tf_simclr`
# stays light (the command line sets up logging before TensorFlow loads), and the
# model, losses, optimizers and on-device augmentation work with Keras alone.
_PUBLIC = {
    "Config": "tf_simclr.config", "DataConfig": "tf_simclr.config", "ModelConfig": "tf_simclr.config",
    "RunConfig": "tf_simclr.config", "TrainConfig": "tf_simclr.config",
    "NTXent": "tf_simclr.losses", "contrastive_loss": "tf_simclr.losses", "contrastive_metrics": "tf_simclr.losses",
    "register_loss": "tf_simclr.losses",
    "ProjectionHead": "tf_simclr.models", "SimCLRModel": "tf_simclr.models", "SupervisedHead": "tf_simclr.models",
    "build_model": "tf_simclr.models", "register_backbone": "tf_simclr.models",
    "LARS": "tf_simclr.optim", "WarmUpAndCosineDecay": "tf_simclr.optim", "build_optimizer": "tf_simclr.optim",
    "register_optimizer": "tf_simclr.optim", "scale_learning_rate": "tf_simclr.optim",
    # With in-memory arrays under KERAS_BACKEND=jax these run without TensorFlow (data.arrays).
    "run": "tf_simclr.jobs",
    "train": "tf_simclr.training.trainer",
    "load_source": "tf_simclr.data.sources",
    "ArraySource": "tf_simclr.data.arrays",
    "Views": "tf_simclr.data.views",
    "use_onednn_on_avx2": "tf_simclr.cpu_kernels",  # Before TensorFlow loads (docs/usage.md).
    # These need TensorFlow.
    "build_dataset": "tf_simclr.data.pipeline",
    "load_encoder": "tf_simclr.export.load",
    "export_saved_model": "tf_simclr.export.hub_module",
    "frozen_feature_report": "tf_simclr.evaluation.report",
}


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tf_simclr' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = sorted(_PUBLIC)
