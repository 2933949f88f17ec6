"""Does batch norm need a hand-written gradient under XLA? What autodiff keeps against what XLA compiles.

    KERAS_BACKEND=jax python benchmarks/batch_norm_gradient.py          # quickstart ResNet-18 x0.5, 28 px, bf16
    KERAS_BACKEND=jax python benchmarks/batch_norm_gradient.py --depth 50 --width 0.25 --image_size 64 \\
        --cifar_stem_stride 1 --views 32
    KERAS_BACKEND=jax python benchmarks/batch_norm_gradient.py --depth 50 --width 1 --image_size 224 \\
        --stem imagenet --views 512                                    # gpu_benchmark.py's step, on a GPU

Differentiated automatically, Keras's batch norm (and tf_simclr's `BatchNorm`)
hands the backward pass two activation-sized float32 buffers derived from the
upcast input: twice a bfloat16 activation's bytes each. A gradient written out
by hand (`jax.custom_vjp`) can keep the bfloat16 input alone and recompute the
rest. The question is whether XLA already does that. The script builds the
encoder (tf_simclr's ResNet, mixed bfloat16) three ways, differing only in the
batch norm's backward pass:

  autodiff          tf_simclr's `BatchNorm`, as trained;
  written, x_hat    the closed form, d x = gamma / sigma (g - mean(g) - x_hat
                    mean(g x_hat)), with the normalized x_hat shared by the sums
                    and d x (the textbook way);
  written, fused    the same, rearranged so only per-channel coefficients are
                    shared: d x = a g + b x + c;

and prints, for each: the activation-sized buffers JAX keeps for the backward
pass (before XLA), and XLA's own accounts of the compiled forward + backward
pass, its temporary memory and the bytes its operations touch. Gradients are
checked against autodiff's. No timing: the accounts are the question, and
they are the same on any machine for a given XLA backend.
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402


def _written_batch_norm_class(fused: bool):
    """tf_simclr's `BatchNorm` with its training-mode backward pass written out (`jax.custom_vjp`)."""
    from tf_simclr.models.layers import BatchNorm

    def normalize(x, gamma, beta, axes, epsilon, moments):
        def per_channel(v):
            return ops.reshape(v, [1] * (len(x.shape) - 1) + [-1])

        def forward(x, gamma, beta):
            x32 = ops.cast(x, "float32")
            mean, variance = moments(x32, axes)
            outputs = ops.batch_normalization(x32, mean, variance, axis=-1, offset=beta, scale=gamma, epsilon=epsilon)
            return (outputs, mean, variance), (x, mean, ops.rsqrt(variance + epsilon), gamma)

        def backward(kept, upstream):
            x, mean, inverse_sigma, gamma = kept
            g, x32 = ops.cast(upstream[0], "float32"), ops.cast(x, "float32")
            count = float(np.prod([x.shape[a] for a in axes]))
            scale = gamma * inverse_sigma
            d_beta = ops.sum(g, axis=axes)
            if fused:
                d_gamma = (ops.sum(g * x32, axis=axes) - mean * d_beta) * inverse_sigma
                slope = scale * inverse_sigma * d_gamma / count
                d_x = per_channel(scale) * g - per_channel(slope) * x32 + per_channel(slope * mean - scale * d_beta / count)
            else:
                x_hat = (x32 - per_channel(mean)) * per_channel(inverse_sigma)
                d_gamma = ops.sum(g * x_hat, axis=axes)
                d_x = per_channel(scale) * (g - per_channel(d_beta / count) - x_hat * per_channel(d_gamma / count))
            return ops.cast(d_x, x.dtype), d_gamma, d_beta

        function = jax.custom_vjp(lambda *args: forward(*args)[0])
        function.defvjp(forward, backward)
        return function(x, gamma, beta)

    class WrittenGradientBatchNorm(BatchNorm):
        def call(self, inputs, training=None, mask=None):
            if not (training and self.trainable) or self.axis not in (-1, len(inputs.shape) - 1):
                return super().call(inputs, training=training, mask=mask)
            outputs, mean, variance = normalize(
                inputs, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"), self._reduction_axes,
                self.epsilon, lambda x, axes: self._moments(x, None))
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return ops.cast(outputs, self.compute_dtype)

    return WrittenGradientBatchNorm


