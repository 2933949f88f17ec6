"""scikit-learn's 8x8 handwritten digits as an image folder: a small offline transfer target.

    tf_simclr digits --out=data/digits
    python run.py --dataset=folder:data/digits --train_split=train --eval_split=test ...

Writes the 1,797 images of `sklearn.datasets.load_digits` (bundled with
scikit-learn, so nothing is downloaded) as `OUT/{train,test}/<digit>/<index>.png`
with a fixed, stratified 80/20 split.

The PNGs stay 8x8. Upsampling here would bake one resize method into the files
and hide the real resolution; the input pipeline already resizes every image to
`--image_size` (as it does for any folder), so the same files serve 28 px
transfer from Fashion-MNIST and 32 px from CIFAR-10. Pixel values 0..16 map
linearly to 0..255 with ink bright on a dark background, the polarity of
(Fashion-)MNIST, so an encoder pretrained there sees familiar contrast.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

NUM_IMAGES = 1797
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 `[N, 8, 8]` (0..255) and int labels `[N]`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stratified split: sorted train and test example indices."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction}")
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(test)


def write_digits_folder(out: str, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> dict:
    """Writes `out/{train,test}/<digit>/<index:04d>.png` atomically (a rerun replaces it whole).

    Returns:
        `{"train": n_train, "test": n_test}`.
    """
    from PIL import Image

    images, labels = digits_arrays()
    splits = dict(zip(("train", "test"), split_indices(labels, test_fraction, seed)))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-digits-", dir=parent)
    try:
        for split, indices in splits.items():
            for i in indices:
                folder = os.path.join(tmp, split, str(labels[i]))
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(os.path.join(folder, f"{i:04d}.png"))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {split: len(indices) for split, indices in splits.items()}
