"""Helpers shared by the tests: tiny configs and a per-step log recorder (imported as `helpers`)."""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import numpy as np

from tf_simclr.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from tf_simclr.models.backbones import Backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, "run.py")


def tiny_model_config(**overrides) -> ModelConfig:
    """ResNet-18 at width 1/8, 16 px (CIFAR stem), a 2-layer head of 16: a model that builds in a second."""
    values = dict(resnet_depth=18, width_multiplier=0.125, image_size=16, proj_out_dim=16, num_proj_layers=2,
                  global_bn=False)
    values.update(overrides)
    return ModelConfig(**values)


def micro_convnet(config) -> keras.Model:
    """Two conv blocks and a pooled vector, images [B, S, S, 3] -> [B, 12], for tests whose subject is not the ResNet.

    Distribution, step loops and checkpoints behave the same on any encoder, and a TensorFlow graph of this one
    traces in a fraction of ResNet-18's time (a 2-step fit on 2 replicas: 3 s instead of 11 s, 2026-12-07).
    Its batch norm follows `--global_bn` (cross-replica under tf.distribute; as the ResNet's, ignored under JAX);
    no conv bias before it, as in the ResNet (its gradient is zero, so it would only move by rounding).
    """
    images = keras.Input((config.image_size, config.image_size, 3))
    synchronized = config.global_bn and keras.backend.backend() == "tensorflow"  # JAX: one global array already.
    x = images
    for block, channels in ((1, 8), (2, 12)):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(synchronized=synchronized, name=f"block{block}_bn")(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D()(x), name="micro_convnet")


def micro_stages(encoder) -> list[list]:
    """Stage 0: the first conv block; stage 1: the second (what --fine_tune_after_block counts)."""
    layers = [layer for model in encoder.layers if isinstance(model, keras.Model) for layer in model.layers]
    return [[l for l in layers if l.name.startswith(f"block{b}")] for b in (1, 2)]


MICRO = Backbone(build=micro_convnet, stages=micro_stages, total_stride=lambda config: 4)
# By import name (`--backbone=module:attribute`): any process with tests/ on its path builds it, run.py children
# included (tests/conftest.py puts tests/ on PYTHONPATH).
MICRO_BACKBONE = "helpers:MICRO"
MICRO_MODEL = {"backbone": MICRO_BACKBONE}  # `tiny_config(..., model=MICRO_MODEL)`


def micro_model_config(**overrides) -> ModelConfig:
    """`tiny_model_config` on `micro_convnet`."""
    return tiny_model_config(backbone=MICRO_BACKBONE, **overrides)


def tiny_config(dataset: str, model_dir: str, *, model=None, data=None, run=None, **train) -> Config:
    """A Config for short training runs on `dataset` (e.g. `folder:<image_folder>`) into `model_dir`."""
    train_values = dict(model_dir=model_dir, train_batch_size=8, train_steps=4, checkpoint_steps=2,
                        learning_rate=0.1, warmup_epochs=0, export_at_end=False, verbose=0)
    train_values.update(train)
    data_values = dict(dataset=dataset, train_split="train", eval_split="validation", use_blur=False)
    data_values.update(data or {})
    return Config(model=tiny_model_config(**(model or {})), data=DataConfig(**data_values),
                  train=TrainConfig(**train_values), run=RunConfig(use_tpu=False, **(run or {})))


def replace(config: Config, **sections) -> Config:
    """`config` with fields of sections changed: `replace(c, train={"train_steps": 8})`."""
    return config.replace(**sections)


class StepLogs(keras.callbacks.Callback):
    """Records `(global step, {name: float})` after every step: what tests compare between runs."""

    def __init__(self):
        super().__init__()
        self.steps: list[tuple[int, dict]] = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(np.asarray(self.model.optimizer.iterations))
        self.steps.append((step, {k: float(np.asarray(v).reshape(-1)[0]) for k, v in (logs or {}).items()}))

    def series(self, name: str) -> list[float]:
        return [logs[name] for _, logs in self.steps if name in logs]


