"""SimCLR training throughput on one GPU: tf_simclr on Keras 3 / JAX against a torch.compile peer.

    python benchmarks/gpu_benchmark.py [--out results.json]      # ResNet-50, 224 px, 256 images a step
    python benchmarks/gpu_benchmark.py --smoke                   # tiny shapes on the CPU: the script runs

Each part runs in a fresh process, one after another (each framework takes the
GPU's memory for itself), and the parent prints one table and the ratios, all
measured in this one run on this one machine:

  jax_synthetic   tf_simclr's `SimCLRModel.train_step` on Keras/JAX: ResNet-50,
                  3-layer projection head, NT-Xent over the 2B views, LARS with
                  warmup + cosine, mixed bfloat16, jitted with its state donated
                  (the function `fit` runs). Input: two views per image as float32
                  images already on the device. Timed calling the train function
                  directly, then through `model.fit` (which also reuses it).
  jax_end_to_end  The same model with `--augment_on=device`: `model.fit` on uint8
                  [B, 256, 256, 3] batches in host memory (a rotating pool of
                  distinct batches, as the host pipeline hands them over); Keras
                  copies each to the device one step ahead and the compiled step
                  draws both views (crop, flip, colour jitter, grayscale, blur).
                  Also times the augmentation alone (views/s).
  torch_compile   The peer: torchvision ResNet-50 + the same projection head +
                  NT-Xent, bf16 autocast, channels_last, cuDNN autotuning, fused
                  SGD with momentum (cheaper than our LARS), forward + loss under
                  `torch.compile` (default mode), on the same synthetic views.
  torch_eager     The same, not compiled.
  jax_two_pass_bn jax_synthetic's step (train function only) with Keras's own
                  batch statistics, the mean and then the variance around it,
                  instead of tf_simclr's one-pass `BatchNorm`: what that saves.

A rate is images/s (two views each) over `--steps` steps after warm-up; the
median of `--windows` windows is reported. Host-side JPEG decoding is not part of
any figure (the GPU machine this was written for has no TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("jax_synthetic", "jax_end_to_end", "torch_compile", "torch_eager", "jax_two_pass_bn")


# ----------------------------------------------------------------------------- shared


def _windows(step, sync, images_per_step: int, steps: int, windows: int) -> dict:
    """Runs `step()` `steps` times per window; images/s of each window (device synchronised at its ends)."""
    rates = []
    for _ in range(windows):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(images_per_step * steps / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "windows": [round(r, 1) for r in rates]}


def _first_step_then_windows(step, sync, args) -> tuple[float, dict]:
    """Seconds of the first step (compilation included), then `_windows` after `args.warmup` more steps."""
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    return first, _windows(step, sync, args.batch, args.steps, args.windows)


def _emit(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------------------- JAX (tf_simclr)


def _jax_setup(args):
    import jax

    backend = jax.default_backend()
    if args.require_gpu and backend != "gpu":
        raise SystemExit(f"JAX runs on {backend!r}, not a GPU: refusing to time it (--no-require_gpu to allow).")
    return jax, f"{jax.devices()[0].device_kind} ({backend}, jax {jax.__version__})"


def _run_config(args, device_augment: bool):
    """The `Config` of the run being timed: what `run.py` would build from the same flags."""
    from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig

    return Config(
        model=ModelConfig(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.image_size),
        data=DataConfig(dataset="synthetic", augment_on="device" if device_augment else "host"),
        train=TrainConfig(train_batch_size=args.batch, train_steps=10_000, learning_rate=0.3, weight_decay=1e-6,
                          optimizer=args.optimizer, precision=args.precision, lineareval_while_pretraining=False,
                          seed=0),
    )


def _build_jax_model(args, device_augment: bool, one_pass_bn: bool = True):
    """The trainer's own model and optimizer (`trainer.compile_model`): LARS, warm-up + cosine, weight decay."""
    import keras

    from tf_simclr import keras_internals
    from tf_simclr.models.layers import BatchNorm
    from tf_simclr.optim import precision
    from tf_simclr.optim.plan import make_plan
    from tf_simclr.training import trainer

    config = _run_config(args, device_augment)
    precision.set_precision(args.precision)
    model = trainer.compile_model(config, None, make_plan(config, 100 * args.batch))
    for layer in keras_internals.sublayers(model):
        if isinstance(layer, BatchNorm):
            layer.one_pass_statistics = one_pass_bn  # Read when the step is traced, at its first call.
    return keras, model


class _Batches:
    """A `keras.utils.PyDataset` over a few prepared batches, cycled for `length` steps."""

    def __new__(cls, batches, length):
        import keras

        class Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__(workers=1, use_multiprocessing=False)

            def __len__(self):
                return length

            def __getitem__(self, index):
                return batches[index % len(batches)]

        return Batches()


