"""Tests for deterministic, resumable input pipelines: stateless augmentation with
explicit seeds (tf_simclr.augment) and `build_dataset(..., deterministic=True,
skip_batches=k)` (tf_simclr.data), checked bit for bit against fresh pipelines,
a second process, and eager per-example computations."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tf_simclr import augment as A
from tf_simclr import data

NUM_IMAGES = 6  # Per epoch; batches of 4 straddle every other epoch boundary.
BATCH = 4
GLOBAL_SEED = 123  # Seeded shuffles combine their seed with TF's global seed.


def _write_images(root, count, size=20, seed=0):
    """`count` random PNGs in root/train/<class>/ (labels 0 and 1), written by TF."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / "train" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    _write_images(root, NUM_IMAGES)
    return str(root)


def _pipeline(folder, seed=7, **kwargs):
    options = dict(batch_size=BATCH, is_training=True, mode="pretrain", image_size=24,
                   use_blur=True, shuffle_buffer=NUM_IMAGES, seed=seed, deterministic=True)
    options.update(kwargs)
    tf.random.set_seed(GLOBAL_SEED)  # Read when the shuffles are built: same for every pipeline.
    return data.build_dataset(data.load_source(f"folder:{folder}"), "train", **options)


def _batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


@pytest.fixture(scope="module")
def fresh(folder):
    """The first 8 batches (5.3 epochs) of a fresh deterministic pipeline."""
    return _batches(_pipeline(folder), 8)


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)  # Bit for bit.
        np.testing.assert_array_equal(y, ey)


# ---- build_dataset(deterministic=True) -----------------------------------------------


def test_two_fresh_pipelines_give_identical_batches_and_seeds_matter(folder, fresh):
    first = fresh[:5]
    second = _batches(_pipeline(folder), 5)
    _assert_same_batches(second, first)
    images = np.concatenate([x for x, _ in first])
    assert len({image.tobytes() for image in images}) == len(images)  # New views every time.
    assert sorted(np.concatenate([y for _, y in first[:3]])) == [0] * 6 + [1] * 6  # 2 epochs.
    other = _batches(_pipeline(folder, seed=8), 3)
    assert not any(np.array_equal(x, ox) for (x, _), (ox, _) in zip(first, other))


@pytest.mark.parametrize("skip", [1, 3])
def test_skip_batches_resumes_the_fresh_stream(folder, fresh, skip):
    """Batches k.. equal a fresh pipeline's across epoch boundaries (every 6 examples):
    batch 1 starts mid-epoch 0 and reaches epoch 2; batch 3 starts epoch 2 exactly."""
    resumed = _batches(_pipeline(folder, skip_batches=skip), 3)
    _assert_same_batches(resumed, fresh[skip:skip + 3])


def test_finetune_pipeline_is_deterministic_and_resumable(folder):
    fresh = _batches(_pipeline(folder, mode="finetune", use_blur=False), 4)
    _assert_same_batches(_batches(_pipeline(folder, mode="finetune", use_blur=False), 4), fresh)
    resumed = _batches(_pipeline(folder, mode="finetune", use_blur=False, skip_batches=1), 3)
    _assert_same_batches(resumed, fresh[1:])


def test_each_example_is_augmented_with_its_position_seed(tmp_path):
    """One image only: example i of the stream must be the eager
    `pretrain_views(image, seed=example_seed(seed, i))`, also after skipping."""
    pixels = np.random.default_rng(3).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    (tmp_path / "only.png").write_bytes(tf.io.encode_png(pixels).numpy())
    ds = _pipeline(str(tmp_path), seed=11, skip_batches=2, use_blur=False)
    (batch, labels), = _batches(ds, 1)
    for j, got in enumerate(batch):
        position = 2 * BATCH + j
        expected = A.pretrain_views(pixels, 24, 24, seed=data.example_seed(11, position))
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels, [-1] * BATCH)


def test_input_pipelines_differ_and_each_resumes(folder):
    def pipeline(pipeline_id, skip=0):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        return _pipeline(folder, batch_size=2, input_context=context, skip_batches=skip)

    first = _batches(pipeline(0), 1)
    second = _batches(pipeline(1), 4)
    # k counts this pipeline's batches: 3 images per pipeline, so batch 3 is in epoch 2.
    _assert_same_batches(_batches(pipeline(1, skip=3), 1), second[3:4])
    assert not np.array_equal(first[0][0], second[0][0])
    assert not np.array_equal(data.example_seed(7, 5, 0), data.example_seed(7, 5, 1))


