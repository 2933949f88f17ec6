"""Datasets and the input pipeline.

    base          the ImageSource protocol and BaseSource (what every source is)
    sources       load_source: a dataset by name (TFDS, folder:, idx:); eval_batches for any source
    tfds_source   TFDS datasets (offline preparation where possible)
    image_folder  the user's own images: folder:/path
    arrays        ArraySource: uint8 arrays in memory, fed to JAX from NumPy (no TensorFlow needed)
    idx           MNIST-style idx files read with NumPy (idx:/usr/share/datasets/fashion-mnist)
    views         what each example becomes (Views) and the batch and stream rules every feed follows
    subsets       class-balanced label fractions and id files;  filters: keep chosen examples
    pipeline      Views and build_dataset: tf.data batches of augmented views
    fashion_mnist Debian's Fashion-MNIST files -> the genuine TFDS dataset
    digits        scikit-learn's digits as an image folder (a transfer target)

Names load on first use, so `sources`, `arrays`, `idx` and `views` import without TensorFlow.
"""

import importlib

_EXPORTS = {
    "ImageSource": "base", "BaseSource": "base", "load_source": "sources", "prepared": "sources",
    "FOLDER_PREFIX": "sources",
    "TFDSSource": "tfds_source", "ImageFolderSource": "image_folder",
    "SubsetSource": "subsets", "subset_source": "subsets", "record_subset": "subsets",
    "ArraySource": "arrays", "IDX_PREFIX": "arrays", "eval_batches": "sources",
    "Views": "views", "build_dataset": "pipeline", "eval_dataset": "pipeline", "distribute_dataset": "pipeline",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tf_simclr.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tf_simclr.data' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