def _time_fit(model, batches, args) -> dict:
    """Images/s through `model.fit`: a warm-up call, then `windows` timed calls of `steps` steps."""
    model.fit(_Batches(batches, args.warmup), epochs=1, verbose=0)
    rates = []
    for _ in range(args.windows):
        start = time.perf_counter()
        model.fit(_Batches(batches, args.steps), epochs=1, verbose=0)  # Returns after syncing the state.
        rates.append(args.batch * args.steps / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "windows": [round(r, 1) for r in rates]}


def part_jax_synthetic(args, one_pass_bn: bool = True) -> dict:
    """The step on views already on the device; with `one_pass_bn=False` only the train function is timed."""
    jax, device = _jax_setup(args)
    keras, model = _build_jax_model(args, device_augment=False, one_pass_bn=one_pass_bn)
    key = jax.random.PRNGKey(0)
    views = jax.random.uniform(key, (args.batch, args.image_size, args.image_size, 6), "float32")
    labels = jax.numpy.zeros((args.batch,), "int32")
    batch = (views, labels)

    model.make_train_function()
    train_function = model.train_function
    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True, purge_model_variables=False)
    holder = {"state": state, "logs": None}

    def step():
        holder["logs"], holder["state"] = train_function(holder["state"], iter([batch]))

    def sync():
        jax.block_until_ready((holder["logs"], holder["state"]))

    compile_s, direct = _first_step_then_windows(step, sync, args)
    loss = float(holder["logs"]["contrast_loss"])
    if not one_pass_bn:
        return {"device": device, "direct": direct, "first_step_s": round(compile_s, 1), "contrast_loss": loss}
    if args.trace_dir:  # A few steps under the profiler, for benchmarks/trace_summary.py (no device time to read).
        jax.profiler.start_trace(args.trace_dir, create_perfetto_trace=True)
        for _ in range(args.trace_steps):
            step()
        sync()
        jax.profiler.stop_trace()
    # The variables' buffers were donated to the first step: give them the newest state.
    groups = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
              model.metrics_variables)
    for variables, values in zip(groups, holder["state"]):
        for variable, value in zip(variables, values):
            variable.assign(value)
    fit = _time_fit(model, [batch], args)
    return {"device": device, "direct": direct, "fit": fit, "first_step_s": round(compile_s, 1),
            "contrast_loss": loss, "keras": keras.__version__}


def part_jax_end_to_end(args) -> dict:
    import numpy as np

    from tf_simclr.augment import device as device_augment_lib
    from tf_simclr.augment.spec import spec_from_config

    jax, device = _jax_setup(args)
    spec = spec_from_config(_run_config(args, True).data, args.image_size)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.input_size, args.input_size, 3)
    pool = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(args.pool)]
    labels = np.zeros((args.batch,), np.int32)

    # The augmentation alone, on a batch already on the device.
    augment = jax.jit(lambda images, seed: device_augment_lib.stacked_views(images, seed, spec))
    holder = {"seed": 0, "out": None, "images": jax.device_put(pool[0])}

    def augment_step():
        holder["seed"] += 1
        holder["out"] = augment(holder["images"], jax.numpy.array([holder["seed"], 7], "int32"))

    def augment_sync():
        jax.block_until_ready(holder["out"])

    augment_step()
    augment_sync()
    alone = _windows(augment_step, augment_sync, 2 * args.batch, args.steps, args.windows)
    views_per_s = alone.pop("images_per_s")
    holder.clear()  # Free the device memory before the model needs it.

    keras, model = _build_jax_model(args, device_augment=True)
    start = time.perf_counter()
    fit = _time_fit(model, [(images, labels) for images in pool], args)
    return {"device": device, "fit": fit, "augment_views_per_s": views_per_s, "augment_windows": alone["windows"],
            "fit_total_s": round(time.perf_counter() - start, 1), "input": list(shape)}


# ----------------------------------------------------------------------------- PyTorch (the peer)


