"""Throughput of the SimCLR augmentations through tf.data.

    python benchmarks/augment_benchmark.py                      # about 1.5 min on 2 CPU cores
    python benchmarks/augment_benchmark.py --seconds 3 --sizes 32
    python benchmarks/augment_benchmark.py --no_baseline

Each element is two views of one synthetic uint8 image made by
`tf_simclr.augment.pretrain_views` (random crop, flip, colour distortion; the
second line adds blur) in a parallel `map`, then batched and prefetched, as the
training input pipeline does. Sources are 32x32 for 32 px and 256x320 for
224 px: smooth random colour fields with a little grain, because TensorFlow's
hue and saturation kernels branch per pixel and run several times slower on
pure noise than on photos.

"reference-style" rebuilds the reference's `tf2/data_util.py` pipeline from
stock `tf.image` ops (float conversion before the crop, nested `tf.cond`s,
`tf.image.rgb_to_grayscale`) and runs it on the same machine, in the same
process, interleaved with ours: on a shared machine only numbers from one run
compare. The pipelines take turns in short rounds and each line reports the
median round; CPU time per image (all threads of this process) is steadier
than images/s when other programs share the cores. The reference's figures
quoted in the tf_simclr issue for this kind of machine are printed last for
comparison: on this shared machine the reference-style rebuild does not come
near them either.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tf_simclr import augment  # noqa: E402

QUOTED_REFERENCE = {32: 10_800, 224: 670}  # images/s, two views, no blur (the figures).
SOURCE_SHAPES = {32: (32, 32), 224: (256, 320)}
ROUNDS = 3


def synthetic_images(num: int, shape: tuple[int, int], seed: int = 0) -> tf.Tensor:
    """Smooth random uint8 colour images `[num, H, W, 3]` (photo-like colour statistics)."""
    rng = tf.random.Generator.from_seed(seed)
    coarse = rng.uniform([num, max(shape[0] // 16, 2), max(shape[1] // 16, 2), 3], 0.0, 255.0)
    smooth = tf.image.resize(coarse, shape, method="bicubic")
    grain = rng.normal([num, *shape, 3], stddev=4.0)
    return tf.cast(tf.clip_by_value(smooth + grain, 0.0, 255.0), tf.uint8)


def _reference_jitter(image: tf.Tensor) -> tf.Tensor:
    """Strength-1 colour jitter in a shuffled order, chosen by nested conds, as the reference."""

    def step(i, x):
        return tf.cond(
            i < 2,
            lambda: tf.cond(i < 1, lambda: x * tf.random.uniform([], 0.2, 1.8),
                            lambda: tf.image.random_contrast(x, 0.2, 1.8)),
            lambda: tf.cond(i < 3, lambda: tf.image.random_saturation(x, 0.2, 1.8),
                            lambda: tf.image.random_hue(x, 0.2)),
        )

    order = tf.random.shuffle(tf.range(4))
    for k in range(4):
        image = tf.clip_by_value(step(order[k], image), 0.0, 1.0)
    return image


def _reference_view(image: tf.Tensor, size: int) -> tf.Tensor:
    """One view the way the reference builds it, from stock tf.image ops."""

    def maybe(fn, p, x):
        return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)

    image = tf.image.convert_image_dtype(image, tf.float32)
    begin, box, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=100)
    image = tf.image.crop_to_bounding_box(image, begin[0], begin[1], box[0], box[1])
    image = tf.image.resize([image], [size, size], method="bicubic")[0]
    image = tf.image.random_flip_left_right(image)
    image = maybe(_reference_jitter, 0.8, image)
    image = maybe(lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), 0.2, image)
    return tf.clip_by_value(tf.reshape(image, [size, size, 3]), 0.0, 1.0)


def pipelines(size: int, baseline: bool) -> dict:
    """Name -> per-image map function producing two views."""

    def ours(image):
        return augment.pretrain_views(image, size, size)

    def ours_blur(image):
        return augment.pretrain_views(image, size, size, blur=True)

    def reference_style(image):
        return tf.concat([_reference_view(image, size) for _ in range(2)], -1)

    fns = {"tf_simclr crop+flip+jitter": ours, "tf_simclr  ... +blur": ours_blur}
    if baseline:
        fns["reference-style, no blur"] = reference_style
    return fns


def make_iterator(fn, size: int, batch_size: int):
    """Endless batches of two-view elements from 64 synthetic images, warmed up."""
    ds = tf.data.Dataset.from_tensor_slices(synthetic_images(64, SOURCE_SHAPES[size])).repeat()
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    it = iter(ds.batch(batch_size, drop_remainder=True).prefetch(1))
    for _ in range(3):
        next(it)
    return it


def time_round(it, batch_size: int, seconds: float) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) over one round of about `seconds`."""
    next(it)  # Drain what was prefetched while another pipeline ran.
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(it)
        count += batch_size
    return count / (time.perf_counter() - start), (time.process_time() - cpu) * 1e3 / count


def benchmark(size: int, seconds: float, baseline: bool) -> dict:
    """Median (images/s, CPU ms per image) of each pipeline, timed in interleaved rounds."""
    batch_size = 256 if size <= 64 else 32
    fns = pipelines(size, baseline)
    iterators = {name: make_iterator(fn, size, batch_size) for name, fn in fns.items()}
    rates = {name: [] for name in iterators}
    for _ in range(ROUNDS):
        for name, it in iterators.items():
            rates[name].append(time_round(it, batch_size, seconds / ROUNDS))
    return {name: tuple(map(statistics.median, zip(*r))) for name, r in rates.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="Timed seconds per line.")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[32, 224], choices=sorted(SOURCE_SHAPES)
    )
    parser.add_argument(
        "--no_baseline", action="store_true", help="Skip the reference-style pipeline."
    )
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; two views per image.")
    print(f"{'size':>7s}  {'pipeline':<28s} {'images/s':>8s} {'CPU ms/image':>13s}")
    for size in args.sizes:
        results = benchmark(size, args.seconds, baseline=not args.no_baseline)
        for name, (rate, cpu_ms) in results.items():
            print(f"{size:4d} px  {name:<28s} {rate:8.0f} {cpu_ms:13.3f}")
        print(f"{size:4d} px  {'reference (quoted in issue)':<28s} {QUOTED_REFERENCE[size]:8d}")


if __name__ == "__main__":
    main()
