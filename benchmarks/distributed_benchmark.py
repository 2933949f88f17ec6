"""Data-parallel cost of SimCLR pretraining: 1 vs 2 replicas, the NT-Xent gather, the N x N logits.

    python benchmarks/distributed_benchmark.py --quick                # smoke run, under 2 min on 2 cores
    python benchmarks/distributed_benchmark.py                        # global batches 256 .. 4096
    python benchmarks/distributed_benchmark.py --batch_sizes 256 1024 --repeats 5

Prints, in one run:

1. steps/s and images/s of `SimCLRModel.train_step` (LARS, synthetic data already
   in memory, `train_function` called directly as `fit` does, minus callbacks) for
   one replica and for `MirroredStrategy` over two logical CPU devices, at each
   global batch size. Median of the timed repeats, after a warm-up step.
2. the time of the cross-replica gather of the NT-Xent negatives
   (`replica.current().all_gather`, twice per step, on the `[B/2, 128]` projections
   of each replica) alone, forward and forward+backward, and its share of the
   two-replica step time.
3. the memory of the logits each replica materializes: the closed form from
   `objective.contrastive_loss` (four `[n, N]` similarity blocks and the two
   `[n, 2N]` concatenations, float32; n images per replica, N global) next to the
   peak growth of TensorFlow's CPU allocator and of the peak RSS while a separate
   process computes only `contrastive_loss` on random projections.

The two replicas are logical devices on one CPU: they share its cores, and the
"collective" is a memory copy. Scaling here says nothing about GPUs; the printout
says so too. The figures worth carrying over are the gather share and the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs for MirroredStrategy; must run before TensorFlow initializes devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tf_simclr  # noqa: E402
from tf_simclr import objective, replica  # noqa: E402

FULL_BATCHES = [256, 512, 1024, 2048, 4096]
QUICK_BATCHES = [256, 512]
PROJECTION_DIM = 128
NUM_CLASSES = 10
FLOAT32_BYTES = 4


# ---------------------------------------------------------------------------- 1. train step
def build_compiled_model(args) -> tf_simclr.SimCLRModel:
    """The pretraining model compiled as `train.create_model` does (LARS, linear eval head)."""
    config = tf_simclr.ModelConfig(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.image_size)
    model = tf_simclr.build_model(config, num_classes=NUM_CLASSES, temperature=0.1)
    excluded = model.configure_weight_decay(1e-6, optimizer_applies_decay=True)
    optimizer = tf_simclr.build_optimizer("lars", 0.1, momentum=0.9, weight_decay=1e-6, excluded_variables=excluded)
    model.compile(optimizer=optimizer, steps_per_execution=args.steps_per_execution)
    optimizer.build(model.trainable_variables)
    model.make_train_function()
    return model


def synthetic_batch(batch: int, image_size: int, seed: int = 0):
    """`batch` two-view images `[batch, S, S, 6]` and labels, as the pretraining pipeline yields them."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch, image_size, image_size, 6), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch).astype("int32")
    return images, labels


def batch_iterator(strategy, global_batch: int, image_size: int):
    """An endless iterator of in-memory batches, one per replica (no input pipeline cost).

    Batched from slices without `drop_remainder`, so the batch dimension is unknown
    to the graph and one trace of the train function serves every batch size (the
    traces, not the steps, are most of a quick run's time).
    """
    per_replica = global_batch // strategy.num_replicas_in_sync

    def dataset_fn(input_context=None):
        slices = tf.data.Dataset.from_tensor_slices(synthetic_batch(per_replica, image_size))
        return slices.repeat().batch(per_replica)

    if strategy.num_replicas_in_sync == 1:
        return iter(dataset_fn())
    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def run_train_function(model, iterator, executions: int) -> float:
    """Seconds for `executions` calls of the compiled train function (blocks on the result)."""
    start = time.perf_counter()
    for _ in range(executions):
        outputs = model.train_function(iterator)
    if isinstance(outputs, tf.experimental.Optional):  # Keras's while-loop form with steps_per_execution > 1.
        outputs = outputs.get_value()
    tf.nest.flatten(outputs)[0].numpy()
    return time.perf_counter() - start


