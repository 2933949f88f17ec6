"""Choosing the linear probe's L2 penalty: the grid's probes trained side by side against one fit per penalty.

    python benchmarks/probe_grid.py [--features 256] [--examples 50000] [--rounds 3]
    KERAS_BACKEND=jax python benchmarks/probe_grid.py

`linear_probe.linear_eval_per_l2` trains one probe per penalty in a single Keras
model (summed objectives, a penalty per output column); `linear_eval` at each
penalty is what the report did before. Both run on the same synthetic features
(10 Gaussian classes, the frozen-feature report's default grid and 30 epochs),
interleaved `--rounds` times in one process; this prints the seconds of each,
the ratio, and whether every penalty's accuracies agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def _features(examples, width, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, examples)
    centres = rng.normal(size=(10, width))
    features = centres[labels] + 8.0 * rng.normal(size=(examples, width))  # About 80-90% separable.
    return features.astype(np.float32), labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=256, help="feature width (256: the quickstart encoder)")
    parser.add_argument("--examples", type=int, default=50000, help="training examples (the report's 50,000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import keras

    from tf_simclr.evaluation import linear_probe

    grid = linear_probe.PROBE_L2_GRID
    x, y = _features(args.examples + 10000, args.features)
    train, test = (x[:args.examples], y[:args.examples]), (x[args.examples:], y[args.examples:])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Keras {keras.__version__} on "
          f"{keras.backend.backend()}; {args.examples} x {args.features} features, 10 classes, grid {grid}")

    times = {"one fit per penalty": [], "side by side": []}
    agree = True
    for _ in range(args.rounds):
        start = time.perf_counter()
        alone = [linear_probe.linear_eval(*train, *test, num_classes=10, l2=l2) for l2 in grid]
        times["one fit per penalty"].append(time.perf_counter() - start)
        start = time.perf_counter()
        together = linear_probe.linear_eval_per_l2(*train, *test, num_classes=10, l2s=grid)
        times["side by side"].append(time.perf_counter() - start)
        agree &= all(abs(a[k] - b[k]) <= 1 / len(test[1]) for a, b in zip(alone, together) for k in a)
    for name, seconds in times.items():
        print(f"{name:20s} median {statistics.median(seconds):6.2f} s  ({', '.join(f'{s:.2f}' for s in seconds)})")
    ratio = statistics.median(times["one fit per penalty"]) / statistics.median(times["side by side"])
    print(f"side by side is {ratio:.2f}x faster; every penalty's accuracies within one test example: {agree}")
    print("top-1 per penalty:", ", ".join(f"{l2:g}: {100 * r['top_1_accuracy']:.2f}%" for l2, r in zip(grid, together)))


if __name__ == "__main__":
    main()
