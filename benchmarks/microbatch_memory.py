"""Peak memory and images/s of a pretraining step against batch size, plain and chunked (`--microbatch_size`).

    python benchmarks/microbatch_memory.py [--batches 64,128,256,512] [--chunk 64] [--size 32] [--width 0.25]
                                           [--depth 18] [--steps 4]

Each (batch, chunked or plain) variant runs in a fresh subprocess, so its peak
resident memory (`ru_maxrss`: the process's high-water mark, model and TensorFlow
included) is its own. A variant builds the model with `training.trainer.compile_model`
(LARS, NT-Xent at temperature 0.1, a linear head alongside), trains one warm-up
step (tracing, not timed), then `--steps` timed steps on fixed synthetic views.
Printed: peak memory, images/s, and chunked/plain ratios at equal batch.

On a GPU the same script measures device memory instead: pass `--device_memory`
(TensorFlow's `get_memory_info('GPU:0')['peak']`).

Under `KERAS_BACKEND=jax` it also prints the compiled train step's temporary
buffers as XLA plans them (`compiled.memory_analysis().temp_size_in_bytes`): the
activations and workspace of one step, without the process's own memory or the
compiler's, on any device.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _variant(args) -> dict:
    sys.path.insert(0, REPO)
    import numpy as np
    import tensorflow as tf

    from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig
    from tf_simclr.optim.plan import make_plan
    from tf_simclr.training import trainer

    config = Config(
        model=ModelConfig(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.size,
                          proj_out_dim=64, num_proj_layers=2, global_bn=False),
        data=DataConfig(dataset="synthetic"),
        train=TrainConfig(model_dir="/unused", train_batch_size=args.batch, train_steps=100, warmup_epochs=0,
                          learning_rate=0.3, microbatch_size=args.chunk),
    )
    model = trainer.compile_model(config, 10, make_plan(config, args.batch * 100))
    rng = np.random.default_rng(0)
    views = rng.random((args.batch, args.size, args.size, 6), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch).astype("int32")
    data = tf.data.Dataset.from_tensors((views, labels)).repeat()
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)  # Trace and warm up.
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    seconds = time.perf_counter() - start
    result = {"batch": args.batch, "chunk": args.chunk, "images_per_s": args.batch * args.steps / seconds,
              "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device_memory and tf.config.list_physical_devices("GPU"):
        result["peak_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    import keras

    if keras.backend.backend() == "jax":
        result["xla_temp_mb"] = _xla_temp_mb(model, views, labels)
    return result


def _xla_temp_mb(model, views, labels) -> float:
    """The temporary memory XLA plans for one train step (`steps.jax_step.train_step`, jitted as Keras does)."""
    import jax

    from tf_simclr.steps import jax_step

    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables, model.metrics_variables))
    compiled = jax.jit(lambda s: jax_step.train_step(model, s, (views, labels))).lower(state).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device_memory", action="store_true")
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # One variant (subprocess).
    args = parser.parse_args()
    if args.batch:
        print(json.dumps(_variant(args)))
        return
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for chunk in (0, args.chunk):
            if chunk >= batch:
                continue
            cmd = [sys.executable, __file__, f"--batch={batch}", f"--chunk={chunk}", f"--size={args.size}",
                   f"--width={args.width}", f"--depth={args.depth}", f"--steps={args.steps}"]
            cmd += ["--device_memory"] if args.device_memory else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if proc.returncode:
                print(f"batch {batch} chunk {chunk}: failed ({proc.stderr.strip().splitlines()[-1:]})")
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            xla = f"  XLA step temp {r['xla_temp_mb']:7.0f} MB" if "xla_temp_mb" in r else ""
            print(f"batch {batch:5d}  {'chunks of ' + str(chunk) if chunk else 'plain':>13}  "
                  f"peak {r['peak_mb']:8.0f} MB  {r['images_per_s']:7.1f} images/s{xla}", flush=True)
    by = {(r["batch"], r["chunk"]): r for r in rows}
    print(f"\nchunked (chunks of {args.chunk}) / plain at equal batch:")
    for batch in sorted({r["batch"] for r in rows}):
        if (batch, 0) in by and (batch, args.chunk) in by:
            c, p = by[(batch, args.chunk)], by[(batch, 0)]
            xla = f", XLA step temp {c['xla_temp_mb'] / p['xla_temp_mb']:.2f}x" if "xla_temp_mb" in c else ""
            print(f"  batch {batch:5d}: memory {c['peak_mb'] / p['peak_mb']:.2f}x, speed "
                  f"{c['images_per_s'] / p['images_per_s']:.2f}x{xla}")


if __name__ == "__main__":
    main()
