"""The user's own images as an `ImageSource`: `--dataset=folder:/path/to/images`.

The folder may also be on any `tf.io.gfile` filesystem (`folder:gs://bucket/images`).

Three layouts are recognised, checked in this order:

1. Split folders: every sub-folder of the root is a split name (`train/`,
   `validation/`, `test/`, ...); each split holds one sub-folder per class, or
   images directly (an unlabeled split, label -1).
2. Class folders: one sub-folder per class. Splits are derived: `train` is 90%
   of the images, `validation` and `test` (the same images) the other 10%, picked
   by a hash of each file's path relative to the root, so the split never changes
   between runs or machines and adding images never moves existing ones.
3. A flat folder of images: unlabeled (label -1), split `train`, for pretraining.

Class names are sorted and numbered from 0. Images are JPEG or PNG (any case of
`.jpg`, `.jpeg`, `.png`), of any size: resizing happens in augmentation. Other
files and hidden entries are ignored.

Bad files (empty, truncated, or not an image despite the extension) are found
by a fast scan when the folder is indexed (`bad_files.find_bad_images`: size, first and
last bytes only) and left out of every split with one warning listing them; with
`strict=True` they are an error. Files that pass the scan but still fail to
decode (a corrupt body) are dropped by the input pipeline with a TF warning, so
one bad file never stops training mid-epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_simclr.data.bad_files import (  # noqa: F401  (the REASON_* texts are part of this module's interface)
    MAX_LISTED_BAD_FILES, REASON_EMPTY, REASON_TRUNCATED_BMP, REASON_TRUNCATED_JPEG, REASON_TRUNCATED_PNG,
    REASON_TRUNCATED_WEBP, REASON_UNKNOWN_FORMAT, find_bad_images, image_file_problem, list_bad_files,
)
from tf_simclr.data.base import BaseSource, check_indices, shard
from tf_simclr.storage import fs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLIT_FOLDER_NAMES = (
    "train", "validation", "val", "valid", "test", "eval", "unlabeled", "unlabelled",
)
HELD_OUT_FRACTION = 0.1
# Splits derived from a folder of class folders; validation and test are one set.
DERIVED_SPLITS = ("train", "validation", "test")
UNLABELED = -1

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Split:
    """Files of one split and their labels (-1 for unlabeled)."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]


def is_image_file(name: str) -> bool:
    """Whether a file name has a JPEG/PNG extension (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subfolders(folder: str) -> list[str]:
    if fs.is_url(folder):
        return [n for n in fs.listdir(folder) if not n.startswith(".") and fs.isdir(fs.join(folder, n))]
    return sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )


def _images_in_url(folder: str, recursive: bool) -> list[str]:
    """`_images_in` for a folder on a `tf.io.gfile` filesystem (`gs://...`)."""
    found = []
    for name in fs.listdir(folder):
        path = fs.join(folder, name)
        if fs.isdir(path):
            if recursive and not name.startswith("."):
                found += _images_in_url(path, recursive)
        elif is_image_file(name):
            found.append(path)
    return sorted(found)


def _relative(path: str, root: str) -> str:
    """`path` relative to `root` (a local folder or a URL)."""
    return path[len(root.rstrip("/")) + 1:] if fs.is_url(root) else os.path.relpath(path, root)


def _images_in(folder: str, recursive: bool) -> list[str]:
    """Sorted absolute paths (or URLs) of the images in `folder` (and below when recursive)."""
    if fs.is_url(folder):
        return _images_in_url(folder, recursive)
    if not recursive:
        return sorted(
            e.path for e in os.scandir(folder) if e.is_file() and is_image_file(e.name)
        )
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def held_out(relative_path: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether a file belongs to the held-out (validation/test) part.

    A hash of the path, not a random draw: stable across runs, machines and
    Python versions (`hash()` is salted per process), and independent of which
    other files exist.
    """
    key = relative_path.replace(os.sep, "/").encode("utf-8")
    value = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return value < fraction * 2**64


