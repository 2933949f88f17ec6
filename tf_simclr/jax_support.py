"""Training under `KERAS_BACKEND=jax`: data parallelism, the input pipeline, export.

TensorFlow stays installed and still feeds the data (tf.data), writes summaries
and exports SavedModels; JAX runs the model. Under `keras.distribution.DataParallel`
the train step sees the *global* batch as one sharded array, so there is no
per-replica code: `replica.current()` is one replica, batch norm statistics are
global by construction, and the tf.data pipeline is batched to the global batch.

The SavedModel export needs the TensorFlow backend (it traces `tf.function`s), so
a JAX run exports by running `python -m tf_simclr.export` on its checkpoint in a
subprocess with `KERAS_BACKEND=tensorflow`; checkpoints are backend-neutral npz.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Optional

import keras

log = logging.getLogger("tf_simclr")


def is_jax() -> bool:
    """Whether Keras runs on JAX (decided once per process by KERAS_BACKEND)."""
    return keras.backend.backend() == "jax"


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
    """Readies a JAX run; returns the (one-replica, default) `tf.distribute` strategy the rest of `train` uses.

    JAX replaces `tf.distribute`: a multi-replica TensorFlow strategy passed in is
    ignored (with a warning) and JAX's local devices are used instead.
    """
    import tensorflow as tf

    if strategy is not None and strategy.num_replicas_in_sync > 1:
        log.warning(
            "KERAS_BACKEND=jax: ignoring the %d-replica %s; JAX shards each batch over its local devices instead.",
            strategy.num_replicas_in_sync, type(strategy).__name__,
        )
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
    devices = num_devices()
    if global_batch < 1 or global_batch % devices:
        raise ValueError(
            f"{flag}={global_batch} must be a positive multiple of the number of JAX devices ({devices}) "
            "so that every device gets the same share of the batch."
        )


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


def export_checkpoint_in_subprocess(checkpoint: str, export_base: str, keep_max: int = 1, timeout: float = 1800) -> Optional[str]:
    """Exports `checkpoint` to `export_base/<step>/` with `python -m tf_simclr.export` under TensorFlow.

    Returns:
        The module's path, or None (with a logged reason) when the export failed:
        the checkpoint stays usable, `python -m tf_simclr.export --checkpoint ...`
        can be rerun by hand.
    """
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    command = [sys.executable, "-m", "tf_simclr.export", "--checkpoint", checkpoint, "--out", export_base,
               "--keep_max", str(keep_max)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("Skipped the TF-Hub export of %s: running %s failed (%s).", checkpoint, " ".join(command), e)
        return None
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-5:]
        log.warning(
            "Skipped the TF-Hub export of %s: `%s` exited with %d:\n  %s",
            checkpoint, " ".join(command), done.returncode, "\n  ".join(tail),
        )
        return None
    lines = (done.stdout or "").strip().splitlines()
    return lines[-1] if lines else None
