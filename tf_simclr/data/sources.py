"""Opening a dataset by name: `load_source("cifar10")`, `load_source("folder:/data/pets")`, `load_source("idx:DIR")`.

The protocol every source follows is in `base.py`; this module only knows the
names (TFDS datasets, `folder:` image folders, `idx:` folders of MNIST-style
files read into memory) and the preparation step.
"""

from __future__ import annotations

from typing import Optional, Sequence

from tf_simclr.data.base import BaseSource, ImageSource, check_indices, shard, split_names  # noqa: F401  (re-exported)

FOLDER_PREFIX = "folder:"


def load_source(dataset: str, data_dir: Optional[str] = None, *, prepare: bool = True, splits: Sequence[str] = (),
                strict_images: bool = False) -> ImageSource:
    """Opens a dataset by name, preparing a TFDS dataset if needed.

    Args:
      dataset: a TFDS image-classification name (`imagenet2012`, `cifar10`,
        `cifar100`, `stl10`, `fashion_mnist`, ...), `folder:/path/to/images`, or
        `idx:/path/to/folder` (MNIST-style idx files, e.g. Debian's
        `/usr/share/datasets/fashion-mnist`: read into memory, no TensorFlow needed).
      data_dir: TFDS data folder (any tf.io.gfile path). Defaults to TFDS's
        default. Ignored for folders.
      prepare: prepare an unprepared TFDS dataset (offline from Debian's files
        for fashion_mnist, else TFDS's download). If False, an unprepared
        source still gives metadata but fails on reading. Defaults to True.
      splits: splits the caller will read, checked before any preparation.
      strict_images: make unreadable files of a `folder:` dataset an error
        instead of skipping them; ignored for TFDS. Defaults to False.

    Returns:
      An `ImageSource`.

    Raises:
      ValueError: unknown dataset or split, or a TFDS dataset without
        `image`/`label` features.
      RuntimeError: the dataset is not prepared and cannot be prepared here.
    """
    from tf_simclr.data import arrays

    if dataset.startswith(arrays.IDX_PREFIX):
        source = arrays.open_idx_folder(dataset[len(arrays.IDX_PREFIX):])
    elif dataset.startswith(FOLDER_PREFIX):
        source = _tensorflow_module("image_folder", dataset).ImageFolderSource(dataset[len(FOLDER_PREFIX):],
                                                                              strict=strict_images)
    else:
        source = _tensorflow_module("tfds_source", dataset).open_tfds(dataset, data_dir, splits)
    for split in splits:
        source.check_split(split)
    return prepared(source) if prepare else source


def _tensorflow_module(name: str, dataset: str):
    """`tf_simclr.data.<name>`, which reads through TensorFlow; without it, a ValueError naming the way out."""
    import importlib

    from tf_simclr.data import arrays

    try:
        return importlib.import_module(f"tf_simclr.data.{name}")
    except ImportError as e:
        raise ValueError(f"--dataset={dataset} is read with TensorFlow, which does not import here ({e}). "
                         f"Install tensorflow, or use --dataset={arrays.IDX_PREFIX}<folder of idx files> "
                         "(read into memory; trains on Keras/JAX alone).") from e


def prepared(source: ImageSource) -> ImageSource:
    """`source` ready to read: a TFDS dataset is prepared (offline or by download) if it is not yet."""
    import sys

    tfds_source = sys.modules.get("tf_simclr.data.tfds_source")  # Only a TFDS source needs it, and it loaded it.
    if tfds_source is not None and isinstance(source, tfds_source.TFDSSource):
        return tfds_source.prepare(source)
    return source


def eval_batches(source: ImageSource, split: str, image_size: int, batch_size: int = 500):
    """One evaluation view per example of a split, in order, read once (features, kNN, probes).

    In-memory arrays give NumPy batches (`ArraySource.eval_batches`, no TensorFlow);
    every other source a tf.data pipeline (`pipeline.eval_dataset`). Both yield
    `(views float32 [B, S, S, 3] in [0, 1], labels int32 [B])`, the same views.
    """
    from tf_simclr.data import arrays

    if arrays.is_array_source(source):
        return source.eval_batches(split, image_size, batch_size)
    from tf_simclr.data import pipeline

    return pipeline.eval_dataset(source, split, image_size, batch_size)
