"""Train-step throughput of SimCLR pretraining on this machine (synthetic data, no input pipeline).

    python benchmarks/train_step_benchmark.py [--sizes 32 224] [--depth 18] [--width 1.0] [--batch 32] [--steps 5]

Prints images/s (two views per image) of `SimCLRModel.train_step` under `fit`
with LARS for each image size, and the ratio between sizes, measured in one run.
The input pipeline is benchmarked separately in augment_benchmark.py.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_simclr  # noqa: E402


def measure(image_size: int, depth: int, width: float, batch: int, steps: int, steps_per_execution: int) -> float:
    config = tf_simclr.ModelConfig(resnet_depth=depth, width_multiplier=width, image_size=image_size, global_bn=False)
    model = tf_simclr.build_model(config, num_classes=10)
    excluded = model.configure_weight_decay(1e-6, optimizer_applies_decay=True)
    model.compile(
        optimizer=tf_simclr.build_optimizer("lars", 0.1, weight_decay=1e-6, excluded_variables=excluded),
        steps_per_execution=steps_per_execution,
    )
    rng = np.random.default_rng(0)
    images = rng.random((batch, image_size, image_size, 6), dtype=np.float32)
    labels = rng.integers(0, 10, batch).astype("int32")
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, steps_per_epoch=steps_per_execution, epochs=1, verbose=0, shuffle=False)  # Trace, warm up.
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return batch * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--steps_per_execution", type=int, default=1)
    args = parser.parse_args()
    print(f"SimCLR train step, ResNet-{args.depth} x{args.width}, batch {args.batch} images (2 views each), "
          f"{os.cpu_count()} CPU cores, TF {tf.__version__}")
    rates = {}
    for size in args.sizes:
        rates[size] = measure(size, args.depth, args.width, args.batch, args.steps, args.steps_per_execution)
        print(f"  {size:4d} px: {rates[size]:8.1f} images/s")
    if len(rates) > 1:
        small, large = min(rates), max(rates)
        print(f"  ratio {small} px / {large} px: {rates[small] / rates[large]:.1f}x")


if __name__ == "__main__":
    main()