def _encoder(args, batch_norm_class):
    from tf_simclr.models import layers as layers_lib
    from tf_simclr.models.backbones import resnet

    original = layers_lib.BatchNorm
    layers_lib.BatchNorm = batch_norm_class  # `layers.batch_norm` builds every batch norm of the ResNet.
    try:
        keras.utils.set_random_seed(0)
        model = resnet.resnet(args.depth, args.width, cifar_stem=args.stem == "cifar",
                              cifar_stem_stride=args.cifar_stem_stride if args.stem == "cifar" else 1)
        model(np.zeros((2, args.image_size, args.image_size, 3), "float32"))
    finally:
        layers_lib.BatchNorm = original
    return model


def _accounts(model, images, upstream) -> dict:
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def features(trainable):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=True)
        return outputs if not isinstance(outputs, dict) else outputs["final_avg_pool"]

    def objective(trainable):
        return ops.sum(ops.cast(features(trainable), "float32") * upstream)

    _, vjp = jax.vjp(features, trainable)
    activation = lambda leaf: getattr(leaf, "ndim", 0) == 4 and leaf.shape[0] == images.shape[0]  # noqa: E731
    kept = [leaf for leaf in jax.tree_util.tree_leaves(vjp) if activation(leaf)]
    compiled = jax.jit(jax.grad(objective)).lower(trainable).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "kept_mb": sum(leaf.size * leaf.dtype.itemsize for leaf in kept) / 1e6,
        "kept": collections.Counter(leaf.dtype.name for leaf in kept),
        "temp_mb": compiled.memory_analysis().temp_size_in_bytes / 1e6,
        "accessed_mb": cost.get("bytes accessed", float("nan")) / 1e6,
        "gradients": [np.asarray(g, np.float32) for g in compiled(trainable)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
    parser.add_argument("--cifar_stem_stride", type=int, default=2)
    parser.add_argument("--views", type=int, default=64, help="images through the encoder")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        raise SystemExit("error: this measures XLA through JAX; run it with KERAS_BACKEND=jax")
    from tf_simclr.models.layers import BatchNorm

    keras.config.set_dtype_policy("mixed_bfloat16")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.views, args.image_size, args.image_size, 3)).astype("float32")
    classes = {"autodiff": BatchNorm, "written, x_hat": _written_batch_norm_class(fused=False),
               "written, fused": _written_batch_norm_class(fused=True)}
    results = {}
    for name, cls in classes.items():
        model = _encoder(args, cls)
        if not results:  # One cotangent for all three: a random direction on the features.
            upstream = rng.normal(size=model(images[:1])["final_avg_pool"].shape[1:]).astype("float32")
        results[name] = _accounts(model, images, upstream)
    stem = f"CIFAR stem at stride {args.cifar_stem_stride}" if args.stem == "cifar" else "ImageNet stem"
    print(f"ResNet-{args.depth} x{args.width:g} encoder, {args.image_size} px, {stem}, "
          f"{args.views} views, mixed bfloat16, forward + backward; keras {keras.__version__}, jax {jax.__version__} "
          f"on {jax.devices()[0].platform}")
    base, wrong = results["autodiff"], []
    for name, r in results.items():
        error = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
                    for a, b in zip(r["gradients"], base["gradients"]))
        kept = ", ".join(f"{n} {dtype}" for dtype, n in sorted(r["kept"].items()))
        print(f"  {name:15s} kept for the backward pass (before XLA): {r['kept_mb']:6.1f} MB ({kept}); compiled: "
              f"{r['temp_mb']:6.1f} MB temporary ({r['temp_mb'] / base['temp_mb']:.3f}x), {r['accessed_mb']:7.1f} MB "
              f"accessed ({r['accessed_mb'] / base['accessed_mb']:.3f}x); gradients within {error:.1e} of autodiff")
        if not error < 1e-2:  # bfloat16 rounding is about 4e-3: anything larger is a wrong formula.
            wrong.append(name)
    if wrong:
        raise SystemExit(f"error: the written gradient of {', '.join(wrong)} disagrees with autodiff")


if __name__ == "__main__":
    main()
