"""Bad files in an image folder: found by the scan, skipped (or an error), never fatal mid-epoch."""

import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import bad_files, image_folder
from tf_simclr.data.image_folder import ImageFolderSource, find_bad_images
from tf_simclr.data.pipeline import Views, build_dataset
from tf_simclr.data.sources import load_source

LOGGER = image_folder.log.name


@pytest.fixture(autouse=True)
def _records_reach_caplog(monkeypatch):
    """An in-process CLI run (`logs.configure`) stops the 'tf_simclr' logger propagating; caplog needs it."""
    monkeypatch.setattr(logging.getLogger("tf_simclr"), "propagate", True)


def _encode(pixels, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pixels(seed, size=(12, 9)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _smooth_pixels(seed, size=(48, 40)):
    """Gradients: JPEG keeps them close to the original."""
    y, x = np.mgrid[: size[0], : size[1]]
    image = np.stack([x * 4, y * 4, (x + y) * 2], -1) + seed * 10
    return np.clip(image, 0, 255).astype(np.uint8)


def _garbage(seed, n):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _eager_decodes(path):
    """Independent check: does TF decode the file outside tf.data?"""
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return True
    except tf.errors.InvalidArgumentError:
        return False


def _build_folder(root):
    """Writes good and bad files; returns (lossless originals, jpeg names, bad reasons)."""
    os.makedirs(root, exist_ok=True)
    files, lossless, jpegs = {}, {}, []
    for i in range(5):  # Exact pixels: lossless PNG, distinct sizes.
        lossless[f"good{i}.png"] = _pixels(i, (10 + i, 7 + i))
        files[f"good{i}.png"] = _encode(lossless[f"good{i}.png"], "PNG")
    lossless["bitmap.jpg"] = _pixels(20, (6, 5))  # Content decides, not the extension.
    files["bitmap.jpg"] = _encode(lossless["bitmap.jpg"], "BMP")
    lossless["lossless_webp.png"] = _pixels(21, (5, 6))
    files["lossless_webp.png"] = _encode(lossless["lossless_webp.png"], "WEBP", lossless=True)
    for i in range(2):
        jpegs.append(f"photo{i}.jpg")
        files[f"photo{i}.jpg"] = _encode(_smooth_pixels(i), "JPEG", quality=90)
    full_jpeg = _encode(_smooth_pixels(5), "JPEG", quality=90)
    full_png = _encode(_pixels(6, (30, 30)), "PNG")
    bad = {
        "empty.png": b"",
        "notes.jpg": b"These are my holiday notes, not a picture.\n",
        "half.jpg": full_jpeg[: len(full_jpeg) // 2],
        "cut.png": full_png[: len(full_png) - 30],
        "cut_bitmap.png": _encode(_pixels(7, (20, 20)), "BMP")[:300],
    }
    reasons = {
        "empty.png": image_folder.REASON_EMPTY,
        "notes.jpg": image_folder.REASON_UNKNOWN_FORMAT,
        "half.jpg": image_folder.REASON_TRUNCATED_JPEG,
        "cut.png": image_folder.REASON_TRUNCATED_PNG,
        "cut_bitmap.png": image_folder.REASON_TRUNCATED_BMP,
    }
    third = len(full_jpeg) // 3  # Garbage in the middle, header and footer intact.
    files["garbled_middle.jpg"] = full_jpeg[:third] + _garbage(8, third) + full_jpeg[2 * third :]
    # Garbage right after the JFIF header: no frame header left, cannot decode.
    files["garbled_header.jpg"] = full_jpeg[:20] + _garbage(9, len(full_jpeg) - 22) + full_jpeg[-2:]
    # PNG with garbage image data (bad chunk CRCs), intact IEND: cannot decode.
    files["garbled.png"] = full_png[:60] + _garbage(10, len(full_png) - 72) + full_png[-12:]
    for name, content in {**files, **bad}.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(content)
    return lossless, jpegs, {os.path.join(root, n): r for n, r in reasons.items()}


@pytest.fixture()
def folder(tmp_path):
    root = str(tmp_path / "images")
    lossless, jpegs, bad = _build_folder(root)
    return root, lossless, jpegs, bad


def test_scan_lists_exactly_the_bad_files_with_reasons(folder):
    root, _, _, bad = folder
    every_file = sorted(os.path.join(root, n) for n in os.listdir(root))
    assert dict(find_bad_images(every_file)) == bad
    assert [p for p, _ in find_bad_images(every_file)] == sorted(bad)


def test_source_skips_bad_files_with_one_warning(folder, caplog):
    root, lossless, jpegs, bad = folder
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        source = ImageFolderSource(root)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"Skipping {len(bad)} of " in message
    for path, reason in bad.items():
        assert f"{path}: {reason}" in message
    assert dict(source.bad_files) == bad
    good_count = len(os.listdir(root)) - len(bad)
    assert good_count == len(lossless) + len(jpegs) + 3
    assert source.num_examples("train") == good_count
    assert not set(source.files("train")[0]) & set(bad)


def test_strict_raises_naming_every_bad_file(folder):
    root, _, _, bad = folder
    with pytest.raises(ValueError) as error:
        ImageFolderSource(root, strict=True)
    message = str(error.value)
    for path, reason in bad.items():
        assert f"{path}: {reason}" in message
    assert "Delete or repair them" in message and "--strict" in message


def test_an_epoch_yields_exactly_the_decodable_images(folder):
    root, lossless, jpegs, bad = folder
    source = ImageFolderSource(root)
    paths = source.files("train")[0]
    decodable = [p for p in paths if _eager_decodes(p)]
    # The safety net is exercised: some files pass the scan yet fail to decode.
    undecodable = {os.path.basename(p) for p in set(paths) - set(decodable)}
    assert {"garbled_header.jpg", "garbled.png"} <= undecodable
    images = [image.numpy() for image, _ in source.as_dataset("train", shuffle_files=False)]
    assert len(images) == len(decodable)
    for path, image in zip(decodable, images):
        name = os.path.basename(path)
        if name in lossless:
            np.testing.assert_array_equal(image, lossless[name])
        else:  # JPEG: compare with PIL's decoder on the same bytes.
            reference = np.asarray(Image.open(path).convert("RGB"), dtype=int)
            assert image.shape == reference.shape
            assert np.abs(image - reference).mean() < 2
    for name in jpegs:  # The good JPEGs are also close to their originals.
        index = decodable.index(os.path.join(root, name))
        original = _smooth_pixels(int(name[len("photo")]))
        assert np.abs(images[index].astype(int) - original).mean() < 4


def test_training_pipeline_runs_past_an_epoch(folder):
    root, *_ = folder
    source = ImageFolderSource(root)
    per_epoch = sum(_eager_decodes(p) for p in source.files("train")[0])
    ds = build_dataset(source, "train", Views("pretrain", AugmentSpec(16)), batch_size=2, seed=3)
    batches = list(ds.take(per_epoch + 2))  # About two epochs of batches of two.
    assert len(batches) == per_epoch + 2
    for images, labels in batches:
        assert images.shape == (2, 16, 16, 6)
        assert np.all(np.isfinite(images.numpy()))
        np.testing.assert_array_equal(labels.numpy(), [-1, -1])


def test_class_folders_drop_bad_files_from_every_split(tmp_path):
    root = tmp_path / "classes"
    expected_bad = {}
    for c, name in enumerate(("ant", "bee")):
        (root / name).mkdir(parents=True)
        for i in range(15):
            (root / name / f"{i}.png").write_bytes(_encode(_pixels(c * 50 + i, (4, 4)), "PNG"))
        empty = root / name / "zero.jpg"
        empty.write_bytes(b"")
        expected_bad[str(empty)] = image_folder.REASON_EMPTY
    dangling = root / "bee" / "gone.png"
    os.symlink(str(root / "nowhere.png"), str(dangling))
    expected_bad[str(dangling)] = "unreadable: No such file or directory"
    source = ImageFolderSource(str(root))
    assert dict(source.bad_files) == expected_bad
    seen = set(source.files("train")[0]) | set(source.files("validation")[0])
    assert seen == {str(p) for p in root.rglob("*.png")} - set(expected_bad)
    assert source.num_examples("train") + source.num_examples("validation") == 30


def test_long_lists_are_cut_and_the_threaded_scan_agrees(tmp_path, caplog, monkeypatch):
    root = tmp_path / "many"
    root.mkdir()
    png = _encode(_pixels(0, (3, 3)), "PNG")
    expected_bad = {}
    for i in range(1300):
        path = root / f"{i:04d}.png"
        if i % 50 == 7:
            path.write_bytes(b"")
            expected_bad[str(path)] = image_folder.REASON_EMPTY
        elif i % 50 == 31:
            path.write_bytes(png[:-20])
            expected_bad[str(path)] = image_folder.REASON_TRUNCATED_PNG
        else:
            path.write_bytes(png)
    monkeypatch.setattr(bad_files, "SCAN_CHUNK", 100)  # 13 equal chunks for the pool.
    monkeypatch.setattr(bad_files, "PROGRESS_EVERY", 400)
    with caplog.at_level(logging.INFO, logger="tf_simclr"):  # The scan (bad_files) and the index.
        source = ImageFolderSource(str(root))
    assert len(expected_bad) == 52
    assert dict(source.bad_files) == expected_bad
    assert source.num_examples("train") == 1300 - 52
    progress = [r for r in caplog.records if r.levelno == logging.INFO and "Checked" in r.getMessage()]
    counts = [int(r.getMessage().split()[1]) for r in progress]
    assert counts == [400, 800, 1200]  # Every 400 files, in whatever order chunks finish.
    warning = [r for r in caplog.records if r.levelno == logging.WARNING][0].getMessage()
    listed = [p for p in expected_bad if p in warning]
    assert listed == sorted(expected_bad)[: image_folder.MAX_LISTED_BAD_FILES]
    assert f"... and {52 - image_folder.MAX_LISTED_BAD_FILES} more." in warning


def test_a_folder_of_only_bad_files_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"text")
    with pytest.raises(ValueError, match=r"None of the 2 image files .* is readable"):
        ImageFolderSource(str(tmp_path))


def test_load_source_strict_images_is_the_strict_source(folder):
    root, _, _, bad = folder
    with pytest.raises(ValueError, match="Delete or repair them") as error:
        load_source(f"folder:{root}", strict_images=True)
    assert all(path in str(error.value) for path in bad)
    assert load_source(f"folder:{root}").num_examples("train") == len(os.listdir(root)) - len(bad)


def test_deterministic_stream_over_undecodable_files_resumes_exactly(folder):
    """Files dropped at decode time do not shift positions between a fresh and a resumed stream."""
    root, *_ = folder
    source = ImageFolderSource(root)
    views = Views("pretrain", AugmentSpec(8, blur=False))  # A flat folder: unlabeled.

    def stream(skip=0):
        return build_dataset(source, "train", views, batch_size=3, seed=5, deterministic=True, skip_batches=skip)

    fresh = [x.numpy() for x, _ in stream().take(5)]  # More than one epoch of the decodable images.
    resumed = [x.numpy() for x, _ in stream(skip=2).take(3)]
    for got, expected in zip(resumed, fresh[2:]):
        np.testing.assert_array_equal(got, expected)
