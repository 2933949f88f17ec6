"""Class-balanced label fractions for semi-supervised fine-tuning and linear eval.

SimCLR (Chen et al. 2020) and SimCLRv2 fine-tune on 1% and 10% of ImageNet's
labels, class-balanced, listed by image file name in the reference's
`imagenet_subsets/1percent.txt` and `10percent.txt` (one name such as
`n01440764_10026.JPEG` per line). This module makes such subsets for any dataset
and reads or writes those files.

ImageNet: TFDS ships the reference's two subsets as the builder configs
`imagenet2012_subset/1pct` and `imagenet2012_subset/10pct` (same manual ImageNet
tars as `imagenet2012`; validation is the full validation set). Use them as the
dataset, e.g. `data.load_source('imagenet2012_subset/1pct')`: they read only the
subset's records. Filtering `imagenet2012` with `ids='1percent.txt'` here selects
the same images through the `file_name` feature, but reads the whole training
split on every pass.

Other datasets: `subset_source(source, 'train', fraction=0.01, seed=0)` picks
round(1% of each class) (at least one) per class, deterministically from the
seed; `record_subset(model_dir, source.ids)` writes the ids used to
`model_dir/subset_ids.txt`, and passing that file back as `ids=` repeats the
run. Ids are file names (TFDS `file_name`/`id` features, paths relative to an
image folder's root) when the dataset has them, else example indices in the
split's natural order (TFDS: file order, the order `train[i:i+1]` slices).
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from tf_simclr.data.base import BaseSource
from tf_simclr.storage import atomic, fs

if TYPE_CHECKING:  # Only the annotations name TensorFlow: this module imports without it.
    import tensorflow as tf

SUBSET_IDS_FILE = "subset_ids.txt"
# TFDS configs holding the reference's ImageNet label fractions.
IMAGENET_SUBSETS = {0.01: "imagenet2012_subset/1pct", 0.1: "imagenet2012_subset/10pct"}

log = logging.getLogger(__name__)

Ids = Union[str, os.PathLike, Sequence[Union[str, int]], np.ndarray]


# ---------------------------------------------------------------- Choosing examples


def _class_quota(count: int, fraction: Optional[float], per_class: Optional[int]) -> int:
    if per_class is not None:
        return per_class
    # Half-up rounding (Python's round() rounds 2.5 to 2), and never an empty class.
    return min(count, max(1, int(math.floor(fraction * count + 0.5))))


def balanced_subset_ids(
    labels: np.ndarray,
    fraction: Optional[float] = None,
    *,
    per_class: Optional[int] = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a class-balanced random subset, sorted.

    Each class c with n_c examples contributes `round(fraction * n_c)` examples
    (at least 1), or exactly `per_class`. Examples are drawn without
    replacement from one `numpy.random.default_rng(seed)`, class by class in
    increasing label order, so the same labels and seed always give the same
    subset. Unlabeled examples (label < 0) are never chosen.

    Args:
        labels: `[N]` integer labels.
        fraction: Share of each class to keep, in (0, 1].
        per_class: Examples per class instead of a fraction.
        seed: Seed of the draw. Defaults to 0.

    Returns:
        int64 `[M]` sorted indices into `labels`.

    Raises:
        ValueError: neither or both of fraction/per_class, a value out of range,
            no labelled example, or a class with fewer than `per_class` examples.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError(
            f"Pass exactly one of fraction or per_class. Received: fraction={fraction}, per_class={per_class}"
        )
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] (0.01 for 1%). Received: fraction={fraction}")
    if per_class is not None and (not isinstance(per_class, (int, np.integer)) or per_class < 1):
        raise ValueError(f"per_class must be a positive int. Received: per_class={per_class!r}")
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers. Received dtype {labels.dtype}")
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    if classes.size == 0:
        raise ValueError("No labelled example (all labels are < 0): a class-balanced subset needs labels.")
    if per_class is not None and counts.min() < per_class:
        short = classes[counts < per_class]
        raise ValueError(
            f"per_class={per_class} exceeds the size of class(es) {short[:10].tolist()} "
            f"(smallest has {counts.min()} examples). Use a smaller per_class or a fraction."
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in zip(classes, counts):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.permutation(members)[: _class_quota(int(count), fraction, per_class)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# ---------------------------------------------------------------- Id files


def read_id_file(path: Union[str, os.PathLike]) -> list[str]:
    """Example ids from a file with one id per line (blank lines and `#` comments skipped).

    Reads the reference's `imagenet_subsets/1percent.txt` as it is; any
    `tf.io.gfile` path (local, `gs://`) works.
    """
    path = os.fspath(path)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"Id file not found. Received: path={path!r}. It needs one example id per line "
            "(e.g. n01440764_10026.JPEG, or an example index)."
        )
    lines = [line.strip() for line in fs.read_text(path).splitlines()]
    ids = [line for line in lines if line and not line.startswith("#")]
    if not ids:
        raise ValueError(f"Id file {path!r} holds no ids.")
    return ids


def write_id_file(path: Union[str, os.PathLike], ids: Sequence[Union[str, int]]) -> str:
    """Writes ids one per line, atomically (`storage.atomic`).

    A crash mid-write leaves either the old file or none, never a truncated
    list that would silently change the subset of a repeated run.

    Returns:
        The path written.
    """
    path = os.fspath(path)
    lines = [str(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
    bad = [line for line in lines if not line.strip() or "\n" in line or line != line.strip() or line.startswith("#")]
    if bad:
        raise ValueError(f"Ids must be non-empty single-line strings without surrounding spaces. Received e.g. {bad[:3]!r}")
    return atomic.write_text(path, "".join(line + "\n" for line in lines))


def record_subset(model_dir: Union[str, os.PathLike], ids: Sequence[Union[str, int]]) -> str:
    """Writes the ids a run used to `model_dir/subset_ids.txt`, so it can be repeated.

    Returns:
        The path written; pass it back as `ids=` to `subset_source`.
    """
    return write_id_file(fs.join(os.fspath(model_dir), SUBSET_IDS_FILE), ids)


# ---------------------------------------------------------------- Sources


class SubsetSource(BaseSource):
    """An `ImageSource` restricted to chosen examples of one split.

    Works with `pipeline.build_dataset(subset, split, ...)` like the source it
    wraps (same classes and image shape); `ids` are the ids to `record_subset`.
    Build it with `subset_source`.

    Attributes:
        source: The wrapped source.
        split: The only split this subset has.
        ids: The chosen examples' ids (file names or indices as strings).
        indices: int64 positions in the split's natural order, or None when the
            examples are selected by name (TFDS id file).
    """

    def __init__(self, source, split: str, *, ids: list[str], indices: Optional[np.ndarray], id_key: Optional[str]):
        self.source = source
        self.split = split
        self.ids = list(ids)
        self.indices = indices
        self.id_key = id_key
        self.name = source.name
        self.num_classes = source.num_classes
        self.image_shape = source.image_shape
        self.class_names = tuple(source.class_names)
        self.splits = (split,)

    def __repr__(self) -> str:
        return f"SubsetSource({self.name!r}, split={self.split!r}, examples={len(self.ids)})"

    def check_split(self, split: str) -> None:
        if split != self.split:
            raise ValueError(
                f"This subset holds examples of split {self.split!r} only. Received: split={split!r}; "
                "read other splits (e.g. validation) from the full source."
            )

    def is_labeled(self, split: str) -> bool:
        self.check_split(split)
        return self.source.is_labeled(split)

    def num_examples(self, split: str) -> int:
        """Chosen examples (for an id file: its unique ids, assumed present in the split)."""
        self.check_split(split)
        return len(self.indices) if self.indices is not None else len(self.ids)

    def split_index(self, split: str, *, id_key: Optional[str] = None):
        self.check_split(split)
        labels, names = self.source.split_index(split, id_key=id_key or self.id_key)
        if self.indices is None:
            keep = np.isin(np.asarray(names or [], dtype=object), np.asarray(self.ids, dtype=object))
            return labels[keep], [n for n, k in zip(names, keep) if k]
        return labels[self.indices], ([names[i] for i in self.indices] if names is not None else None)

    def as_dataset(self, split: str, *, shuffle_files: bool = False, input_context=None, seed: Optional[int] = None):
        """`(image uint8 [H, W, C], label int64)` of the chosen examples, in natural order.

        Args:
            split: Must be `self.split`.
            shuffle_files: Shuffle an image folder's files; TFDS subsets are read
                in order (`build_dataset` shuffles examples afterwards).
            input_context: Shards the chosen examples across input pipelines.
            seed: Seed of the folder file shuffle.
        """
        self.check_split(split)
        return self.source.select(split, indices=self.indices, ids=None if self.indices is not None else self.ids,
                                  id_key=self.id_key, shuffle_files=shuffle_files, input_context=input_context,
                                  seed=seed)


class MaskedLabelSource(BaseSource):
    """Every example of one split, with labels kept only for the chosen ones (-1 elsewhere).

    Distillation with a labelled term (`--distill_label_weight > 0`) learns from all
    images but from the labels of the `--train_label_fraction` share only, as
    SimCLRv2's semi-supervised distillation does. Read in natural order (the
    pipeline shuffles examples afterwards), since positions decide the labels.
    """

    def __init__(self, subset: SubsetSource):
        if subset.indices is None:
            raise ValueError(
                "Distillation with --distill_label_weight > 0 keeps the labels of examples chosen by position; "
                "these ids name files. Pass --train_label_fraction, or example indices in --train_subset_ids."
            )
        self.source, self.split, self.ids = subset.source, subset.split, subset.ids
        self.indices = subset.indices
        self.name, self.num_classes = subset.name, subset.num_classes
        self.image_shape, self.class_names, self.splits = subset.image_shape, subset.class_names, subset.splits

    def __repr__(self) -> str:
        return f"MaskedLabelSource({self.name!r}, split={self.split!r}, labelled={len(self.indices)})"

    check_split = SubsetSource.check_split

    def is_labeled(self, split: str) -> bool:
        self.check_split(split)
        return self.source.is_labeled(split)

    def num_examples(self, split: str) -> int:
        self.check_split(split)
        return self.source.num_examples(split)

    def split_index(self, split: str, *, id_key: Optional[str] = None):
        self.check_split(split)
        labels, names = self.source.split_index(split, id_key=id_key)
        kept = np.full_like(labels, -1)
        kept[self.indices] = labels[self.indices]
        return kept, names

    def as_dataset(self, split: str, *, shuffle_files: bool = False, input_context=None, seed: Optional[int] = None):
        """`(image, label)` of every example in natural order; label -1 unless the example was chosen."""
        import tensorflow as tf

        from tf_simclr.data.base import shard

        self.check_split(split)
        keep = np.zeros(self.source.num_examples(split), bool)
        keep[self.indices] = True
        keep = tf.constant(keep)

        def mask(position, example):
            image, label = example
            return image, tf.where(keep[position], label, tf.constant(-1, label.dtype))

        ds = self.source.as_dataset(split, shuffle_files=False).enumerate().map(mask)
        return shard(ds, input_context)


def subset_source(
    source,
    split: str,
    ids: Optional[Ids] = None,
    *,
    fraction: Optional[float] = None,
    per_class: Optional[int] = None,
    seed: int = 0,
    id_key: Optional[str] = None,
) -> SubsetSource:
    """Restricts a source's split to chosen examples: given ids, or a balanced draw.

    Args:
        source: Any `ImageSource` (e.g. from `load_source`).
        split: The split to restrict, e.g. 'train'.
        ids: Which examples: a path to an id file (`read_id_file`), a list of
            ids (file names matched against the TFDS id feature or a folder
            image's path relative to the root, or its base name), or integer
            example indices in the split's natural order. Exclusive with
            fraction/per_class.
        fraction: Draw `balanced_subset_ids(labels, fraction)` instead.
        per_class: Draw exactly this many examples per class instead.
        seed: Seed of the draw. Defaults to 0.
        id_key: TFDS feature holding example ids. Defaults to the first of
            `tfds_source.DEFAULT_ID_KEYS` the dataset has (`file_name` for imagenet2012).

    Returns:
        A `SubsetSource`; its `ids` are file names when the dataset has them,
        else indices, and `record_subset(model_dir, subset.ids)` saves them.
    """
    if ids is not None and (fraction is not None or per_class is not None):
        raise ValueError(f"Pass ids or fraction/per_class, not both. Received: fraction={fraction}, per_class={per_class}")
    if ids is None and fraction is None and per_class is None:
        raise ValueError("Pass ids (a list or an id file), fraction (e.g. 0.01) or per_class to choose a subset.")
    if isinstance(ids, (str, os.PathLike)):
        ids = read_id_file(ids)

    if ids is None:  # A balanced draw.
        labels, names = source.split_index(split, id_key=id_key)
        indices = balanced_subset_ids(labels, fraction, per_class=per_class, seed=seed)
        recorded = [names[i] for i in indices] if names is not None else [str(i) for i in indices]
        log.info("Subset of %s %s: %d of %d examples (seed %d)", source.name, split, indices.size, labels.size, seed)
        return SubsetSource(source, split, ids=recorded, indices=indices, id_key=id_key)

    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if len(ids) == 0:
        raise ValueError("ids is empty: the subset would hold no example.")
    indices, names, key = source.resolve_ids(split, ids, id_key=id_key)
    recorded = names if names is not None else [str(i) for i in indices]
    return SubsetSource(source, split, ids=recorded, indices=indices, id_key=key)


def subset_dataset(
    source,
    split: str,
    ids: Optional[Ids] = None,
    *,
    fraction: Optional[float] = None,
    per_class: Optional[int] = None,
    seed: int = 0,
    id_key: Optional[str] = None,
) -> "tf.data.Dataset":
    """`(image, label)` pairs of the chosen examples of a split; see `subset_source`."""
    chosen = subset_source(source, split, ids, fraction=fraction, per_class=per_class, seed=seed, id_key=id_key)
    return chosen.as_dataset(split, shuffle_files=False)

def labelled_subset(config, source):
    """The training split restricted to `--train_subset_ids` or a class-balanced `--train_label_fraction`.

    SimCLR's semi-supervised results fine-tune on 1% or 10% of the labels; a
    fraction draw is stratified per class and fixed by `--subset_seed`, so two
    runs with the same seed see the same examples.

    In distillation every image trains (SimCLRv2 distils on all of them) and the
    flags choose which keep their labels (`MaskedLabelSource`).

    Returns:
        `source` itself when neither flag is set, else a `SubsetSource` (a
        `MaskedLabelSource` in distillation).
    """
    from tf_simclr.config import check_label_subset

    t = config.train
    check_label_subset(t.train_label_fraction, t.train_subset_ids)
    split = config.data.train_split
    chosen = source
    if t.train_subset_ids:
        chosen = subset_source(source, split, t.train_subset_ids)
    elif t.train_label_fraction and t.train_label_fraction < 1:
        chosen = subset_source(source, split, fraction=t.train_label_fraction, seed=t.subset_seed)
    if t.train_mode == "distill" and chosen is not source:
        return MaskedLabelSource(chosen)  # Distillation reads every image; only the chosen keep their labels.
    return chosen
