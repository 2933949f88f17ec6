"""What a batch callback that reads the model costs a Keras-on-JAX `fit`, against counting the step itself.

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py [--depth 18] [--steps 60] [--rounds 5]

Under JAX, `fit` keeps the variables out of the model between steps; a callback
that touches `self.model` in `on_train_batch_end` makes Keras write every variable
back first (and gather them again for the next step). tf_simclr's checkpoint and
summary callbacks read the global step once per epoch and count from there
(`training.callbacks._CountsSteps`). This times, in one process and interleaved,
the trainer's own model (`trainer.compile_model`, device augmentation, LARS)
fitting the same uint8 batches with each kind of callback, and prints ms a step
and the ratio. A tiny input keeps the step's arithmetic small, so what differs
is the per-step host work that also sits between steps on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402


class ReadsModel(keras.callbacks.Callback):
    """The step from the model at every batch (what the callbacks did before)."""

    def on_train_batch_end(self, batch, logs=None):
        self.step = int(np.asarray(self.model.optimizer.iterations))


def main(argv=None):
    from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig
    from tf_simclr.optim.plan import make_plan
    from tf_simclr.training import callbacks as callbacks_lib
    from tf_simclr.training import trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--image_size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="steps a timed fit")
    parser.add_argument("--rounds", type=int, default=5, help="timed fits of each kind, interleaved")
    args = parser.parse_args(argv)

    class CountsSteps(callbacks_lib._CountsSteps):  # noqa: SLF001  (the trainer callbacks' base)
        def on_train_batch_end(self, batch, logs=None):
            self.step = self.step_after(batch)

    config = Config(model=ModelConfig(resnet_depth=args.depth, image_size=args.image_size),
                    data=DataConfig(dataset="synthetic", augment_on="device"),
                    train=TrainConfig(train_batch_size=args.batch, train_steps=10_000, seed=0,
                                      lineareval_while_pretraining=False))
    model = trainer.compile_model(config, None, make_plan(config, 100 * args.batch))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = np.zeros(args.batch, np.int32)

    def batches():
        while True:
            yield images, labels

    def fit(callback) -> float:
        start = time.perf_counter()
        model.fit(batches(), steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[callback])
        return 1000 * (time.perf_counter() - start) / args.steps

    fit(ReadsModel())  # Compiles.
    times = {"reads the model every batch": [], "counts the step (tf_simclr)": []}
    for _ in range(args.rounds):
        times["reads the model every batch"].append(fit(ReadsModel()))
        times["counts the step (tf_simclr)"].append(fit(CountsSteps()))
    variables = len(model.variables) + len(model.optimizer.variables)
    print(f"ResNet-{args.depth}, {variables} variables with the optimizer's, {args.image_size} px, batch "
          f"{args.batch}, keras {keras.__version__} on {keras.backend.backend()}; median of {args.rounds} fits of "
          f"{args.steps} steps, interleaved")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, ms in medians.items():
        print(f"  {name:32s} {ms:7.2f} ms a step   (fits: {', '.join(f'{v:.2f}' for v in times[name])})")
    old, new = medians.values()
    print(f"  saved: {old - new:.2f} ms a step; counting runs at {old / new:.2f}x the steps/s")


if __name__ == "__main__":
    main()
