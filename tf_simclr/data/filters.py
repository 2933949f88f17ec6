"""Keeping chosen examples of a `tf.data` stream: by id (a hash table), or by position (stopping early)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


def filter_by_ids(dataset: tf.data.Dataset, ids: Sequence[str], id_key: str) -> tf.data.Dataset:
    """Keeps the elements (dicts) whose `id_key` string feature is in `ids`.

    A hash table lookup per element, so 10^5 ids cost no more than 10.
    """
    spec = dataset.element_spec
    if not isinstance(spec, dict) or id_key not in spec:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"Elements need a {id_key!r} feature to filter by id. Received: id_key={id_key!r}; features: {keys}")
    keys = tf.constant([str(i) for i in ids], tf.string)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32)), default_value=0
    )
    return dataset.filter(lambda example: table.lookup(example[id_key]) > 0)


def filter_by_indices(dataset: tf.data.Dataset, indices: Sequence[int]) -> tf.data.Dataset:
    """Keeps the elements at the given positions, in dataset order.

    Stops reading after the largest index instead of scanning to the end.
    """
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    if indices.size == 0:
        raise ValueError("No indices to keep: the subset is empty.")
    if indices[0] < 0:
        raise ValueError(f"Indices must be >= 0. Received e.g. {indices[:3].tolist()}")
    last = int(indices[-1])
    keys = tf.constant(indices, tf.int64)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32)), default_value=0
    )
    enumerated = dataset.enumerate().take_while(lambda i, _: i <= last)
    kept = enumerated.filter(lambda i, _: table.lookup(i) > 0)
    return kept.map(lambda _, element: element)
