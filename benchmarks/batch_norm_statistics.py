"""Batch statistics in one pass (tf_simclr's `BatchNorm`) against Keras's two, in a whole pretraining step.

    python benchmarks/batch_norm_statistics.py                       # TensorFlow, the CPU quickstart's model
    KERAS_BACKEND=jax python benchmarks/batch_norm_statistics.py     # Keras on JAX (XLA), same model
    KERAS_BACKEND=jax python benchmarks/batch_norm_statistics.py --depth 50 --width 0.25 --image_size 64

Keras's `BatchNormalization` takes the batch mean and then the mean squared
distance from it: two reductions over every activation, the second waiting for
the first. `models.layers.BatchNorm` reads each activation once for both sums
(`one_pass_moments`), shifted by the moving mean. Two copies of the trainer's own
model (`trainer.compile_model`: device augmentation, LARS, the run's precision)
differ only in that switch; they fit the same uint8 batches, interleaved, and the
script prints ms a step for each and the ratio. Under JAX it also counts the
reductions in each compiled step, the structural difference the timing reflects.
Last, one layer alone (forward and backward on the first block group's
activation), where batch norm is all there is: the most the change can buy.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def _model(args, one_pass: bool):
    from tf_simclr import keras_internals
    from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig
    from tf_simclr.models.layers import BatchNorm
    from tf_simclr.optim import precision
    from tf_simclr.optim.plan import make_plan
    from tf_simclr.training import trainer

    config = Config(
        model=ModelConfig(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.image_size,
                          cifar_stem_stride=args.cifar_stem_stride, global_bn=False),
        data=DataConfig(dataset="synthetic", augment_on="device", use_blur=False),
        train=TrainConfig(train_batch_size=args.batch, train_steps=10_000, seed=0, precision=args.precision,
                          lineareval_while_pretraining=False))
    precision.set_precision(args.precision)
    keras.utils.set_random_seed(0)
    model = trainer.compile_model(config, None, make_plan(config, 100 * args.batch))
    layers = [layer for layer in keras_internals.sublayers(model) if isinstance(layer, BatchNorm)]
    for layer in layers:
        layer.one_pass_statistics = one_pass
    return model, len(layers)


def _reductions(model, images, labels) -> int | None:
    """Reduce instructions in the compiled JAX train step (None on other backends)."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,  # noqa: SLF001
                                 optimizer_variables=True, metrics_variables=True, purge_model_variables=False)
    lowered = jax.jit(lambda s, b: model.train_step(s, b)).lower(state, (images, labels))
    return len(re.findall(r"\breduce\(", lowered.compile().as_text()))


def _layer_alone(args, one_pass: bool):
    """Forward and backward of one `BatchNorm` on a stage-1-sized activation: a step function and its sync."""
    from tf_simclr.models.layers import BatchNorm

    side = args.image_size // args.cifar_stem_stride
    shape = (2 * args.batch, side, side, max(8, int(64 * args.width)))
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    layer = BatchNorm(one_pass_statistics=one_pass, dtype=args.precision if args.precision == "float32" else
                      f"mixed_{args.precision}")
    layer.build(shape)
    if keras.backend.backend() == "jax":
        import jax

        def objective(x, trainable, non_trainable):
            y, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
            return keras.ops.sum(keras.ops.cast(y, "float32") * upstream)

        grad = jax.jit(jax.grad(objective, argnums=(0, 1)))
        x = jax.device_put(x.astype(args.precision))
        values = ([v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables])
        return (lambda: grad(x, *values)), jax.block_until_ready
    import tensorflow as tf

    x = tf.constant(x, dtype=args.precision)

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            total = tf.reduce_sum(tf.cast(y, "float32") * upstream)
        return tape.gradient(total, [x] + layer.trainable_variables)

    return grad, lambda out: [t.numpy() for t in out]


def _time_layer(args) -> dict:
    """ms a forward + backward of the layer alone, each way, interleaved rounds of `--layer_calls` calls."""
    runs = {one_pass: _layer_alone(args, one_pass) for one_pass in (False, True)}
    for step, sync in runs.values():
        sync(step())
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for one_pass, (step, sync) in runs.items():
            start = time.perf_counter()
            for _ in range(args.layer_calls):
                out = step()
            sync(out)
            times[one_pass].append(1000 * (time.perf_counter() - start) / args.layer_calls)
    return {one_pass: statistics.median(values) for one_pass, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--cifar_stem_stride", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="images a step (two views each)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=8, help="steps a timed fit")
    parser.add_argument("--rounds", type=int, default=5, help="timed fits of each kind, interleaved")
    parser.add_argument("--layer_calls", type=int, default=10, help="calls a timed round of the layer alone")
    args = parser.parse_args(argv)
    layer = _time_layer(args)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = np.zeros(args.batch, np.int32)

    def batches():
        while True:
            yield images, labels

    variants = {"two passes (Keras)": _model(args, False), "one pass (tf_simclr)": _model(args, True)}
    reductions = {name: _reductions(model, images, labels) for name, (model, _) in variants.items()}

    def fit(model) -> float:
        start = time.perf_counter()
        model.fit(batches(), steps_per_epoch=args.steps, epochs=1, verbose=0)
        return 1000 * (time.perf_counter() - start) / args.steps

    for model, _ in variants.values():
        fit(model)  # Compiles.
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (model, _) in variants.items():
            times[name].append(fit(model))
    count = next(iter(variants.values()))[1]
    print(f"ResNet-{args.depth} x{args.width:g}, {args.image_size} px, batch {args.batch} ({2 * args.batch} views), "
          f"{args.precision}, {count} batch-norm layers; keras {keras.__version__} on {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs; median of {args.rounds} fits of {args.steps} steps, interleaved")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, ms in medians.items():
        extra = f", {reductions[name]} reductions in the compiled step" if reductions[name] is not None else ""
        print(f"  {name:22s} {ms:8.1f} ms a step   (fits: {', '.join(f'{v:.1f}' for v in times[name])}){extra}")
    old, new = medians.values()
    fastest_old, fastest_new = (min(values) for values in times.values())
    print(f"  one pass runs at {old / new:.3f}x the steps/s of two passes ({old - new:+.1f} ms a step saved); "
          f"fastest fits {fastest_old:.1f} against {fastest_new:.1f} ms, {fastest_old / fastest_new:.3f}x")
    side = args.image_size // args.cifar_stem_stride
    print(f"  one batch-norm layer alone, forward + backward on [{2 * args.batch}, {side}, {side}, "
          f"{max(8, int(64 * args.width))}]: two passes {layer[False]:.2f} ms, one pass {layer[True]:.2f} ms, "
          f"{layer[False] / layer[True]:.2f}x")


if __name__ == "__main__":
    main()
