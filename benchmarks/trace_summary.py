"""Where a profiled train step's device time goes: totals by kernel kind and the largest kernels.

    python benchmarks/trace_summary.py TRACE_DIR [--steps 5] [--top 25]

Reads the Perfetto trace `jax.profiler` writes (`gpu_benchmark.py --trace_dir`:
`plugins/profile/<run>/perfetto_trace.json.gz`), keeps the events of the
accelerator's processes (those named like `/device:GPU:0`; every process when
there is none, as on a CPU), and divides the summed kernel durations by the
number of traced steps. Kinds are read from kernel names (cuDNN/cuBLAS
convolutions and matrix products, XLA fusions, copies and transposes), so the
split is a lead to follow in the HLO, not a measurement of its own.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

KINDS = (  # First match wins.
    # cuDNN's own layout changes (e.g. `cudnn::ops::nchwToNhwcKernel`) before its convolutions: copies.
    ("copy / transpose", re.compile(r"nchwToNhwc|nhwcToNchw|nchw2nhwc|nhwc2nchw", re.I)),
    # `conv` but not `convert`: XLA names its dtype-cast fusions `loop_convert_fusion`, `wrapped_convert`.
    ("matrix (conv / gemm)", re.compile(r"conv(?!ert)|gemm|xmma|cudnn|cublas|cutlass|sm\d\d_|dot|wgmma", re.I)),
    ("copy / transpose", re.compile(r"copy|transpose|memcpy|memset", re.I)),
    ("reduction fusion", re.compile(r"reduce|reduction", re.I)),
    ("other fusion", re.compile(r"fusion|loop_", re.I)),
)


def find_trace(path: str) -> str:
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(path, "**", "perfetto_trace.json.gz"), recursive=True))
    if not found:
        raise SystemExit(f"No perfetto_trace.json.gz under {path}: write one with gpu_benchmark.py --trace_dir.")
    return found[-1]


def kernel_times(trace_path: str) -> tuple[dict, list[str]]:
    """`{kernel name: total microseconds}` over the device processes, and those processes' names."""
    with gzip.open(trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in names.items() if re.search(r"device:(GPU|TPU)|/gpu:|cuda", name, re.I)}
    keep = device or set(names)
    totals: dict = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in keep:
            totals[e["name"]] += float(e.get("dur", 0.0))
    return totals, sorted(names[pid] for pid in keep)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def summary(totals: dict, steps: int, top: int) -> str:
    per_step = {name: us / steps / 1000 for name, us in totals.items()}  # ms a step
    total = sum(per_step.values())
    kinds = collections.Counter()
    for name, ms in per_step.items():
        kinds[kind_of(name)] += ms
    lines = [f"device time a step: {total:.2f} ms (sum of kernel durations over {steps} traced steps)", ""]
    lines += [f"  {kind:24s} {ms:8.2f} ms  {ms / total:6.1%}" for kind, ms in kinds.most_common()]
    lines += ["", f"largest {top} kernels:"]
    lines += [f"  {ms:8.3f} ms  {ms / total:6.1%}  {kind_of(name):22s} {name[:90]}"
              for name, ms in sorted(per_step.items(), key=lambda item: -item[1])[:top]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="the --trace_dir folder, or a perfetto_trace.json.gz")
    parser.add_argument("--steps", type=int, default=5, help="steps the trace holds (gpu_benchmark --trace_steps)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    path = find_trace(args.trace)
    totals, processes = kernel_times(path)
    print(f"{path}\nprocesses: {', '.join(processes)}\n")
    print(summary(totals, args.steps, args.top))


if __name__ == "__main__":
    main()
