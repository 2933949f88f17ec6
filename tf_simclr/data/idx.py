"""The idx file format of MNIST and Fashion-MNIST, read with NumPy alone (no TensorFlow).

An idx file is two zero bytes, a type code (0x08: unsigned bytes), the number of
dimensions, each dimension as a big-endian int32, then the values in C order.
Debian's `dataset-fashion-mnist` installs the four Fashion-MNIST files gzipped
under `/usr/share/datasets/fashion-mnist/`; `read_idx_folder` turns such a
folder into `{split: (images uint8 [N, H, W, 1], labels int64 [N])}`, the input
of `data.arrays.ArraySource` (`--dataset=idx:/usr/share/datasets/fashion-mnist`).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

# (images file, labels file) of each split, as MNIST and Fashion-MNIST name them.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
# Where Debian's dataset-fashion-mnist puts the four files, and how to get them.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
_UINT8 = 0x08


def read_idx(path: str) -> np.ndarray:
    """The array in one idx file (`.gz` or not); only unsigned-byte files, the only kind MNIST ships.

    Raises:
        ValueError: the file is not an unsigned-byte idx file, or its size disagrees with its header.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] or data[1] or data[2] != _UINT8 or not data[3]:
        raise ValueError(f"{path} is not an unsigned-byte idx file (MNIST format): it starts with {data[:4]!r}.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">i4"))
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"{path} holds {len(data) - header} values after its header, but the header says "
                         f"{shape} ({int(np.prod(shape))}): the file is truncated or not an idx file.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find(folder: str, name: str) -> str:
    for candidate in (name + ".gz", name):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{folder} has no {name}.gz (nor {name}): an idx dataset folder holds "
        f"{sorted(n for pair in SPLIT_FILES.values() for n in pair)} (each may be gzipped). "
        f"For Fashion-MNIST: `{FASHION_MNIST_INSTALL}` installs them in {FASHION_MNIST_DIR}."
    )


def read_idx_folder(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (images, labels), "test": (...)}` from a folder of MNIST-style idx files.

    Returns:
        Per split, uint8 images `[N, H, W, 1]` and int64 labels `[N]`.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No such folder of idx files: {folder!r}.")
    splits = {}
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        images, labels = read_idx(_find(folder, images_name)), read_idx(_find(folder, labels_name))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder}: the {split} images {images.shape} and labels {labels.shape} do not pair up "
                             "(expected [N, H, W] and [N]).")
        splits[split] = (images[..., None], labels.astype(np.int64))
    return splits