def test_a_second_process_gives_the_same_batches(folder, fresh, tmp_path):
    out = tmp_path / "batches.npz"
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        from tf_simclr import data
        tf.random.set_seed({GLOBAL_SEED})
        ds = data.build_dataset(
            data.load_source("folder:{folder}"), "train", batch_size={BATCH}, is_training=True,
            image_size=24, use_blur=True, shuffle_buffer={NUM_IMAGES}, seed=7,
            deterministic=True, skip_batches=1)
        np.savez("{out}", *[x.numpy() for x, _ in ds.take(3)])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    theirs = np.load(out)
    for i, (x, _) in enumerate(fresh[1:4]):
        np.testing.assert_array_equal(theirs[f"arr_{i}"], x)


def test_nondeterministic_skip_drops_whole_batches(folder):
    """Best effort without `deterministic`: the same number of examples is skipped
    (visible on the ordered, non-random evaluation pipeline)."""
    source = data.load_source(f"folder:{folder}")
    kwargs = dict(batch_size=2, is_training=False, image_size=20, mode="eval")
    fresh = [(x.numpy(), y.numpy()) for x, y in data.build_dataset(source, "train", **kwargs)]
    skipped = [(x.numpy(), y.numpy())
               for x, y in data.build_dataset(source, "train", skip_batches=2, **kwargs)]
    _assert_same_batches(skipped, fresh[2:])
    assert len(fresh) == NUM_IMAGES // 2


def test_deterministic_needs_a_seed_and_valid_skip(folder):
    source = data.load_source(f"folder:{folder}")
    kwargs = dict(batch_size=2, is_training=True, image_size=8)
    with pytest.raises(ValueError, match="deterministic=True needs a seed"):
        data.build_dataset(source, "train", deterministic=True, **kwargs)
    with pytest.raises(ValueError, match="skip_batches=-1"):
        data.build_dataset(source, "train", seed=1, skip_batches=-1, **kwargs)
    with pytest.raises(ValueError, match="needs an int seed. Received: seed=1.5"):
        data.build_dataset(source, "train", seed=1.5, deterministic=True, **kwargs)


# ---- Stateless augmentation ----------------------------------------------------------


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)


def test_same_seed_same_views_eagerly_and_in_tf_data():
    image = _image()
    seed = tf.constant([3, 4], tf.int64)
    views = A.pretrain_views(image, 24, 24, blur=True, seed=seed).numpy()
    tf.random.set_seed(1)  # The stateful generator must play no part.
    again = A.pretrain_views(image, 24, 24, blur=True, seed=tf.constant([3, 4], tf.int32)).numpy()
    np.testing.assert_array_equal(again, views)
    ds = tf.data.Dataset.from_tensors(image).repeat(3).map(
        lambda x: A.pretrain_views(x, 24, 24, blur=True, seed=seed), num_parallel_calls=3
    )
    for graph_views in ds.as_numpy_iterator():  # Graph (Case op) vs eager: same numbers.
        np.testing.assert_allclose(graph_views, views, atol=1e-6)
    assert not np.array_equal(views[..., :3], views[..., 3:])  # Views use different sub-seeds.
    other = A.pretrain_views(image, 24, 24, blur=True, seed=[3, 5]).numpy()
    assert not np.array_equal(other, views)
    view0 = A.preprocess_for_train(image, 24, 24, blur=True, seed=A.fold_seed(seed, 100))
    np.testing.assert_array_equal(view0.numpy(), views[..., :3])


def test_bad_seed_is_rejected():
    with pytest.raises(ValueError, match=r"seed must be an integer tensor of shape \[2\]"):
        A.random_flip(_image(), seed=[1, 2, 3])
    with pytest.raises(ValueError, match="seed must be an integer"):
        A.random_flip(_image(), seed=[0.5, 1.0])


DRAWS = 400


