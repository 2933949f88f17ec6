"""Peak memory and images/s of a pretraining step against batch size, plain and chunked (`--microbatch_size`).

    python benchmarks/microbatch_memory.py [--batches 64,128,256,512] [--chunk 64] [--size 32] [--width 0.25]
                                           [--depth 18] [--steps 4] [--precision float32|mixed_bfloat16]
    KERAS_BACKEND=jax python benchmarks/microbatch_memory.py ...     # needs no TensorFlow
    python benchmarks/microbatch_memory.py --smoke                   # a tiny run that checks the script

Each (batch, chunked or plain) variant runs in a fresh subprocess, so its peak
memory is its own, and one that runs out of memory is reported as failed while
the others go on. A variant builds the model as a run does (LARS, NT-Xent at
temperature 0.1, a linear head alongside, weight decay), trains one warm-up step
(tracing, not timed), then `--steps` timed steps on fixed synthetic views.
Printed: peak memory, images/s, and chunked/plain ratios at equal batch.

Memory: on a CPU the process's resident high-water mark (`ru_maxrss`, the
framework included); on a GPU the device's peak (TensorFlow's
`get_memory_info('GPU:0')['peak']`, JAX's `memory_stats()['peak_bytes_in_use']`).
Under Keras on JAX the script also prints the temporary buffers XLA plans for
the compiled step (`memory_analysis().temp_size_in_bytes`: one step's
activations and workspace), and it imports no TensorFlow: it drives
`steps.jax_step.train_step` under `jax.jit` directly, as Keras's JAX trainer does.
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


def _config(args):
    from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig

    return Config(
        model=ModelConfig(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.size,
                          proj_out_dim=64 if args.depth < 50 else 128, num_proj_layers=2 if args.depth < 50 else 3,
                          global_bn=False),
        data=DataConfig(dataset="synthetic"),
        train=TrainConfig(model_dir="/unused", train_batch_size=args.batch, train_steps=100, warmup_epochs=0,
                          learning_rate=0.3, weight_decay=1e-6, microbatch_size=args.chunk),
    )


def _synthetic(args):
    import numpy as np

    rng = np.random.default_rng(0)
    views = rng.random((args.batch, args.size, args.size, 6), dtype=np.float32)
    return views, rng.integers(0, 10, args.batch).astype("int32")


def _resident_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tensorflow_variant(args) -> dict:
    import tensorflow as tf

    from tf_simclr.optim.plan import make_plan
    from tf_simclr.training import trainer

    config = _config(args)
    model = trainer.compile_model(config, 10, make_plan(config, args.batch * 100))
    data = tf.data.Dataset.from_tensors(_synthetic(args)).repeat()
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)  # Trace and warm up.
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    seconds = time.perf_counter() - start
    peak = _resident_mb()
    if tf.config.list_physical_devices("GPU"):
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return {"images_per_s": args.batch * args.steps / seconds, "peak_mb": peak}


def _jax_variant(args) -> dict:
    import jax

    from tf_simclr.losses import NTXent
    from tf_simclr.models import build_model
    from tf_simclr.optim.optimizers import build_optimizer
    from tf_simclr.optim.weight_decay import plan_weight_decay
    from tf_simclr.steps import jax_step

    config = _config(args)
    model = build_model(config.model, num_classes=10, objective=NTXent(temperature=0.1),
                        microbatch_size=args.chunk)
    decay = plan_weight_decay(model, config.train.weight_decay, optimizer_applies_decay=True)
    model.set_weight_decay(decay)
    optimizer = build_optimizer("lars", config.train.learning_rate, momentum=0.9,
                                weight_decay=config.train.weight_decay, excluded_variables=decay.optimizer_excluded)
    model.compile(optimizer=optimizer, jit_compile=True)
    optimizer.build(model.trainable_variables)
    batch = tuple(jax.device_put(x) for x in _synthetic(args))
    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, optimizer.variables, model.metrics_variables))
    step = jax.jit(lambda s: jax_step.train_step(model, s, batch)[1], donate_argnums=0)
    compiled = step.lower(state).compile()
    temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
    state = jax.block_until_ready(compiled(state))  # Warm up.
    start = time.perf_counter()
    for _ in range(args.steps):
        state = compiled(state)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else _resident_mb()
    return {"images_per_s": args.batch * args.steps / seconds, "peak_mb": peak, "xla_temp_mb": temp_mb}


def _variant(args) -> dict:
    sys.path.insert(0, REPO)
    import keras

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    run = _jax_variant if keras.backend.backend() == "jax" else _tensorflow_variant
    return {"batch": args.batch, "chunk": args.chunk, **run(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--smoke", action="store_true", help="batches 16,32 in chunks of 8, width 1/8, 16 px, 1 step")
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # One variant (subprocess).
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.chunk, args.width, args.size, args.steps = "16,32", 8, 0.125, 16, 1
    if args.batch:
        print(json.dumps(_variant(args)))
        return
    import platform

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        from tf_simclr.steps import jax_step

        backend += f" (chunk loop: {jax_step.chunk_loop()}, set by {jax_step.LOOP_VARIABLE})"
    print(f"backend {backend}, ResNet-{args.depth} x{args.width} at {args.size} px, {args.precision}, "
          f"{args.steps} timed steps, {platform.node()}, {time.strftime('%Y-%m-%d')}", flush=True)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for chunk in (0, args.chunk):
            if chunk >= batch:
                continue
            cmd = [sys.executable, __file__, f"--batch={batch}", f"--chunk={chunk}", f"--size={args.size}",
                   f"--width={args.width}", f"--depth={args.depth}", f"--steps={args.steps}",
                   f"--precision={args.precision}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if proc.returncode:
                print(f"batch {batch:5d}  {'chunks of ' + str(chunk) if chunk else 'plain':>13}  failed: "
                      f"{(proc.stderr.strip().splitlines() or ['(no output)'])[-1][:200]}", flush=True)
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
    chunked = [r for r in rows if r["chunk"]]
    if chunked and len(by) > len(chunked):
        largest_plain = max((r for r in rows if not r["chunk"]), key=lambda r: r["batch"])
        for r in chunked:
            if r["batch"] > largest_plain["batch"]:
                print(f"  batch {r['batch']:5d} chunked (plain did not run) against plain {largest_plain['batch']}, "
                      f"the largest that ran: speed {r['images_per_s'] / largest_plain['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