def _class_images(folder: str, class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        images = _images_in(os.path.join(folder, name), recursive=True)
        paths += images
        labels += [label] * len(images)
    return paths, labels


def _classes_with_images(folder: str) -> list[str]:
    names = []
    for name in _subfolders(folder):
        if _images_in(os.path.join(folder, name), recursive=True):
            names.append(name)
        else:
            log.warning("Ignoring %s: it holds no JPEG/PNG images.", os.path.join(folder, name))
    return names


def _index_split_folders(root: str, splits: Sequence[str]):
    """Layout 1: root/<split>/<class>/... or root/<split>/<images>."""
    per_split_classes = {s: _classes_with_images(os.path.join(root, s)) for s in splits}
    class_names = sorted(set().union(*per_split_classes.values()))
    index = {}
    for split in splits:
        folder = os.path.join(root, split)
        if per_split_classes[split]:
            paths, labels = _class_images(folder, per_split_classes[split])
            # Number classes by their position in the union, not in this split.
            ids = [class_names.index(per_split_classes[split][i]) for i in labels]
            index[split] = _Split(tuple(paths), tuple(ids))
        else:
            paths = _images_in(folder, recursive=False)
            index[split] = _Split(tuple(paths), (UNLABELED,) * len(paths))
    return class_names, index


def _drop_files(split: _Split, bad_paths: set[str]) -> _Split:
    kept = [(p, l) for p, l in zip(split.paths, split.labels) if p not in bad_paths]
    return _Split(tuple(p for p, _ in kept), tuple(l for _, l in kept))


def _index_class_folders(root: str, class_names: Sequence[str], fraction: float):
    """Layout 2: root/<class>/...; derived train / validation = test splits."""
    paths, labels = _class_images(root, class_names)
    train, rest = ([], []), ([], [])
    for path, label in zip(paths, labels):
        part = rest if held_out(_relative(path, root), fraction) else train
        part[0].append(path)
        part[1].append(label)
    held = _Split(tuple(rest[0]), tuple(rest[1]))
    return {"train": _Split(tuple(train[0]), tuple(train[1])), "validation": held, "test": held}


def decode_image(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes one JPEG/PNG file into uint8 [H, W, 3]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_files(files: tf.data.Dataset) -> tf.data.Dataset:
    """Maps `(path, label)` to `(image, label)`, dropping files that fail to decode.

    The scan at index time catches empty, truncated and non-image files; this
    is the safety net for a corrupt body behind intact ends, so that one such
    file drops one example instead of ending training. TF logs a warning
    ("Error raised with error message ...") for each dropped file.
    """
    decoded = files.map(
        lambda path, label: (decode_image(path), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return decoded.ignore_errors(log_warning=True)


class ImageFolderSource(BaseSource):
    """Images in a folder, read with `tf.data`; see the module docstring.

    The folder may be local or on any `tf.io.gfile` filesystem (`folder:gs://bucket/images`).

    Attributes:
      name: `folder:<root>`.
      root: the folder.
      class_names: sorted class folder names; label i is class_names[i]. Empty
        when unlabeled.
      num_classes: len(class_names); 0 means unlabeled (pretraining only).
      image_shape: (None, None, 3): sizes vary per image.
      splits: split names available.
      bad_files: sorted (path, reason) of the files left out as unreadable.
    """

    image_shape = (None, None, 3)

    def __init__(
        self,
        root: str,
        *,
        held_out_fraction: float = HELD_OUT_FRACTION,
        strict: bool = False,
    ):
        """Indexes the folder and checks each file's ends (`find_bad_images`).

        Args:
          root: folder of images in one of the three layouts.
          held_out_fraction: share of a class-folder dataset kept for
            validation/test. Defaults to 0.1.
          strict: raise on empty, truncated or non-image files instead of
            leaving them out with one warning. Defaults to False.

        Raises:
          FileNotFoundError: `root` does not exist or is not a folder.
          ValueError: no JPEG/PNG image is found, none is readable, or
            `strict` and some files are bad.
        """
        root = root.rstrip("/") if fs.is_url(root) else os.path.abspath(os.path.expanduser(root))
        if not fs.isdir(root):
            raise FileNotFoundError(
                f"Image folder not found. Received: folder:{root} (expected a folder of "
                "class sub-folders, split sub-folders, or images)."
            )
        if not 0 < held_out_fraction < 1:
            raise ValueError(
                f"held_out_fraction must be in (0, 1). Received: {held_out_fraction}"
            )
        self.root = root
        self.name = f"folder:{root}"
        subfolders = _subfolders(root)
        if subfolders and all(s.lower() in SPLIT_FOLDER_NAMES for s in subfolders):
            self.layout = "splits"
            self.class_names, self._index = _index_split_folders(root, subfolders)
        elif classes := _classes_with_images(root):
            self.layout = "classes"
            self.class_names = classes
            self._index = _index_class_folders(root, classes, held_out_fraction)
        else:
            self.layout = "flat"
            self.class_names = []
            images = _images_in(root, recursive=False)
            self._index = {"train": _Split(tuple(images), (UNLABELED,) * len(images))}
        if self.layout == "classes" and _images_in(root, recursive=False):
            log.warning("Ignoring images directly in %s: it has class sub-folders.", root)
        if not any(s.paths for s in self._index.values()):
            raise ValueError(
                f"No JPEG/PNG images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}. "
                "Put images in class sub-folders (root/<class>/*.jpg), split folders "
                "(root/train/<class>/*.jpg) or directly in the folder (unlabeled)."
            )
        self.bad_files = self._drop_bad_files(strict)
        self.class_names = tuple(self.class_names)
        self.num_classes = len(self.class_names)
        self.splits = tuple(self._index)

    def _drop_bad_files(self, strict: bool) -> tuple[tuple[str, str], ...]:
        """Scans every indexed file; drops the bad ones or, if strict, raises."""
        paths = sorted({p for split in self._index.values() for p in split.paths})
        bad = find_bad_images(paths)
        if not bad:
            return ()
        listing = list_bad_files(bad)
        if strict:
            raise ValueError(
                f"{len(bad)} of {len(paths)} files in {self.name} are not readable "
                f"images:\n{listing}\nDelete or repair them, or drop --strict "
                "(strict=False) to skip them with a warning."
            )
        if len(bad) == len(paths):
            raise ValueError(
                f"None of the {len(paths)} image files in {self.name} is readable:\n"
                f"{listing}\nCheck that the folder holds real JPEG/PNG images."
            )
        log.warning(
            "Skipping %d of %d files in %s that are not readable images:\n%s\n"
            "Delete or repair them to use them (use --strict to make this an error).",
            len(bad), len(paths), self.name, listing,
        )
        bad_paths = {p for p, _ in bad}
        self._index = {name: _drop_files(s, bad_paths) for name, s in self._index.items()}
        return tuple(bad)

    def __repr__(self) -> str:
        sizes = {s: len(v.paths) for s, v in self._index.items()}
        return (
            f"ImageFolderSource({self.root!r}, layout={self.layout}, "
            f"classes={self.num_classes}, splits={sizes})"
        )

    def check_split(self, split: str) -> None:
        self._split(split)

    def _split(self, split: str) -> _Split:
        if split not in self._index:
            raise ValueError(
                f"Unknown split for {self.name}. Received: split={split!r}; "
                f"available: {list(self.splits)}"
            )
        return self._index[split]

    def files(self, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The (paths, labels) of a split, sorted by path within each class."""
        s = self._split(split)
        return s.paths, s.labels

    def num_examples(self, split: str) -> int:
        return len(self._split(split).paths)

    def is_labeled(self, split: str) -> bool:
        """Whether the split's images carry class labels."""
        return any(label != UNLABELED for label in self._split(split).labels)

    def as_dataset(
        self,
        split: str,
        *,
        shuffle_files: bool,
        input_context: Optional[tf.distribute.InputContext] = None,
        seed: Optional[int] = None,
    ) -> tf.data.Dataset:
        """Decoded `(image uint8 [H, W, 3], label int64)` pairs of one split.

        A file that fails to decode is dropped with a TF warning, so an epoch
        may hold fewer than `num_examples(split)` images.

        Args:
          split: a name in `self.splits`.
          shuffle_files: shuffle the file order, anew on each pass.
          input_context: shards the files across input pipelines.
          seed: seed of the file shuffle. Defaults to None (random).
        """
        paths, labels = self.files(split)
        if not paths:
            raise ValueError(f"Split {split!r} of {self.name} holds no images.")
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string), tf.constant(labels, tf.int64))
        )
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if shuffle_files:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return decode_files(ds)

    # ---- Naming and selecting examples (label subsets) -------------------------
    def split_index(self, split: str, *, id_key: Optional[str] = None) -> tuple[np.ndarray, Optional[list[str]]]:
        """Labels and paths relative to the root, from the file listing (nothing decoded)."""
        paths, labels = self.files(split)
        return np.asarray(labels, np.int64), [_relative(p, self.root) for p in paths]

    def resolve_ids(self, split: str, ids: Sequence[str], *, id_key: Optional[str] = None):
        """Ids are paths relative to the root, file names, or example indices."""
        if all(isinstance(i, (int, np.integer)) for i in ids):
            return check_indices(np.unique(np.asarray(ids, np.int64)), self, split), None, None
        paths, _ = self.files(split)
        position = {}
        for i, path in enumerate(paths):
            position.setdefault(os.path.basename(path), i)
            position[_relative(path, self.root)] = i
        ids = list(dict.fromkeys(str(i) for i in ids))
        missing = [i for i in ids if i not in position]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(ids)} ids are not images of split {split!r} in {self.root}, "
                f"e.g. {missing[:3]!r}. Ids are paths relative to the folder or file names."
            )
        return np.unique(np.asarray([position[i] for i in ids], np.int64)), ids, None

    def select(self, split: str, *, indices=None, ids=None, id_key: Optional[str] = None, shuffle_files: bool = False,
               input_context=None, seed: Optional[int] = None):
        """The chosen files, decoded as `as_dataset` decodes them (failures dropped)."""
        if indices is None:
            indices, _, _ = self.resolve_ids(split, ids)
        paths, labels = self.files(split)
        chosen = (tf.constant([paths[i] for i in indices], tf.string), tf.constant([labels[i] for i in indices], tf.int64))
        ds = shard(tf.data.Dataset.from_tensor_slices(chosen), input_context)
        if shuffle_files:
            ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        return decode_files(ds)
