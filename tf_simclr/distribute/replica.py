"""Which replica am I, how many are there, and how do I see the others' tensors.

The contrastive loss needs negatives from every replica. Under TensorFlow's
`tf.distribute` each replica runs the step on its own slice of the global batch
and must all-gather; under JAX with `keras.distribution` the step already sees
the global (sharded) array, so one "replica" is the right answer there. Keeping
that difference here lets the losses stay backend-neutral.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import keras


class ReplicaContext(NamedTuple):
    """What a per-replica computation needs to know about its peers.

    Attributes:
        replica_id: Index of this replica in the sync group (int or scalar tensor).
        num_replicas: Number of replicas computing one global step (python int).
        all_gather: Concatenates a tensor from all replicas along axis 0, in
            replica order, with gradients flowing back to each replica's slice.
    """

    replica_id: Any
    num_replicas: int
    all_gather: Callable[[Any], Any]


_SINGLE = ReplicaContext(0, 1, lambda x: x)


def current() -> ReplicaContext:
    """Returns the replica context of the code calling it (one replica outside tf.distribute)."""
    if keras.backend.backend() != "tensorflow":
        return _SINGLE
    import tensorflow as tf  # TensorFlow-only glue, imported only on that backend.

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return _SINGLE
    return ReplicaContext(
        replica_id=ctx.replica_id_in_sync_group,
        num_replicas=ctx.num_replicas_in_sync,
        all_gather=lambda x: ctx.all_gather(x, axis=0),
    )


def num_replicas() -> int:
    """Replicas that share one global batch (1 outside a tf.distribute replica context)."""
    return current().num_replicas
