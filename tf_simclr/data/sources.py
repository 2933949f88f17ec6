"""Opening a dataset by name: `load_source("cifar10")`, `load_source("folder:/data/pets")`.

The protocol every source follows is in `base.py`; this module only knows the
names (TFDS datasets, `folder:` image folders) and the preparation step.
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
        `cifar100`, `stl10`, `fashion_mnist`, ...) or `folder:/path/to/images`.
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
    if dataset.startswith(FOLDER_PREFIX):
        from tf_simclr.data.image_folder import ImageFolderSource

        source = ImageFolderSource(dataset[len(FOLDER_PREFIX):], strict=strict_images)
    else:
        from tf_simclr.data import tfds_source

        source = tfds_source.open_tfds(dataset, data_dir, splits)
    for split in splits:
        source.check_split(split)
    return prepared(source) if prepare else source


def prepared(source: ImageSource) -> ImageSource:
    """`source` ready to read: a TFDS dataset is prepared (offline or by download) if it is not yet."""
    from tf_simclr.data import tfds_source

    if isinstance(source, tfds_source.TFDSSource):
        return tfds_source.prepare(source)
    return source
