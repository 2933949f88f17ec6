"""Images already in memory as NumPy arrays: a source that trains and evaluates without TensorFlow.

    source = ArraySource({"train": (x_train, y_train), "test": (x_test, y_test)}, name="my_arrays")
    tf_simclr.train(config, source=source)       # KERAS_BACKEND=jax, --augment_on=device: no tf.data

`--dataset=idx:/usr/share/datasets/fashion-mnist` opens a folder of MNIST-style
idx files as one (`data.idx`). On TensorFlow an `ArraySource` is a source like any
other (`as_dataset` slices the arrays into `tf.data`). Under `KERAS_BACKEND=jax`
with `--augment_on=device` the trainer feeds `fit` from `training_batches` (uint8
global batches, shuffled with NumPy) and the evaluation reads `eval_batches`
(the evaluation view in `keras.ops`): no TensorFlow is imported, which is what a
JAX-only machine, or a user with arrays in memory, needs.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional

import numpy as np

from tf_simclr.data.base import BaseSource, check_indices, shard

IDX_PREFIX = "idx:"


def _check_split_arrays(split: str, images, labels) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:  # [N, H, W] grayscale.
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Split {split!r}: images must be uint8 [N, H, W, C] with C in {{1, 3}} (decoded pixels, "
                         f"0-255). Received: dtype={images.dtype}, shape={images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Split {split!r}: labels must be integers [N] with N = {len(images)} images "
                         f"(-1 for unlabeled). Received: dtype={labels.dtype}, shape={labels.shape}")
    return images, labels.astype(np.int64)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 `[B, H, W, 3]`: grayscale repeated to three channels, as the tf.data pipeline hands images over."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


class ArraySource(BaseSource):
    """An `ImageSource` over uint8 arrays held in memory, one `(images [N, H, W, C], labels [N])` per split.

    Args:
        splits: `{split name: (images, labels)}`; images uint8 `[N, H, W, C]` (or
            `[N, H, W]`), C in {1, 3}, every split of one size; labels ints, -1
            for unlabeled examples.
        name: How logs and reports name the dataset.
        num_classes: Defaults to the largest label + 1 (0 without labels).
        class_names: Names of the classes (optional).
    """

    def __init__(self, splits: Mapping[str, tuple], *, name: str = "arrays", num_classes: Optional[int] = None,
                 class_names: tuple = ()):
        if not splits:
            raise ValueError("ArraySource needs at least one split: {'train': (images, labels)}.")
        self._splits = {split: _check_split_arrays(split, *pair) for split, pair in splits.items()}
        shapes = {images.shape[1:] for images, _ in self._splits.values()}
        if len(shapes) > 1:
            raise ValueError(f"Every split of an ArraySource must have one image shape. Received: {sorted(shapes)}")
        top = max(int(labels.max(initial=-1)) for _, labels in self._splits.values())
        self.num_classes = top + 1 if num_classes is None else int(num_classes)
        if top >= self.num_classes or min(int(labels.min(initial=0)) for _, labels in self._splits.values()) < -1:
            raise ValueError(f"Labels must lie in [-1, {self.num_classes}). Received labels up to {top}.")
        self.name, self.class_names = name, tuple(class_names)
        self.image_shape = tuple(int(d) for d in shapes.pop())
        self.splits = tuple(self._splits)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """`(images uint8 [N, H, W, C], labels int64 [N])` of a split (slices like `train[:10%]` are not supported)."""
        self.check_split(split)
        if split not in self._splits:
            raise ValueError(f"{self.name} holds whole splits only ({list(self.splits)}); select examples with "
                             f"--train_label_fraction or --train_subset_ids. Received: split={split!r}")
        return self._splits[split]

    def num_examples(self, split: str) -> int:
        return len(self.arrays(split)[1])

    def is_labeled(self, split: str) -> bool:
        return bool(self.num_classes) and bool((self.arrays(split)[1] >= 0).any())

    def split_index(self, split: str, *, id_key: Optional[str] = None):
        return self.arrays(split)[1].copy(), None

    # ---- tf.data (the TensorFlow pipeline, host augmentation) -------------------------

    def as_dataset(self, split: str, *, shuffle_files: bool, input_context=None, seed: Optional[int] = None):
        """The split as `tf.data` `(image, label)` pairs, in order (the pipeline shuffles examples)."""
        return self._slices(*self.arrays(split), input_context)

    def select(self, split: str, *, indices=None, ids=None, id_key: Optional[str] = None, shuffle_files: bool = False,
               input_context=None, seed: Optional[int] = None):
        if indices is None:
            return super().select(split, indices=indices, ids=ids)  # Names the problem.
        indices = check_indices(np.unique(np.asarray(indices, np.int64)), self, split)
        images, labels = self.arrays(split)
        return self._slices(images[indices], labels[indices], input_context)

    @staticmethod
    def _slices(images, labels, input_context):
        import tensorflow as tf

        return shard(tf.data.Dataset.from_tensor_slices((images, labels)), input_context)

    # ---- NumPy batches (no TensorFlow) ---------------------------------------------------

    def training_batches(self, split: str, batch_size: int, *, seed: Optional[int] = None,
                         skip_batches: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless uint8 RGB batches `([B, H, W, 3], labels int32 [B])` for augmentation on the device.

        Each epoch visits every example once in the order of `rng(seed, epoch).permutation`;
        batches run on across epochs, as tf.data's shuffle-repeat-batch does. The stream
        is a function of `seed`: `skip_batches=k` resumes it at batch k exactly.
        """
        images, labels = self.arrays(split)
        n = len(labels)
        if batch_size > n:
            raise ValueError(f"The batch ({batch_size}) is larger than {self.name}[{split}] ({n} examples).")
        seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)
        position = skip_batches * batch_size

        def generate():
            epoch, start = divmod(position, n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            while True:
                chosen = order[start:start + batch_size]
                start += batch_size
                while len(chosen) < batch_size:  # The batch runs into the next epoch.
                    epoch, start = epoch + 1, batch_size - len(chosen)
                    order = np.random.default_rng([seed, epoch]).permutation(n)
                    chosen = np.concatenate([chosen, order[:start]])
                yield to_rgb(images[chosen]), labels[chosen].astype(np.int32)

        return generate()

    def eval_batches(self, split: str, image_size: int, batch_size: int = 500) -> "EvalBatches":
        """The split's evaluation views in order, once (re-iterable), as `pipeline.eval_dataset` gives them."""
        return EvalBatches(*self.arrays(split), image_size, batch_size)


class EvalBatches:
    """Re-iterable batches `(views float32 [B, S, S, 3], labels int32 [B])` of arrays, in order, the last one partial.

    The views are `augment.device.eval_views` (the host pipeline's evaluation view in `keras.ops`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int, batch_size: int = 500):
        self.images, self.labels, self.image_size, self.batch_size = images, labels, int(image_size), int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        from tf_simclr.augment import device

        for start in range(0, len(self.labels), self.batch_size):
            stop = start + self.batch_size
            yield device.eval_views(self.images[start:stop], self.image_size), self.labels[start:stop].astype(np.int32)

    def take_labelled(self, count: int) -> "EvalBatches":
        """The first `count` labelled examples (the kNN monitor's subsets)."""
        keep = np.flatnonzero(self.labels >= 0)[:count]
        return EvalBatches(self.images[keep], self.labels[keep], self.image_size, self.batch_size)


def is_array_source(source) -> bool:
    """Whether `source` holds its images as NumPy arrays (a label subset of one does not count)."""
    return isinstance(source, ArraySource)


def open_idx_folder(folder: str) -> ArraySource:
    """A folder of MNIST-style idx files (`--dataset=idx:<folder>`) as an `ArraySource` with splits train, test."""
    import os

    from tf_simclr.data import idx

    splits = idx.read_idx_folder(folder)
    fashion = os.path.basename(os.path.normpath(folder)).replace("_", "-") == "fashion-mnist"
    return ArraySource(splits, name=IDX_PREFIX + folder, class_names=idx.FASHION_MNIST_CLASSES if fashion else ())
