"""Choosing a `tf.distribute` strategy (TensorFlow-only glue).

The reference defaults to `--use_tpu=True` and fails without a TPU. We pick what
the machine has and say so: a TPU when one is named, MirroredStrategy over local
GPUs when there are several, the default (one-device) strategy otherwise.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import tensorflow as tf

log = logging.getLogger("tf_simclr")


def create_strategy(
    *,
    use_tpu: bool = False,
    tpu_name: Optional[str] = None,
    tpu_zone: Optional[str] = None,
    gcp_project: Optional[str] = None,
    master: Optional[str] = None,
    num_gpus: Optional[int] = None,
) -> tf.distribute.Strategy:
    """Returns the strategy this machine supports and logs the choice.

    Args:
        use_tpu: Use a Cloud TPU. Ignored, with a warning, when no TPU is named by
            `tpu_name`, `master` or the TPU_NAME environment variable (the reference's
            default is True; a first run on a laptop must still work).
        tpu_name, tpu_zone, gcp_project, master: Where the TPU is.
        num_gpus: Local GPUs to use (None = all).
    """
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
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus is not None:
        if num_gpus > len(gpus):
            raise ValueError(f"--num_gpus={num_gpus} but this machine has {len(gpus)} GPUs.")
        gpus = gpus[:num_gpus]
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy([g.name for g in gpus])
        log.info("Strategy: MirroredStrategy over %d GPUs", len(gpus))
    else:
        strategy = tf.distribute.get_strategy()
        log.info("Strategy: default, one replica on %s", gpus[0].name if gpus else "the CPU")
    return strategy
