"""Where on-device augmentation spends its time: each stage of one view set, jitted alone (JAX).

    KERAS_BACKEND=jax python benchmarks/device_augment_stages.py [--batch 256] [--input 256] [--size 224]

Prints ms per call of every stage of `device_augment.stacked_views` (one view
set of B images unless named) on a batch already on the device, and of candidate
rewrites, so the next change is chosen by measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _time(fn, args, repeats: int, windows: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # Compile.
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        out = None
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / repeats * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------ candidate rewrites


def resize_low_precision(images, top, left, height, width, flip, image_size, dtype):
    """`resized_crops` with the two matmuls' operands in `dtype` (float32 accumulation by XLA)."""
    from keras import ops

    from tf_simclr import device_augment as da

    rows = da._bicubic_matrix(top, height, images.shape[1], image_size)
    cols = da._bicubic_matrix(left, width, images.shape[2], image_size)
    cols = ops.where(flip[:, None, None], ops.flip(cols, axis=1), cols)
    pixels = ops.cast(images, dtype)
    out = ops.einsum("byi,bijc->byjc", ops.cast(rows, dtype), pixels)
    out = ops.einsum("byjc,bxj->byxc", out, ops.cast(cols, dtype))
    return ops.cast(out, "float32") * (1.0 / 255.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--windows", type=int, default=3)
    args = parser.parse_args()

    import jax
    import keras
    from keras import ops

    from tf_simclr import device_augment as da

    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, keras {keras.__version__}, "
          f"default matmul precision {jax.config.jax_default_matmul_precision}")
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (args.batch, args.input, args.input, 3), dtype=np.uint8))
    key = jax.device_put(np.array([3, 4], np.uint32))
    size = args.size

    def uniforms(key):
        return da.hashed_uniforms(key, args.batch, 0, da._COLS_PER_VIEW)

    u = jax.jit(uniforms)(key)
    boxes = jax.jit(lambda u: da._crop_boxes_from_uniforms(u, args.input, args.input, 1.0))(u)
    flip = u[:, da._COL_FLIP] < 0.5
    floats = jax.jit(lambda *a: da.resized_crops(*a, size))(images, *boxes, flip)
    floats = jax.jit(lambda x: ops.clip(x, 0.0, 1.0))(floats)
    sigmas = 0.1 + 1.9 * u[:, da._COL_SIGMA]

    stages = {
        "uniforms + crop boxes": (jax.jit(lambda k: da._crop_boxes_from_uniforms(uniforms(k), args.input, args.input, 1.0)), (key,)),
        "resize float32 (used)": (jax.jit(lambda *a: da.resized_crops(*a, size)), (images, *boxes, flip)),
        "resize bfloat16 operands": (jax.jit(lambda *a: resize_low_precision(*a, size, "bfloat16")), (images, *boxes, flip)),
        "resize float16 operands": (jax.jit(lambda *a: resize_low_precision(*a, size, "float16")), (images, *boxes, flip)),
        "colour jitter + grayscale": (jax.jit(lambda x, u: da._color_distortion(x, u, 1.0)), (floats, u)),
        "jitter only": (jax.jit(lambda x, u: da._color_jitter(x, u, 1.0)), (floats, u)),
        "brightness x4": (jax.jit(lambda x, u: da.adjust_brightness(da.adjust_brightness(da.adjust_brightness(da.adjust_brightness(x, u[:, 0]), u[:, 1]), u[:, 2]), u[:, 3])), (floats, u)),
        "contrast x1": (jax.jit(lambda x, u: da.adjust_contrast(x, u[:, 0])), (floats, u)),
        "saturation x1": (jax.jit(lambda x, u: da.adjust_saturation(x, u[:, 0])), (floats, u)),
        "hue x1": (jax.jit(lambda x, u: da.adjust_hue(x, u[:, 0])), (floats, u)),
        "blur (banded matmuls)": (jax.jit(lambda x, s: da.gaussian_blur(x, s, size // 10)), (floats, sigmas)),
        "two views, stacked_views (the train step's)": (jax.jit(lambda x, k: da.stacked_views(x, k, image_size=size)), (images, key)),
        "two views, device_views": (jax.jit(lambda x, k: da.device_views(x, k, image_size=size)), (images, key)),
    }
    exact = jax.jit(lambda *a: da.resized_crops(*a, size))(images, *boxes, flip)
    for dtype in ("bfloat16", "float16"):
        low = jax.jit(lambda *a: resize_low_precision(*a, size, dtype))(images, *boxes, flip)
        print(f"resize {dtype} vs float32: max abs diff {float(jax.numpy.max(jax.numpy.abs(exact - low))):.2e}")
    print(f"\n{args.batch} images {args.input} px -> {size} px, ms per call (median of {args.windows} x {args.repeats}):")
    for name, (fn, fn_args) in stages.items():
        print(f"  {name:40s} {_time(fn, fn_args, args.repeats, args.windows):8.2f} ms", flush=True)


if __name__ == "__main__":
    main()
