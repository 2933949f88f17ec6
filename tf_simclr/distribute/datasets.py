"""Input pipelines for a strategy: one per input context under `tf.distribute`, or one of global batches on JAX.

Under JAX, an in-memory `ArraySource` pretraining with augmentation on the
device is fed from NumPy (`ArraySource.training_batches`): no tf.data, so the
run needs no TensorFlow.
"""

from __future__ import annotations

from tf_simclr.config import Config
from tf_simclr.data import arrays, views as views_lib
from tf_simclr.distribute import jax_parallel


def distributed_dataset(config: Config, source, strategy, split: str, views: views_lib.Views, global_batch: int,
                        *, skip_batches: int = 0, flag: str = "--train_batch_size"):
    """A pipeline per input context (TensorFlow), or one of global batches (JAX shards them)."""
    t = config.train
    if jax_parallel.is_jax() and views.on_device and arrays.is_array_source(source):
        jax_parallel.check_global_batch(global_batch, flag)
        return source.training_batches(split, global_batch, seed=t.seed, skip_batches=skip_batches)
    from tf_simclr.data import pipeline  # Needs TensorFlow (jax_parallel.check_without_tensorflow said so earlier).

    deterministic = views.training and t.deterministic
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(input_context):
        return pipeline.build_dataset(
            source, split, views, input_context.get_per_replica_batch_size(global_batch),
            input_context=input_context, seed=t.seed, deterministic=deterministic, cache=config.data.cache_dataset,
            # Each step takes one per-replica batch per replica, spread over the input pipelines.
            skip_batches=skip_batches * replicas // input_context.num_input_pipelines,
        )

    if jax_parallel.is_jax():
        return jax_parallel.global_batch_dataset(dataset_fn, global_batch, flag=flag)
    return pipeline.distribute_dataset(strategy, dataset_fn, global_batch, flag=flag)