def _binomial_ok(count, n, p, sigmas=4.0):
    return abs(count / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _per_seed(fn, draws=DRAWS):
    """fn(seed) for seeds fold_seed([5, 6], i), i < draws, inside tf.data."""
    ds = tf.data.Dataset.range(draws).map(lambda i: fn(A.fold_seed([5, 6], i)))
    return np.stack(list(ds.as_numpy_iterator()))


def test_seeded_flips_are_fair_and_views_flip_independently():
    image = A.to_float_rgb(_image())  # No left-right symmetry: a flip always shows.

    def flipped(seed):
        view = A.preprocess_for_train(image, 24, 20, crop=False, color_distort=False, seed=seed)
        return tf.reduce_all(tf.abs(view - tf.clip_by_value(image, 0, 1)[:, ::-1]) < 1e-6)

    views = _per_seed(lambda s: tf.stack([flipped(A.fold_seed(s, 100)), flipped(A.fold_seed(s, 101))]))
    assert _binomial_ok(views[:, 0].sum(), DRAWS, 0.5) and _binomial_ok(views[:, 1].sum(), DRAWS, 0.5)
    assert _binomial_ok((views[:, 0] & views[:, 1]).sum(), DRAWS, 0.25)


def test_seeded_crop_areas_match_the_unseeded_distribution():
    shape = tf.constant([60, 80, 3])

    def area(box):
        return tf.cast(box[1][0] * box[1][1], tf.float32) / 4800.0

    seeded = _per_seed(lambda s: area(A.sample_crop_box(shape, seed=s)))
    tf.random.set_seed(2)
    unseeded = np.array(list(
        tf.data.Dataset.range(DRAWS).map(lambda _: area(A.sample_crop_box(shape))).as_numpy_iterator()
    ))
    assert seeded.min() >= 0.08 and seeded.max() <= 1.0
    assert len(np.unique(seeded)) > DRAWS // 4  # Not one box repeated.
    assert stats.ks_2samp(seeded, unseeded).pvalue > 1e-3


def test_seeded_grayscale_and_blur_shares():
    image = np.random.default_rng(1).uniform(0.1, 0.9, (32, 32, 3)).astype(np.float32)
    colour = _per_seed(lambda s: A.random_color_distortion(image, 1.0, seed=s))
    gray = np.all((colour[..., 0] == colour[..., 1]) & (colour[..., 1] == colour[..., 2]), axis=(1, 2))
    assert _binomial_ok(gray.sum(), DRAWS, 0.2), gray.mean()
    blurred = _per_seed(lambda s: A.random_blur(image, p=0.5, seed=s))
    changed = ~np.all(blurred == image, axis=(1, 2, 3))
    assert _binomial_ok(changed.sum(), DRAWS, 0.5), changed.mean()
    # Sigma comes from its own sub-seed: blurred images differ from each other.
    assert len({b.tobytes() for b in blurred[changed]}) == changed.sum()


def test_tfds_source_is_deterministic_and_resumable(tmp_path):
    """A TFDS dataset (the real stl10 format, written locally) with shuffled files."""
    import tensorflow_datasets as tfds

    real = tfds.builder("stl10", data_dir=str(tmp_path))
    rng = np.random.default_rng(4)
    examples = [(i, {"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "label": i % 10})
                for i in range(NUM_IMAGES)]
    tfds.dataset_builders.store_as_tfds_dataset(
        name="stl10", version=str(real.version), features=real.info.features,
        split_datasets={"train": examples, "test": examples[:1], "unlabelled": examples[:1]},
        data_dir=str(tmp_path), download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    source = data.load_source("stl10", str(tmp_path), prepare=False)

    def pipeline(skip=0):
        tf.random.set_seed(GLOBAL_SEED)
        return data.build_dataset(source, "train", batch_size=BATCH, is_training=True, image_size=16,
                                  shuffle_buffer=NUM_IMAGES, seed=3, deterministic=True,
                                  skip_batches=skip)

    fresh = _batches(pipeline(), 4)
    _assert_same_batches(_batches(pipeline(), 4), fresh)
    _assert_same_batches(_batches(pipeline(skip=1), 3), fresh[1:])
    assert sorted(np.concatenate([y for _, y in fresh[:3]])) == sorted(list(range(6)) * 2)