def part_torch(args, compiled: bool) -> dict:
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    cuda = torch.cuda.is_available()
    if args.require_gpu and not cuda:
        raise SystemExit("PyTorch sees no GPU: refusing to time it (--no-require_gpu to allow).")
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)

    encoder = getattr(torchvision.models, f"resnet{args.depth}")()
    width = encoder.fc.in_features
    encoder.fc = nn.Identity()

    def dense(n_in, n_out, relu):
        layers = [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out)]
        return layers + ([nn.ReLU(inplace=True)] if relu else [])

    head = nn.Sequential(*dense(width, width, True), *dense(width, width, True), *dense(width, 128, False))
    model = nn.Sequential(encoder, head).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6, fused=cuda)
    temperature = 0.1

    def loss_fn(views):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            z = model(views)
        z = F.normalize(z.float(), dim=1)
        n = z.shape[0]
        logits = (z @ z.t()) / temperature
        logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), -1e9)
        targets = (torch.arange(n, device=z.device) + n // 2) % n  # View i's positive is i +- B.
        return F.cross_entropy(logits, targets)

    forward = torch.compile(loss_fn) if compiled else loss_fn
    views = torch.rand(2 * args.batch, 3, args.image_size, args.image_size, device=device)
    views = views.contiguous(memory_format=torch.channels_last)
    holder = {}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = forward(views)
        loss.backward()
        optimizer.step()
        holder["loss"] = loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    compile_s, result = _first_step_then_windows(step, sync, args)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {"device": f"{name} (torch {torch.__version__})", "direct": result, "first_step_s": round(compile_s, 1),
            "contrast_loss": float(holder["loss"].detach())}


# ----------------------------------------------------------------------------- parent


def _run_part(part: str, args, passthrough: list, xla_flags: str = "") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if part.startswith("jax"):
        env["KERAS_BACKEND"] = "jax"
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--part", part, "--result", out, *passthrough]
        print(f"\n=== {part}", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, timeout=args.part_timeout)
            returncode = done.returncode
        except subprocess.TimeoutExpired:
            returncode = f"timed out after {args.part_timeout} s"
        wall = round(time.perf_counter() - start, 1)
        if not os.path.exists(out):
            print(f"=== {part} failed ({returncode}) after {wall} s", flush=True)
            return {"error": str(returncode), "wall_s": wall}
        with open(out) as f:
            result = json.load(f)
    result["wall_s"] = wall
    print(f"=== {part} done in {wall} s: {json.dumps(result)}", flush=True)
    return result


def _rate(results, part, key):
    value = results.get(part, {}).get(key, {})
    return value.get("images_per_s") if isinstance(value, dict) else None


def _report(results: dict, args) -> str:
    rows = [
        ("tf_simclr, Keras/JAX, synthetic views, train function", _rate(results, "jax_synthetic", "direct")),
        ("tf_simclr, Keras/JAX, synthetic views, model.fit", _rate(results, "jax_synthetic", "fit")),
        ("tf_simclr, Keras/JAX, uint8 + device augmentation, model.fit", _rate(results, "jax_end_to_end", "fit")),
        ("PyTorch torchvision, torch.compile", _rate(results, "torch_compile", "direct")),
        ("PyTorch torchvision, eager", _rate(results, "torch_eager", "direct")),
        ("tf_simclr, synthetic, Keras's two-pass batch-norm statistics", _rate(results, "jax_two_pass_bn", "direct")),
    ]
    devices = sorted({r["device"] for r in results.values() if "device" in r})
    lines = [f"SimCLR train step, ResNet-{args.depth} x{args.width:g}, {args.image_size} px, {args.batch} images "
             f"({2 * args.batch} views) a step, {args.precision}, tf_simclr with {args.optimizer}; median of {args.windows} windows of "
             f"{args.steps} steps", "devices: " + "; ".join(devices), ""]
    parts = ("jax_synthetic", "jax_synthetic", "jax_end_to_end", "torch_compile", "torch_eager", "jax_two_pass_bn")
    for (name, rate), part in zip(rows, parts):
        lines.append(f"  {name:64s} {rate:9.1f} images/s" if rate else
                     f"  {name:64s}   ({'failed' if part in results else 'not run'})")
    augment = results.get("jax_end_to_end", {}).get("augment_views_per_s")
    if augment:
        lines.append(f"  {'device augmentation alone (Keras/JAX)':64s} {augment:9.1f} views/s")
    ours, ours_fit, e2e, peer, eager, two_pass = (rate for _, rate in rows)

    def ratio(name, a, b, target=None):
        if a and b:
            verdict = "" if target is None else (" (target >= %.2fx: %s)" % (target, "met" if a / b >= target else "MISSED"))
            lines.append(f"  {name:64s} {a / b:9.2f}x{verdict}")

    lines.append("")
    ratio("tf_simclr (train function) / torch.compile", ours, peer, 1.1)
    ratio("tf_simclr (model.fit) / torch.compile", ours_fit, peer, 1.1)
    ratio("end-to-end (uint8, device augmentation) / synthetic, both model.fit", e2e, ours_fit, 0.95)
    ratio("torch.compile / torch eager", peer, eager)
    ratio("one-pass / two-pass batch-norm statistics (train function)", ours, two_pass)
    base = _rate(results, "jax_synthetic", "direct")
    for part in (p for p in results if p.startswith("jax_synthetic[")):
        rate = _rate(results, part, "direct")
        if rate and base:
            lines.append(f"  {part + ' / jax_synthetic (train function)':64s} {rate / base:9.2f}x  "
                         f"({rate:.1f} images/s; XLA_FLAGS {results[part]['xla_flags']})")
    floor = _floor_images_per_s(args)
    if floor:
        lines += ["", f"  {'floor: bf16 matrix peak / training FLOPs (ResNet-50 closed form)':64s} {floor:9.1f} images/s"]
        for name, rate in rows[:3]:
            if rate:
                lines.append(f"  {'share of the floor, ' + name[len('tf_simclr, '):]:64s} {rate / floor:9.1%}")
    return "\n".join(lines)


# A ResNet-50 forward pass is about 4.1 G multiply-adds per 224-px view (torchvision's "4.1 GFLOPS"; the
# projection head and loss add under 1%); backward costs about twice the forward, so training takes about
# 12.3 G multiply-adds = 24.6 GFLOP per view, 2 FLOP per multiply-add as a matrix unit's rate counts them.
RESNET50_TRAIN_GMAC_PER_VIEW = 12.3


def _floor_images_per_s(args):
    """The rate at which the matrix units alone would take the step (ResNet-50 only): peak / FLOPs per image."""
    if args.depth != 50 or args.width != 1 or not args.peak_tflops:
        return None
    flop_per_image = 2 * 2 * RESNET50_TRAIN_GMAC_PER_VIEW * 1e9 * (args.image_size / 224) ** 2  # Two views an image.
    return args.peak_tflops * 1e12 / flop_per_image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--input_size", type=int, default=256, help="side of the uint8 images (end-to-end)")
    parser.add_argument("--batch", type=int, default=256, help="images a step (two views each)")
    parser.add_argument("--precision", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--optimizer", default="lars", choices=("lars", "momentum"), help="tf_simclr's optimizer")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pool", type=int, default=4, help="distinct uint8 batches cycled (end-to-end)")
    parser.add_argument("--part_timeout", type=int, default=300)
    parser.add_argument("--peak_tflops", type=float, default=790.0,
                        help="the GPU's measured dense bf16 matrix rate, for the floor (H200: about 790)")
    parser.add_argument("--require_gpu", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device: checks that every part runs")
    parser.add_argument("--out", help="write all results here as JSON")
    parser.add_argument("--trace_dir", help="jax_synthetic: write a profiler trace of --trace_steps steps here")
    parser.add_argument("--trace_steps", type=int, default=5)
    parser.add_argument("--xla_variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="also time jax_synthetic with these XLA_FLAGS (repeatable), e.g. "
                             "'lhs=--xla_gpu_enable_latency_hiding_scheduler=true'")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.depth, args.width, args.image_size, args.input_size, args.batch = 18, 0.125, 32, 36, 8
        args.steps, args.windows, args.warmup, args.pool, args.require_gpu = 2, 2, 1, 2, False

    if args.part:
        runners = {"jax_synthetic": part_jax_synthetic, "jax_end_to_end": part_jax_end_to_end,
                   "torch_compile": lambda a: part_torch(a, compiled=True),
                   "torch_eager": lambda a: part_torch(a, compiled=False),
                   "jax_two_pass_bn": lambda a: part_jax_synthetic(a, one_pass_bn=False)}
        _emit(args.result, runners[args.part](args))
        return

    passthrough = [f"--{name}={getattr(args, name)}" for name in
                   ("depth", "width", "image_size", "input_size", "batch", "precision", "optimizer", "steps", "windows",
                    "warmup", "pool", "trace_steps")]
    if args.trace_dir:
        passthrough.append(f"--trace_dir={os.path.abspath(args.trace_dir)}")
    passthrough.append("--require_gpu" if args.require_gpu else "--no-require_gpu")
    results = {}
    for part in args.parts:
        results[part] = _run_part(part, args, passthrough)
        if args.out:
            _emit(args.out, {"args": vars(args), "results": results})
    passthrough = [flag for flag in passthrough if not flag.startswith("--trace_dir")]  # One trace: the base step.
    for variant in args.xla_variant:
        name, _, flags = variant.partition("=")
        results[f"jax_synthetic[{name}]"] = _run_part("jax_synthetic", args, passthrough, xla_flags=flags)
        results[f"jax_synthetic[{name}]"]["xla_flags"] = flags
        if args.out:
            _emit(args.out, {"args": vars(args), "results": results})
    report = _report(results, args)
    print("\n" + report, flush=True)
    if args.out:
        _emit(args.out, {"args": vars(args), "results": results, "report": report})
    failed = sorted(part for part, result in results.items() if "error" in result)
    if failed:
        print(f"gpu_benchmark: {len(failed)} part(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
