"""Train-step throughput of SimCLR pretraining: tf_simclr's `fit` path beside a plain-step baseline, one run.

    python benchmarks/train_step_benchmark.py [--size 32] [--depth 18] [--width 1.0] [--batch 64] [--steps 20]

Same model, same synthetic batch (two views of `--batch` images), same LARS, three ways:

* `plain`: the reference's shape of step, a `tf.function` over a `GradientTape`
  computing NT-Xent on the projections and applying LARS, nothing else;
* `our_step`: tf_simclr's own `train_step` (metrics, linear head, weight-decay
  plan) called from the same kind of `tf.function` loop, without Keras's `fit`;
* `fit`: `model.fit`, as `run.py` trains (callbacks off), optionally with
  `--steps_per_execution`;
* with `--compare_strided_1x1`, also `fit_strided_1x1`: the same `fit` with strided
  1x1 shortcuts on < 16 channels as plain strided convolutions, the form tf_simclr
  avoids because oneDNN's kernel for it corrupts the heap at large images (see
  benchmarks/onednn_strided_1x1_crash.py); only safe at small image sizes.

The variants run interleaved (`--rounds` times each, median reported) so load
changes on a shared machine hit them alike; ratios to `plain` are printed.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tf_simclr from this checkout.

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_simclr import losses  # noqa: E402
from tf_simclr.config import ModelConfig  # noqa: E402
from tf_simclr.models import factory  # noqa: E402
from tf_simclr.models.backbones import resnet  # noqa: E402
from tf_simclr.optim import optimizers  # noqa: E402
from tf_simclr.optim.weight_decay import plan_weight_decay  # noqa: E402


def build(args, num_classes):
    config = ModelConfig(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.size, global_bn=False,
                         proj_out_dim=args.proj_dim, num_proj_layers=args.proj_layers,
                         cifar_stem_stride=getattr(args, "cifar_stem_stride", 1))
    keras.utils.set_random_seed(0)
    model = factory.build_model(config, num_classes=num_classes, objective=losses.NTXent(0.2))
    plan = plan_weight_decay(model, 1e-4, optimizer_applies_decay=True)
    model.set_weight_decay(plan)
    optimizer = optimizers.build_optimizer("lars", 0.1, weight_decay=1e-4, excluded_variables=plan.optimizer_excluded)
    return model, optimizer


def plain_runner(args, data):
    """The reference's step: loss on the projections, tape, LARS (no metrics, no head, no Keras loop)."""
    model, optimizer = build(args, None)
    optimizer.build(model.trainable_variables)
    images, _ = data
    views = tf.concat(tf.split(images, 2, axis=-1), axis=0)

    @tf.function(jit_compile=args.jit)
    def step(views):
        with tf.GradientTape() as tape:
            outputs = model(views, training=True)
            loss, _, _ = losses.contrastive_loss(outputs["proj_head_output"], temperature=0.2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda steps: [step(views) for _ in range(steps)][-1].numpy()


def our_step_runner(args, data):
    """tf_simclr's train_step (what fit runs), from a plain tf.function loop."""
    model, optimizer = build(args, 10)
    model.compile(optimizer=optimizer, jit_compile=args.jit)
    optimizer.build(model.trainable_variables)
    step = tf.function(model.train_step, jit_compile=args.jit)
    return lambda steps: [step(data) for _ in range(steps)][-1]["total_loss"].numpy()


def fit_runner(args, data):
    model, optimizer = build(args, 10)
    model.compile(optimizer=optimizer, jit_compile=args.jit, steps_per_execution=args.steps_per_execution)
    dataset = tf.data.Dataset.from_tensors(data).repeat()

    def run(steps):
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        return float(np.asarray(model.optimizer.iterations))

    return run


def strided_1x1_fit_runner(args, data):
    """`fit` with the model built before the oneDNN-safe form: every 1x1 shortcut a strided convolution."""
    saved = resnet.MIN_CHANNELS_FOR_STRIDED_1X1
    resnet.MIN_CHANNELS_FOR_STRIDED_1X1 = 0
    try:
        return fit_runner(args, data)
    finally:
        resnet.MIN_CHANNELS_FOR_STRIDED_1X1 = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--proj_dim", type=int, default=128)
    parser.add_argument("--proj_layers", type=int, default=3)
    parser.add_argument("--cifar_stem_stride", type=int, default=1, help="As the flag (images <= 32 px).")
    parser.add_argument("--steps", type=int, default=20, help="Steps per timed window.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed windows per variant (interleaved).")
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--jit", action="store_true", help="XLA for every variant.")
    parser.add_argument("--compare_strided_1x1", action="store_true",
                        help="Also time fit with plain strided 1x1 shortcuts (safe only at small image sizes).")
    args = parser.parse_args()
    if args.steps % args.steps_per_execution:
        parser.error("--steps must be a multiple of --steps_per_execution")
    rng = np.random.default_rng(0)
    data = (tf.constant(rng.random((args.batch, args.size, args.size, 6), dtype=np.float32)),
            tf.constant(rng.integers(0, 10, args.batch).astype("int32")))
    runners = {"plain": plain_runner(args, data), "our_step": our_step_runner(args, data),
               "fit": fit_runner(args, data)}
    if args.compare_strided_1x1:
        runners["fit_strided_1x1"] = strided_1x1_fit_runner(args, data)
    for run in runners.values():  # Trace and warm up.
        run(max(2, args.steps_per_execution))
    rates = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(args.steps)
            rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
    print(f"SimCLR train step, ResNet-{args.depth} x{args.width}, {args.size} px, batch {args.batch} images "
          f"(2 views each), LARS, {os.cpu_count()} CPU cores, TF {tf.__version__}, Keras {keras.__version__}"
          f"{', XLA' if args.jit else ''}, steps_per_execution {args.steps_per_execution}")
    base = statistics.median(rates["plain"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<15} {median:8.1f} images/s  (min {min(values):.1f}, max {max(values):.1f})  "
              f"{median / base:5.2f}x plain")


if __name__ == "__main__":
    main()
