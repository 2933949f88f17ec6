"""Deterministic, resumable input: stateless seeded augmentation and build_dataset(deterministic=True, skip_batches=k),
checked bit for bit against fresh pipelines, a second process, and eager per-example computations."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from scipy import stats

from tf_simclr.augment import host as A
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.data import pipeline
from tf_simclr.data.pipeline import Views, build_dataset
from tf_simclr.data.sources import load_source

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


def _pipeline(folder, seed=7, mode="pretrain", blur=True, **kwargs):
    options = dict(batch_size=BATCH, shuffle_buffer=NUM_IMAGES, seed=seed, deterministic=True)
    options.update(kwargs)
    tf.random.set_seed(GLOBAL_SEED)  # Read when the shuffles are built: same for every pipeline.
    views = Views(mode, AugmentSpec(24, blur=blur))
    return build_dataset(load_source(f"folder:{folder}"), "train", views, **options)


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
    fresh = _batches(_pipeline(folder, mode="finetune", blur=False), 4)
    _assert_same_batches(_batches(_pipeline(folder, mode="finetune", blur=False), 4), fresh)
    resumed = _batches(_pipeline(folder, mode="finetune", blur=False, skip_batches=1), 3)
    _assert_same_batches(resumed, fresh[1:])


def test_each_example_is_augmented_with_its_position_seed(tmp_path):
    """One image only: example i of the stream must be the eager
    `pretrain_views(image, spec, seed=example_seed(seed, i))`, also after skipping."""
    pixels = np.random.default_rng(3).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    (tmp_path / "only.png").write_bytes(tf.io.encode_png(pixels).numpy())
    ds = _pipeline(str(tmp_path), seed=11, skip_batches=2, blur=False)
    (batch, labels), = _batches(ds, 1)
    for j, got in enumerate(batch):
        position = 2 * BATCH + j
        expected = A.pretrain_views(pixels, AugmentSpec(24, blur=False), seed=pipeline.example_seed(11, position))
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels, [-1] * BATCH)


def test_example_seed_is_a_pure_function_of_seed_position_and_pipeline():
    np.testing.assert_array_equal(pipeline.example_seed(7, 5), pipeline.example_seed(7, 5, 0))
    expected = tf.random.experimental.stateless_fold_in(tf.constant([7, 0], tf.int64), tf.constant(5, tf.int64))
    np.testing.assert_array_equal(pipeline.example_seed(7, 5), expected)
    seeds = {tuple(pipeline.example_seed(s, p, i).numpy()) for s in (1, 2) for p in range(4) for i in range(2)}
    assert len(seeds) == 16  # Every (seed, position, pipeline) its own.


def test_input_pipelines_differ_and_each_resumes(folder):
    def stream(pipeline_id, skip=0):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        return _pipeline(folder, batch_size=2, input_context=context, skip_batches=skip)

    first = _batches(stream(0), 1)
    second = _batches(stream(1), 4)
    # k counts this pipeline's batches: 3 images per pipeline, so batch 3 is in epoch 2.
    _assert_same_batches(_batches(stream(1, skip=3), 1), second[3:4])
    assert not np.array_equal(first[0][0], second[0][0])
    assert not np.array_equal(pipeline.example_seed(7, 5, 0), pipeline.example_seed(7, 5, 1))


def test_a_second_process_gives_the_same_batches(folder, fresh, tmp_path):
    out = tmp_path / "batches.npz"
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        from tf_simclr.augment.spec import AugmentSpec
        from tf_simclr.data.pipeline import Views, build_dataset
        from tf_simclr.data.sources import load_source
        tf.random.set_seed({GLOBAL_SEED})
        ds = build_dataset(
            load_source("folder:{folder}"), "train", Views("pretrain", AugmentSpec(24, blur=True)),
            batch_size={BATCH}, shuffle_buffer={NUM_IMAGES}, seed=7, deterministic=True, skip_batches=1)
        np.savez("{out}", *[x.numpy() for x, _ in ds.take(3)])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    theirs = np.load(out)
    for i, (x, _) in enumerate(fresh[1:4]):
        np.testing.assert_array_equal(theirs[f"arr_{i}"], x)


def test_nondeterministic_skip_drops_whole_batches(folder):
    """Best effort without `deterministic`: the same number of examples is skipped
    (visible on the ordered, non-random evaluation pipeline)."""
    source = load_source(f"folder:{folder}")
    fresh = [(x.numpy(), y.numpy()) for x, y in build_dataset(source, "train", Views.eval(20), batch_size=2)]
    skipped = [(x.numpy(), y.numpy())
               for x, y in build_dataset(source, "train", Views.eval(20), batch_size=2, skip_batches=2)]
    _assert_same_batches(skipped, fresh[2:])
    assert len(fresh) == NUM_IMAGES // 2


@pytest.mark.parametrize("skip, augmented", [(0, NUM_IMAGES), (2, 2)])
def test_skipped_examples_are_not_augmented(folder, monkeypatch, skip, augmented):
    """skip_batches drops examples before the map: one epoch of 6, batches of 2, skipping 2 augments only 2."""
    counter = tf.Variable(0, dtype=tf.int64)
    original = A.pretrain_views

    def counting(image, spec, **kwargs):
        return original(image, spec, **kwargs) + 0.0 * tf.cast(counter.assign_add(1), tf.float32)

    monkeypatch.setattr(A, "pretrain_views", counting)
    ds = _pipeline(folder, batch_size=2, skip_batches=skip, repeat=False)
    assert len(_batches(ds, 10)) == (NUM_IMAGES - 2 * skip) // 2
    assert int(counter.numpy()) == augmented


def test_deterministic_needs_a_seed_and_valid_skip(folder):
    source = load_source(f"folder:{folder}")
    views = Views("pretrain", AugmentSpec(8))
    with pytest.raises(ValueError, match=r"Deterministic runs need an int seed.*Received: seed=None"):
        build_dataset(source, "train", views, batch_size=2, deterministic=True)
    with pytest.raises(ValueError, match="skip_batches=-1"):
        build_dataset(source, "train", views, batch_size=2, seed=1, skip_batches=-1)
    with pytest.raises(ValueError, match=r"need an int seed.*Received: seed=1.5"):
        build_dataset(source, "train", views, batch_size=2, seed=1.5, deterministic=True)
    with pytest.raises(ValueError, match="Received: seed=True"):
        pipeline.check_stream_args(True, True, 0)
    pipeline.check_stream_args(True, np.int64(3), 0)  # NumPy ints are ints.
    pipeline.check_stream_args(False, None, 2)


# ---- Stateless augmentation ----------------------------------------------------------


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)


SPEC_BLUR = AugmentSpec(24, blur=True)


def test_same_seed_same_views_eagerly_and_in_tf_data():
    image = _image()
    seed = tf.constant([3, 4], tf.int64)
    views = A.pretrain_views(image, SPEC_BLUR, seed=seed).numpy()
    tf.random.set_seed(1)  # The stateful generator must play no part.
    again = A.pretrain_views(image, SPEC_BLUR, seed=tf.constant([3, 4], tf.int32)).numpy()
    np.testing.assert_array_equal(again, views)
    ds = tf.data.Dataset.from_tensors(image).repeat(3).map(
        lambda x: A.pretrain_views(x, SPEC_BLUR, seed=seed), num_parallel_calls=3
    )
    for graph_views in ds.as_numpy_iterator():  # Graph (Case op) vs eager: same numbers.
        np.testing.assert_allclose(graph_views, views, atol=1e-6)
    assert not np.array_equal(views[..., :3], views[..., 3:])  # Views use different sub-seeds.
    other = A.pretrain_views(image, SPEC_BLUR, seed=[3, 5]).numpy()
    assert not np.array_equal(other, views)
    view0 = A.preprocess_for_train(image, SPEC_BLUR, seed=A.fold_seed(seed, 100))
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
    """Without crop and colour a view is the image or its mirror, half and half, independently per view."""
    square = np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # No mirror symmetry.
    spec = AugmentSpec(24, blur=False)
    plain = A.to_float_rgb(square)

    def flipped(seed):
        view = A.preprocess_for_train(square, spec, crop=False, color_distort=False, seed=seed)
        return tf.stack([tf.reduce_all(tf.abs(view - plain[:, ::-1]) < 1e-6), tf.reduce_all(tf.abs(view - plain) < 1e-6)])

    views = _per_seed(lambda s: tf.stack([flipped(A.fold_seed(s, 100)), flipped(A.fold_seed(s, 101))]))
    assert np.all(views[..., 0] ^ views[..., 1])  # Exactly one of the two, always.
    first, second = views[:, 0, 0], views[:, 1, 0]
    assert _binomial_ok(first.sum(), DRAWS, 0.5) and _binomial_ok(second.sum(), DRAWS, 0.5)
    assert _binomial_ok((first & second).sum(), DRAWS, 0.25)


def test_seeded_crop_areas_match_the_unseeded_distribution():
    shape = tf.constant([60, 80, 3])
    spec = AugmentSpec(16)

    def area(box):
        return tf.cast(box[1][0] * box[1][1], tf.float32) / 4800.0

    seeded = _per_seed(lambda s: area(A.sample_crop_box(shape, spec, seed=s)))
    tf.random.set_seed(2)
    unseeded = np.array(list(
        tf.data.Dataset.range(DRAWS).map(lambda _: area(A.sample_crop_box(shape, spec))).as_numpy_iterator()
    ))
    assert seeded.min() >= 0.08 and seeded.max() <= 1.0
    assert len(np.unique(seeded)) > DRAWS // 4  # Not one box repeated.
    assert stats.ks_2samp(seeded, unseeded).pvalue > 1e-3


def test_seeded_grayscale_and_blur_shares():
    image = np.random.default_rng(1).uniform(0.1, 0.9, (32, 32, 3)).astype(np.float32)
    colour = _per_seed(lambda s: A.random_color_distortion(image, AugmentSpec(32), seed=s))
    gray = np.all((colour[..., 0] == colour[..., 1]) & (colour[..., 1] == colour[..., 2]), axis=(1, 2))
    assert _binomial_ok(gray.sum(), DRAWS, 0.2), gray.mean()
    blurred = _per_seed(lambda s: A.random_blur(image, AugmentSpec(32, blur_probability=0.5), seed=s))
    changed = ~np.all(blurred == image, axis=(1, 2, 3))
    assert _binomial_ok(changed.sum(), DRAWS, 0.5), changed.mean()
    # Sigma comes from its own sub-seed: blurred images differ from each other.
    assert len({b.tobytes() for b in blurred[changed]}) == changed.sum()


def test_tfds_source_is_deterministic_and_resumable(tmp_path):
    """A TFDS dataset (the real stl10 format, written locally) with shuffled files."""
    real = tfds.builder("stl10", data_dir=str(tmp_path))
    rng = np.random.default_rng(4)
    examples = [(i, {"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "label": i % 10})
                for i in range(NUM_IMAGES)]
    tfds.dataset_builders.store_as_tfds_dataset(
        name="stl10", version=str(real.version), features=real.info.features,
        split_datasets={"train": examples, "test": examples[:1], "unlabelled": examples[:1]},
        data_dir=str(tmp_path), download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    source = load_source("stl10", str(tmp_path), prepare=False)

    def stream(skip=0):
        tf.random.set_seed(GLOBAL_SEED)
        return build_dataset(source, "train", Views("pretrain", AugmentSpec(16)), batch_size=BATCH,
                             shuffle_buffer=NUM_IMAGES, seed=3, deterministic=True, skip_batches=skip)

    fresh = _batches(stream(), 4)
    _assert_same_batches(_batches(stream(), 4), fresh)
    _assert_same_batches(_batches(stream(skip=1), 3), fresh[1:])
    assert sorted(np.concatenate([y for _, y in fresh[:3]])) == sorted(list(range(6)) * 2)