def time_train_steps(strategies: list, models: dict, global_batch: int, args) -> tuple[float, ...]:
    """Median seconds per train step for each strategy, their timed repeats interleaved.

    Taking turns gives every strategy the same share of whatever else runs on the
    machine, so the ratio stays meaningful under varying load.
    """
    iterators = [batch_iterator(strategy, global_batch, args.image_size) for strategy in strategies]
    for strategy, iterator in zip(strategies, iterators):
        run_train_function(models[strategy], iterator, 2)  # The first calls at a new size trace or set up kernels.
    executions = max(1, args.steps // args.steps_per_execution)
    steps = executions * args.steps_per_execution
    times = [[] for _ in strategies]
    for _ in range(args.repeats):
        for strategy, iterator, record in zip(strategies, iterators, times):
            record.append(run_train_function(models[strategy], iterator, executions) / steps)
    return tuple(statistics.median(record) for record in times)


# ---------------------------------------------------------------------------- 2. gather
def time_gather(strategy, global_batch: int, args) -> tuple[float, float]:
    """Median seconds of the loss's two all-gathers alone: forward, and forward + backward.

    Each replica holds `[2n, 128]` projections (both views of its n = B / replicas
    images) and gathers each view's `[n, 128]` half, as `contrastive_loss` does.
    """
    per_replica = global_batch // strategy.num_replicas_in_sync
    hidden = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.random.normal([2 * per_replica, PROJECTION_DIM], seed=ctx.replica_id_in_sync_group)
    )
    upstream = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.random.normal([global_batch, PROJECTION_DIM])
    )

    def gather(h):
        context = replica.current()
        h1, h2 = tf.split(h, 2, axis=0)
        return context.all_gather(h1), context.all_gather(h2)

    def gather_and_gradient(h, g):
        with tf.GradientTape() as tape:
            tape.watch(h)
            large1, large2 = gather(h)
        return tape.gradient([large1, large2], h, output_gradients=[g, g])

    forward = tf.function(lambda h: strategy.run(gather, args=(h,)))
    backward = tf.function(lambda h, g: strategy.run(gather_and_gradient, args=(h, g)))
    return (
        _median_call_seconds(lambda: forward(hidden), args.repeats),
        _median_call_seconds(lambda: backward(hidden, upstream), args.repeats),
    )


def _median_call_seconds(call, repeats: int, calls_per_repeat: int = 20) -> float:
    def block(outputs):
        for value in tf.nest.flatten(outputs, expand_composites=True):
            value.numpy()

    block(call())  # Trace and warm up.
    times = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        for _ in range(calls_per_repeat):
            outputs = call()
        block(outputs)
        times.append((time.perf_counter() - start) / calls_per_repeat)
    return statistics.median(times)


# ---------------------------------------------------------------------------- 3. logits memory
def logits_bytes_per_replica(global_batch: int, replicas: int) -> int:
    """Closed form of the float32 logits one replica holds in `contrastive_loss`.

    With n = N / replicas local images and N global ones: `logits_aa`, `logits_bb`,
    `logits_ab`, `logits_ba` are `[n, N]` each and the two concatenations fed to the
    softmax are `[n, 2N]` each, i.e. 8 n N floats = 32 n N bytes.
    """
    n = global_batch // replicas
    return 8 * n * global_batch * FLOAT32_BYTES


