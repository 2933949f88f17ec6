"""What every dataset is: the `ImageSource` protocol and `BaseSource`, its generic implementation.

Every piece of code that touches a dataset goes through these methods: the
input pipeline, label subsets, evaluation. A source yields decoded
`(image uint8 [H, W, C], label int64)` pairs per split (label -1 for unlabeled
images) and can list and select its examples; `BaseSource` gives every method a
generic implementation from `as_dataset`, which concrete sources (TFDS, image
folders) override where they can do better. A new kind of source is one class:
subclass `BaseSource`, implement `num_examples` and `as_dataset`.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

UNLABELED_SPLITS = ("unlabelled", "unlabeled")


def split_names(split: str) -> list[str]:
    """Base split names of a TFDS split spec: 'train[:10%]+test' -> [train, test]."""
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


@runtime_checkable
class ImageSource(Protocol):
    """A dataset of images, by split.

    Attributes:
      name: how the user named it (`cifar10`, `folder:/data/pets`).
      num_classes: number of classes; 0 when there are no labels.
      class_names: the classes' names, label i is class_names[i] (may be empty).
      image_shape: (H, W, C) with None for sizes that vary.
      splits: split names (TFDS sources also accept slices like `train[:10%]`).
    """

    name: str
    num_classes: int
    class_names: tuple
    image_shape: tuple
    splits: tuple

    def check_split(self, split: str) -> None:
        """Raises ValueError naming the available splits for one this source lacks."""

    def num_examples(self, split: str) -> int:
        """Examples in a split (files listed, for a folder: some may fail to decode)."""

    def is_labeled(self, split: str) -> bool:
        """Whether a split's examples carry class labels."""

    def as_dataset(self, split: str, *, shuffle_files: bool, input_context=None, seed: Optional[int] = None):
        """`(image uint8 [H, W, C], label int64)` pairs of a split; label -1 if unlabeled.

        Args:
          split: a split name (or TFDS split spec).
          shuffle_files: read files in a random order (training).
          input_context: a `tf.distribute.InputContext` that shards the data across input pipelines.
          seed: seed of the file shuffle. Defaults to None (random).
        """

    def split_index(self, split: str, *, id_key: Optional[str] = None) -> tuple[np.ndarray, Optional[list[str]]]:
        """`(labels int64 [N], ids or None)` of a split's examples in natural order, images not decoded."""

    def resolve_ids(self, split: str, ids: Sequence[str], *, id_key: Optional[str] = None):
        """Maps example ids (names or indices) to `(indices or None, ids, id_key)` for `select`."""

    def select(self, split: str, *, indices=None, ids=None, id_key: Optional[str] = None, shuffle_files: bool = False,
               input_context=None, seed: Optional[int] = None):
        """`(image, label)` pairs of the chosen examples of a split, in natural order."""


class BaseSource:
    """Generic implementations of the `ImageSource` methods beyond `num_examples` and `as_dataset`.

    Subclasses set `name`, `num_classes`, `class_names`, `image_shape` and `splits`.
    """

    name: str = "source"
    num_classes: int = 0
    class_names: tuple = ()
    image_shape: tuple = (None, None, 3)
    splits: tuple = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def check_split(self, split: str) -> None:
        if self.splits and any(s not in self.splits for s in split_names(split)):
            raise ValueError(f"Unknown split for {self.name}. Received: split={split!r}; available: {list(self.splits)}")

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def as_dataset(self, split: str, *, shuffle_files: bool, input_context=None, seed: Optional[int] = None):
        raise NotImplementedError

    def is_labeled(self, split: str) -> bool:
        if self.num_classes == 0:
            return False
        return not all(name in UNLABELED_SPLITS for name in split_names(split))

    def split_index(self, split: str, *, id_key: Optional[str] = None) -> tuple[np.ndarray, Optional[list[str]]]:
        """One pass over the split's labels; examples are named by their index."""
        ds = self.as_dataset(split, shuffle_files=False).map(lambda _, label: label)
        labels = np.fromiter(ds.as_numpy_iterator(), dtype=np.int64)
        return (labels if self.is_labeled(split) else np.full_like(labels, -1)), None

    def resolve_ids(self, split: str, ids: Sequence[str], *, id_key: Optional[str] = None):
        """Ids must be example indices here (this source names its examples by nothing else)."""
        bad = [i for i in ids if not str(i).isdigit()]
        if bad:
            raise ValueError(
                f"{self.name} names its examples by index only, so ids must be integer example indices. "
                f"Received e.g. {bad[:3]!r}"
            )
        return check_indices(np.unique(np.asarray([int(i) for i in ids], np.int64)), self, split), None, None

    def select(self, split: str, *, indices=None, ids=None, id_key: Optional[str] = None, shuffle_files: bool = False,
               input_context=None, seed: Optional[int] = None):
        from tf_simclr.data import filters

        if indices is None:
            raise ValueError(f"{self.name} selects examples by index only. Received ids={list(ids or [])[:3]!r}")
        ds = filters.filter_by_indices(self.as_dataset(split, shuffle_files=False), indices)
        return shard(ds, input_context)


def shard(ds, input_context):
    """Every n-th element for input pipeline i of n (a no-op for one pipeline)."""
    if input_context is not None and input_context.num_input_pipelines > 1:
        return ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def check_indices(indices: np.ndarray, source, split: str) -> np.ndarray:
    """Returns `indices` after checking they address examples of the split."""
    try:
        total = source.num_examples(split)
    except (FileNotFoundError, KeyError, ValueError, TypeError, NotImplementedError):
        return indices  # Size unknown: filtering still works.
    if indices.size and (indices[0] < 0 or indices[-1] >= total):
        raise ValueError(
            f"Example indices must be in [0, {total}) for split {split!r} of {source.name}. "
            f"Received indices from {indices[0]} to {indices[-1]}."
        )
    return indices
