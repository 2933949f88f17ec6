"""Choosing a `tf.distribute` strategy, and which process writes files (TensorFlow-only glue).

The reference defaults to `--use_tpu=True` and fails without a TPU. We pick what
the machine has and say so in the log:

- a Cloud TPU when one is named (`--tpu_name`, `--master` or TPU_NAME);
- `MultiWorkerMirroredStrategy` when TF_CONFIG names more than one task (several
  machines, or several processes on one);
- `MirroredStrategy` over the local GPUs when there are several;
- the default one-device strategy otherwise.

Under several workers only the chief writes checkpoints, summaries, results and
exports (`is_chief`); the others compute the same steps and write nothing.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import tensorflow as tf

from tf_simclr import cpu_kernels, keras_internals

log = logging.getLogger("tf_simclr")


def cluster_from_env() -> Optional[dict]:
    """The TF_CONFIG cluster when it names more than one task, else None.

    Raises:
        ValueError: TF_CONFIG is not valid JSON or has no `task`.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}). Received: {raw[:200]!r}") from None
    cluster = config.get("cluster") or {}
    tasks = sum(len(cluster.get(job, [])) for job in ("chief", "worker"))
    if tasks <= 1:
        return None
    task = config.get("task") or {}
    if task.get("type") not in ("chief", "worker") or not isinstance(task.get("index"), int):
        raise ValueError(
            "TF_CONFIG names a cluster but its task is not a chief or worker with an integer index: set "
            '"task": {"type": "worker", "index": <i>}. Received task: ' + json.dumps(task)
        )
    return config


def _limit_gpus(num_gpus: Optional[int]) -> None:
    """Makes only the first `num_gpus` GPUs visible (multi-worker picks up every visible GPU)."""
    if num_gpus is None:
        return
    gpus = tf.config.list_physical_devices("GPU")
    if num_gpus > len(gpus):
        raise ValueError(f"--num_gpus={num_gpus} but this machine has {len(gpus)} GPUs.")
    try:
        tf.config.set_visible_devices(gpus[:num_gpus], "GPU")
    except RuntimeError:  # Devices already initialized in this process.
        log.warning("--num_gpus=%d ignored: TensorFlow's devices were already initialized.", num_gpus)


def create_strategy(
    *,
    use_tpu: bool = False,
    tpu_name: Optional[str] = None,
    tpu_zone: Optional[str] = None,
    gcp_project: Optional[str] = None,
    master: Optional[str] = None,
    num_gpus: Optional[int] = None,
) -> tf.distribute.Strategy:
    """Returns the strategy this machine (or cluster) supports and logs the choice.

    Args:
        use_tpu: Use a Cloud TPU. Ignored, with a warning, when no TPU is named by
            `tpu_name`, `master` or the TPU_NAME environment variable (the reference's
            default is True; a first run on a laptop must still work).
        tpu_name, tpu_zone, gcp_project, master: Where the TPU is.
        num_gpus: GPUs to use on this machine (None = all).
    """
    import keras

    if keras.backend.backend() == "jax":
        from tf_simclr.distribute import jax_parallel

        jax_parallel.hide_accelerators_from_tensorflow()  # Before TF initializes devices: JAX owns the GPUs.
        log.info("Strategy: none (KERAS_BACKEND=jax shards batches over JAX's local devices; TensorFlow only feeds data)")
        return tf.distribute.get_strategy()
    tpu = tpu_name or master or os.environ.get("TPU_NAME")
    if use_tpu and tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu, zone=tpu_zone, project=gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
        log.info("Strategy: TPUStrategy on %s with %d replicas", tpu, strategy.num_replicas_in_sync)
        return strategy
    if use_tpu:
        log.warning("--use_tpu=True but no TPU is named (--tpu_name/--master/TPU_NAME): running on local devices instead.")
    cluster = cluster_from_env()
    if cluster is not None:
        _limit_gpus(num_gpus)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = cluster["task"]
        workers = sum(len(cluster["cluster"].get(job, [])) for job in ("chief", "worker"))
        log.info(
            "Strategy: MultiWorkerMirroredStrategy, %s %d of %d workers (from TF_CONFIG), %d replicas in all%s",
            task["type"], task["index"], workers, strategy.num_replicas_in_sync,
            "; this task is the chief (writes checkpoints, summaries and exports)" if is_chief(strategy) else "",
        )
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus is not None:
        if num_gpus > len(gpus):
            raise ValueError(f"--num_gpus={num_gpus} but this machine has {len(gpus)} GPUs.")
        gpus = gpus[:num_gpus]
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy([g.name for g in gpus])
        log.info("Strategy: MirroredStrategy over %d GPUs (%d replicas)", len(gpus), strategy.num_replicas_in_sync)
    else:
        strategy = tf.distribute.get_strategy()
        if gpus:
            log.info("Strategy: default, one replica on %s", gpus[0].name)
        else:
            kernels = cpu_kernels.describe()
            log.info("Strategy: default, one replica on the CPU%s", f" ({kernels})" if kernels else "")
    return strategy


def is_multi_worker(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether `strategy` (default: the current one) spans several worker processes."""
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and keras_internals.in_multi_worker_mode(strategy)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process writes the run's files: the `chief` task, else worker 0.

    Single-process strategies (default, Mirrored, TPU) always write.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().jobs
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is what a multi-worker step raises when another worker died."""
    return isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.AbortedError))
