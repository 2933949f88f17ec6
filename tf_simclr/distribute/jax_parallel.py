"""Data parallelism under `KERAS_BACKEND=jax`: devices, global batches.

When TensorFlow is installed it still feeds the data (tf.data) and writes
summaries while JAX runs the model; without it (`has_tensorflow()` False) an
in-memory array source feeds NumPy batches and `LocalDevices` stands in for the
one-replica strategy. Under `keras.distribution.DataParallel` the train
step sees the *global* batch as one sharded array, so there is no per-replica
code: `replica.current()` is one replica, batch norm statistics are global by
construction, and the tf.data pipeline is batched to the global batch.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import keras

log = logging.getLogger("tf_simclr")


def is_jax() -> bool:
    """Whether Keras runs on JAX (decided once per process by KERAS_BACKEND)."""
    return keras.backend.backend() == "jax"


def has_tensorflow() -> bool:
    """Whether TensorFlow can be imported (a JAX-only machine has none)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


class LocalDevices:
    """The strategy of a JAX run without TensorFlow: one replica to `train` (JAX shards the batch), a no-op scope."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def check_without_tensorflow(config, source, *, whole_job: bool = True) -> None:
    """On a machine without TensorFlow, only what runs on Keras/JAX and NumPy: pretraining on arrays, feature eval.

    That is `--mode=train --train_mode=pretrain --augment_on=device` on an in-memory
    `--dataset=idx:<folder>` (or `ArraySource`), with `--feature_eval` and the kNN
    monitor; tf.data pipelines, TF-Hub exports and the other modes need TensorFlow.
    `whole_job=False` (the trainer's own call) checks the training run only.
    """
    from tf_simclr.data import arrays

    if not is_jax() or has_tensorflow():
        return
    d, t, r = config.data, config.train, config.run
    problems = [f"--mode={r.mode} (use train)"] if whole_job and r.mode != "train" else []
    if t.train_mode != "pretrain":
        problems.append(f"--train_mode={t.train_mode} (use pretrain)")
    if d.augment_on != "device":
        problems.append(f"--augment_on={d.augment_on} (use device)")
    if not arrays.is_array_source(source):
        problems.append(f"--dataset={d.dataset} (use idx:<folder of idx files>, read into memory)")
    if t.train_label_fraction or t.train_subset_ids or (whole_job and r.few_label_baselines):
        problems.append("label subsets (--train_label_fraction, --train_subset_ids, --few_label_baselines)")
    if problems:
        raise ValueError("TensorFlow is not installed, and only pretraining on in-memory arrays runs without it; "
                         f"change {'; '.join(problems)}, or install TensorFlow.")


def hide_accelerators_from_tensorflow() -> None:
    """Keeps TensorFlow (tf.data, summaries) on the CPU so JAX owns every GPU's memory."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices were already initialized; harmless on CPU.
        pass


def setup_data_parallel(devices: Optional[list] = None):
    """Shards batches over the local JAX devices (`keras.distribution.DataParallel`) when there are several.

    Must run before the model is built, so that variables are created replicated
    on the device mesh. With one device it sets nothing and returns None.

    Returns:
        The `DataParallel` distribution set, or None.
    """
    import jax

    devices = list(devices) if devices is not None else jax.local_devices()
    if len(devices) <= 1:
        return None
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    log.info("JAX data parallelism over %d devices (%s)", len(devices), devices[0].platform)
    return distribution


def prepare_jax_training(strategy=None):
    """Readies a JAX run; returns the one-replica strategy the rest of `train` uses.

    JAX replaces `tf.distribute`: a multi-replica TensorFlow strategy passed in is
    ignored (with a warning) and JAX's local devices are used instead. The
    strategy returned is TensorFlow's default one, or `LocalDevices` without it.
    """
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        log.warning(
            "KERAS_BACKEND=jax: ignoring the %d-replica %s; JAX shards each batch over its local devices instead.",
            strategy.num_replicas_in_sync, type(strategy).__name__,
        )
    if not has_tensorflow():
        setup_data_parallel()
        return LocalDevices()
    import tensorflow as tf

    hide_accelerators_from_tensorflow()
    setup_data_parallel()
    return tf.distribute.get_strategy()


def num_devices() -> int:
    """Devices one global batch is split over (1 without a distribution)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    return int(distribution.device_mesh.devices.size)


def check_global_batch(global_batch: int, flag: str = "--train_batch_size") -> None:
    """A global batch must split evenly over the devices, or JAX cannot shard it."""
    from tf_simclr.data.views import check_batch_divides

    check_batch_divides(global_batch, num_devices(), flag)


def global_batch_dataset(dataset_fn, global_batch: int, flag: str = "--train_batch_size"):
    """The tf.data pipeline batched to the whole global batch (no `tf.distribute` input sharding).

    Args:
        dataset_fn: `input_context -> tf.data.Dataset`, batched with
            `input_context.get_per_replica_batch_size(global_batch)`.
        global_batch: The batch every step trains on.
    """
    import tensorflow as tf

    check_global_batch(global_batch, flag)
    return dataset_fn(tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1))