def weights_of(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]


__all__ = ["REPO", "RUN_PY", "tiny_model_config", "MICRO", "MICRO_BACKBONE", "MICRO_MODEL", "micro_convnet",
           "micro_stages", "micro_model_config", "tiny_config", "replace", "StepLogs", "weights_of", "dataclasses"]


from tf_simclr.data.sources import BaseSource, shard  # noqa: E402  (appended helpers below)


class PositionSource(BaseSource):
    """The least a source can be: a `BaseSource` with only `num_examples` and `as_dataset` (its generic methods).

    Example i is a `size` x `size` x 3 image filled with `i % 256`, label `i % num_classes`
    (-1 everywhere when `num_classes` is 0); examples are addressable by position only.
    """

    def __init__(self, n=12, num_classes=2, size=2, split="train", name="arrays"):
        self.name, self.num_classes, self.image_shape, self.splits = name, num_classes, (size, size, 3), (split,)
        values = (np.arange(n) % 256).astype(np.uint8)
        self.images = values[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
        self.labels = (np.arange(n) % num_classes if num_classes else np.full(n, -1)).astype(np.int64)

    def num_examples(self, split):
        self.check_split(split)
        return len(self.labels)

    def as_dataset(self, split, *, shuffle_files, input_context=None, seed=None):
        import tensorflow as tf

        self.check_split(split)
        return shard(tf.data.Dataset.from_tensor_slices((self.images, self.labels)), input_context)


__all__ += ["PositionSource"]


def run_cli(*args: str) -> int:
    """`tf_simclr <args>` in this process; returns its exit code.

    The CLI configures logging (`logs.configure`: the 'tf_simclr' logger stops
    propagating), which would hide later tests' records from caplog, so the
    logger's level, handlers and propagation are restored afterwards.
    """
    import logging

    from tf_simclr.cli import main

    ours = logging.getLogger("tf_simclr")
    saved = (ours.level, list(ours.handlers), ours.propagate)
    try:
        return main(["tf_simclr", *args])
    finally:
        ours.setLevel(saved[0])
        ours.handlers[:] = saved[1]
        ours.propagate = saved[2]


__all__ += ["run_cli"]


def compile_simclr(model, optimizer: str = "lars", learning_rate=0.1, weight_decay: float = 1e-4, *,
                   momentum: float = 0.9, precision: str = "float32", jit_compile: bool = False):
    """Compiles a `SimCLRModel` as the trainer does (weight-decay plan, optimizer, precision); returns the optimizer."""
    from tf_simclr.optim import optimizers
    from tf_simclr.optim import precision as precision_lib
    from tf_simclr.optim.weight_decay import plan_weight_decay

    plan = plan_weight_decay(model, weight_decay, optimizers.uses_optimizer_weight_decay(optimizer))
    model.set_weight_decay(plan)
    opt = optimizers.build_optimizer(optimizer, learning_rate, momentum=momentum, weight_decay=weight_decay,
                                     excluded_variables=plan.optimizer_excluded)
    opt = precision_lib.wrap_optimizer(opt, precision)
    model.compile(optimizer=opt, jit_compile=jit_compile)
    opt.build(model.trainable_variables)
    return opt


__all__ += ["compile_simclr"]


def numpy_nt_xent(hidden, temperature, hidden_norm=True):
    """NT-Xent in float64 NumPy, the paper's per-anchor form (eq. 1), independent of the library's layout.

    `hidden` is `[2N, D]`: N first views, then the N second views. Anchor i has positive
    (i + N) mod 2N; every other vector is a negative. The reference reports the sum of both
    views' means, i.e. twice the 2N-anchor mean.
    """
    z = np.asarray(hidden, np.float64)
    if hidden_norm:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = z.shape[0]
    n = n2 // 2
    sim = z @ z.T / temperature
    losses = []
    for i in range(n2):
        pos = (i + n) % n2
        others = [k for k in range(n2) if k != i]
        log_denominator = np.log(np.sum(np.exp(sim[i, others])))
        losses.append(log_denominator - sim[i, pos])
    return 2.0 * np.mean(losses)


def numpy_log_softmax(logits):
    """Log-softmax over the last axis in float64 NumPy, shifted by the max so that it cannot overflow."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_softmax_cross_entropy(labels, logits):
    """Mean softmax cross-entropy and accuracy over examples with a label >= 0, in float64 NumPy."""
    labels = np.asarray(labels)
    logits = np.asarray(logits, np.float64)
    log_p = numpy_log_softmax(logits)
    valid = labels >= 0
    ce = -log_p[valid, labels[valid]]
    correct = np.argmax(logits[valid], axis=1) == labels[valid]
    return float(ce.mean()), float(correct.mean())


__all__ += ["numpy_nt_xent", "numpy_log_softmax", "numpy_softmax_cross_entropy"]


def write_image_folder(root, classes=("a", "b"), per_class=24, size=20, seed=0) -> str:
    """Random RGB PNGs in one sub-folder per class; returns `root`."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for label in classes:
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            with open(os.path.join(root, label, f"{i:03d}.png"), "wb") as f:
                f.write(tf.io.encode_png(pixels).numpy())
    return str(root)


def write_idx(path, array: np.ndarray, gz: bool = True) -> str:
    """An idx file written by hand from the format's definition (zero, zero, 0x08, ndim, big-endian dims, bytes)."""
    import gzip
    import struct

    array = np.asarray(array, np.uint8)
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return str(path)


def write_idx_folder(folder, n_train=40, n_test=20, size=12, seed=0, splits=None) -> str:
    """A folder of the four Fashion-MNIST idx files (the test split's not gzipped).

    `splits` (`{split: (images [N, H, W], labels [N])}`) gives the contents; by
    default random images with labels `arange(n) % 10`.
    """
    from tf_simclr.data import idx

    rng = np.random.default_rng(seed)
    if splits is None:
        splits = {split: (rng.integers(0, 256, (n, size, size)), np.arange(n) % 10)
                  for split, n in (("train", n_train), ("test", n_test))}
    os.makedirs(folder, exist_ok=True)
    for split, (images, labels) in splits.items():
        images_name, labels_name = idx.SPLIT_FILES[split]
        gz = split == "train"
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(folder, images_name + suffix), images, gz)
        write_idx(os.path.join(folder, labels_name + suffix), labels, gz)
    return str(folder)


def free_ports(n: int) -> list[int]:
    """`n` TCP ports on 127.0.0.1 that were free a moment ago (for TF_CONFIG clusters of worker processes)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


__all__ += ["free_ports"]


def fault_rng(name: str = "FAULT_SEED"):
    """`(random.Random, seed)` for a fault test's random kill points: `$FAULT_SEED` if set, else a fresh seed.

    The seed is printed (pytest shows it with a failure), so `FAULT_SEED=<seed> pytest ...` replays the same delays.
    """
    import random

    given = os.environ.get(name)
    seed = int(given) if given else random.SystemRandom().randrange(10**6)
    print(f"{name}={seed} ({'given' if given else 'drawn'}; rerun with {name}={seed} to replay these kill delays)")
    return random.Random(seed), seed


__all__ += ["fault_rng"]


def beats_chance(accuracy: float, n: int, classes: int, tail: float = 1e-6) -> bool:
    """Whether `accuracy` on n examples is more than uniform guessing reaches with probability `tail` (binomial).

    A fixed threshold such as 0.25 fails on a tiny model by a hair; this asks the question the test means.
    """
    p = 1.0 / classes
    correct = round(accuracy * n)
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(correct, n + 1)) < tail
