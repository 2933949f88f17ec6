"""TensorFlow's oneDNN CPU kernels on and off: the quickstart's training step through `fit`, images/s and the ratio.

    python benchmarks/onednn_cpu.py [--steps 10] [--rounds 2] [--batch 256]

TensorFlow 2.21 turns oneDNN on by itself only on CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX; tf_simclr's command line and tests turn it on for
any x86 CPU with AVX2 (`tf_simclr/cpu_kernels.py`). The variable is read once,
when TensorFlow loads, so each setting runs in its own process, the two
alternating `--rounds` times; each process builds the quickstart's model
(ResNet-18 x1/2, CIFAR stem at stride 2, 28 px, 2-layer 64-d head, LARS), warms
up, then times `--steps` steps of `fit` on one synthetic batch.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]  # train_step_benchmark, and tf_simclr from this checkout.


def child(args):
    """One process, one setting: prints {"images_per_s", "onednn"} as JSON on its last line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    import train_step_benchmark
    from tf_simclr import cpu_kernels

    shape = argparse.Namespace(depth=18, width=0.5, size=28, cifar_stem_stride=2, proj_dim=64, proj_layers=2,
                               jit=False, steps_per_execution=1)
    rng = np.random.default_rng(0)
    data = (tf.constant(rng.random((args.batch, 28, 28, 6), dtype=np.float32)),
            tf.constant(rng.integers(0, 10, args.batch).astype("int32")))
    run = train_step_benchmark.fit_runner(shape, data)
    run(2)  # Trace and warm up.
    start = time.perf_counter()
    run(args.steps)
    rate = args.batch * args.steps / (time.perf_counter() - start)
    print(json.dumps({"images_per_s": rate, "onednn": cpu_kernels.onednn_enabled(), "tf": tf.__version__}))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per process.")
    parser.add_argument("--rounds", type=int, default=2, help="Processes per setting, alternating.")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from tf_simclr import cpu_kernels

    flags = cpu_kernels.cpu_flags()
    print(f"Quickstart training step (fit), batch {args.batch}, {args.steps} steps per process, {args.rounds} "
          f"processes per setting; {cpu_name()}, {os.cpu_count()} cores, AVX2 {'avx2' in flags}, "
          f"AVX512_VNNI {'avx512_vnni' in flags}")
    rates = {"0": [], "1": []}
    version = "?"
    for _ in range(args.rounds):
        for setting in rates:
            env = dict(os.environ, **{cpu_kernels.ENV: setting})
            done = subprocess.run([sys.executable, __file__, "--child", f"--steps={args.steps}",
                                   f"--batch={args.batch}"], env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{cpu_kernels.ENV}={setting} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            version = result["tf"]
            if result["onednn"] != (setting == "1"):
                sys.exit(f"{cpu_kernels.ENV}={setting} but TensorFlow reports oneDNN {result['onednn']}.")
            rates[setting].append(result["images_per_s"])
            print(f"  {cpu_kernels.ENV}={setting}: {result['images_per_s']:7.1f} images/s", flush=True)
    off, on = statistics.median(rates["0"]), statistics.median(rates["1"])
    print(f"TensorFlow {version}: oneDNN off {off:.1f} images/s ({args.batch / off:.2f} s/step), "
          f"on {on:.1f} images/s ({args.batch / on:.2f} s/step): on/off {on / off:.2f}x")


if __name__ == "__main__":
    main()