def _rss_bytes(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # Reported in kB.
    raise RuntimeError(f"/proc/self/status has no {field}: peak RSS needs Linux.")


def _reset_peak_rss() -> bool:
    """Resets `VmHWM` to the current RSS (Linux >= 4.0). Unlike `ru_maxrss`, which a child
    inherits from its parent across fork and exec, this peak is this process's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_loss_memory(global_batches: list[int], replicas: int) -> dict:
    """Peak memory growth (bytes) of one forward `contrastive_loss` per global batch, in this process.

    Two measurements per size: the TensorFlow CPU allocator's peak (`get_memory_info`;
    one allocator serves all logical CPUs, so it covers all replicas) and the
    process's peak RSS (`VmHWM`, reset before the call) above its RSS just before.
    Traced and warmed up on a tiny batch first so that start-up memory is in the
    baseline; the random projections are made inside the graph and are small (`[2n, 128]`).
    """
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]) if replicas > 1 else None

    def loss_on_random(n):
        hidden = tf.random.normal(tf.stack([2 * n, PROJECTION_DIM]))
        loss, _, _ = objective.contrastive_loss(hidden, temperature=0.1)
        return loss

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def step(n):
        if strategy is None:
            return loss_on_random(n)
        return strategy.reduce("SUM", strategy.run(loss_on_random, args=(n,)), axis=None)

    step(tf.constant(2)).numpy()
    results = {}
    for global_batch in global_batches:
        tf.config.experimental.reset_memory_stats("CPU:0")
        allocated_before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        rss_before, can_reset = _rss_bytes("VmRSS"), _reset_peak_rss()
        step(tf.constant(global_batch // replicas)).numpy()
        results[global_batch] = {
            "allocator": tf.config.experimental.get_memory_info("CPU:0")["peak"] - allocated_before,
            "rss": _rss_bytes("VmHWM") - rss_before if can_reset else None,
        }
    return results


def measured_loss_memory(global_batches: list[int], replicas: int) -> dict:
    """`measure_loss_memory` in a fresh subprocess, away from the train steps' tensors and allocator caches.

    glibc's fixed mmap threshold makes every large tensor its own mapping, returned
    to the system when freed, so the RSS before each call is not inflated by reuse.
    """
    command = [sys.executable, os.path.abspath(__file__), "--_loss_memory", str(replicas), *map(str, global_batches)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"Measuring loss memory with {replicas} replica(s) failed:\n{done.stderr[-2000:]}")
    return {int(batch): value for batch, value in json.loads(done.stdout.strip().splitlines()[-1]).items()}


# ---------------------------------------------------------------------------- report
def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:8.1f}"


def report_train_steps(args, step_seconds: dict) -> None:
    print("\n1. Train step (median of timed repeats)")
    print(f"  {'global batch':>12} | {'1 replica steps/s':>17} {'images/s':>9} | {'2 replicas steps/s':>18} "
          f"{'images/s':>9} | {'speed-up':>8}")
    for batch in args.batch_sizes:
        one, two = step_seconds[batch]
        print(f"  {batch:12d} | {1 / one:17.3f} {batch / one:9.1f} | {1 / two:18.3f} {batch / two:9.1f} | "
              f"{one / two:7.2f}x")


def report_gather(args, step_seconds: dict, gather_seconds: dict) -> None:
    print("\n2. Cross-replica gather of the NT-Xent negatives (2 replicas, two all_gathers of [B/2, 128] each)")
    print(f"  {'global batch':>12} | {'step ms':>9} | {'gather fwd ms':>13} {'% of step':>9} | "
          f"{'fwd+bwd ms':>10} {'% of step':>9}")
    for batch in args.batch_sizes:
        step = step_seconds[batch][1]
        forward, backward = gather_seconds[batch]
        print(f"  {batch:12d} | {step * 1e3:9.2f} | {forward * 1e3:13.3f} {100 * forward / step:8.2f}% | "
              f"{backward * 1e3:10.3f} {100 * backward / step:8.2f}%")


def report_memory(args, memory: dict) -> None:
    print("\n3. Logits memory of contrastive_loss (float32; n = images per replica, N = global batch)")
    print("   closed form per replica = 4 blocks [n, N] + 2 concatenations [n, 2N] = 32 n N bytes;")
    print("   measured = peak growth while one process runs only contrastive_loss (forward) on all its replicas:")
    print("   TF CPU allocator peak (get_memory_info) and peak RSS (VmHWM, reset per size) above the RSS before the call")
    print(f"  {'global batch':>12} {'replicas':>8} | {'per replica MiB':>15} {'x replicas MiB':>14} | "
          f"{'allocator MiB':>13} {'/closed':>7} | {'RSS MiB':>8} {'/closed':>7}")
    for batch in args.batch_sizes:
        for replicas in (1, 2):
            total = logits_bytes_per_replica(batch, replicas) * replicas
            allocator, rss = memory[batch, replicas]["allocator"], memory[batch, replicas]["rss"]
            rss_text = f"{mib(rss):>8} {rss / total:6.2f}x" if rss is not None else f"{'n/a':>8} {'':>7}"
            print(f"  {batch:12d} {replicas:8d} | {mib(total / replicas):>15} {mib(total):>14} | "
                  f"{mib(allocator):>13} {allocator / total:6.2f}x | {rss_text}")
    if any(m["rss"] is None for m in memory.values()):
        print("   (n/a: /proc/self/clear_refs is not writable here, so the peak RSS cannot be reset per size)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                        help=f"Global batch sizes (even). Defaults to {FULL_BATCHES} ({QUICK_BATCHES} with --quick).")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 2 batch sizes, 2 timed steps.")
    parser.add_argument("--repeats", type=int, default=None, help="Timed repeats per figure (median). Default 3.")
    parser.add_argument("--steps", type=int, default=None, help="Train steps per timed repeat. Default 2.")
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--skip_memory", action="store_true", help="Skip part 3 (one subprocess per replica count).")
    parser.add_argument("--_loss_memory", type=int, nargs="+", metavar="REPLICAS GLOBAL_BATCH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or (QUICK_BATCHES if args.quick else FULL_BATCHES)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.steps = args.steps or (1 if args.quick else 2)
    if args.steps_per_execution > 1:
        parser.error(
            f"--steps_per_execution={args.steps_per_execution}: the SimCLR train step fails under MirroredStrategy "
            "with steps_per_execution > 1 in this TF 2.21 / Keras 3.15 build ('You must feed a value for placeholder "
            "tensor while/cond/Placeholder' from Keras's while loop), so only 1 is measured; use 1."
        )
    odd = [b for b in args.batch_sizes if b < 2 or b % 2]
    if odd:
        parser.error(f"--batch_sizes must be even and >= 2 so that two replicas split them evenly. Received: {odd}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args._loss_memory:
        replicas, *global_batches = args._loss_memory
        print(json.dumps(measure_loss_memory(global_batches, replicas)))
        return
    print(f"SimCLR data-parallel benchmark: ResNet-{args.depth} x{args.width}, {args.image_size} px, two views, "
          f"LARS, synthetic in-memory data, steps_per_execution={args.steps_per_execution}, "
          f"{args.repeats} repeats x {args.steps} step(s); TF {tf.__version__}, {os.cpu_count()} CPU cores")
    print("NOTE: the 2 replicas are 2 logical devices sharing the same CPU cores (MirroredStrategy on one host);\n"
          "      their scaling is NOT representative of GPUs. Compare shares and memory, not the speed-up.")
    single = tf.distribute.get_strategy()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # One per process: collective keys collide.
    models = {}
    for strategy in (single, mirrored):
        with strategy.scope():
            models[strategy] = build_compiled_model(args)  # One per strategy, reused for every batch size.
    step_seconds, gather_seconds = {}, {}
    for batch in args.batch_sizes:
        start = time.perf_counter()
        step_seconds[batch] = time_train_steps([single, mirrored], models, batch, args)
        gather_seconds[batch] = time_gather(mirrored, batch, args)
        print(f"  ... batch {batch}: {step_seconds[batch][0] * 1e3:.1f} / {step_seconds[batch][1] * 1e3:.1f} ms "
              f"per step (1 / 2 replicas); {time.perf_counter() - start:.0f} s with set-up", flush=True)
    memory = {}
    if not args.skip_memory:
        memory = {(b, r): m for r in (1, 2) for b, m in measured_loss_memory(args.batch_sizes, r).items()}
    report_train_steps(args, step_seconds)
    report_gather(args, step_seconds, gather_seconds)
    if memory:
        report_memory(args, memory)


if __name__ == "__main__":
    main()
