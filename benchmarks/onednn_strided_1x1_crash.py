"""Standalone reproducer: heap buffer overflow in oneDNN's 1x1 strided conv backward-weights.

What it shows
-------------
A single, legal TensorFlow op -- the weight gradient of a 1x1, stride-2, VALID
convolution on an NHWC float32 input with fewer than 16 input channels --

    tf.raw_ops.Conv2DBackpropFilter(input=[32, 56, 56, 8], filter_sizes=[1, 1, 8, 16],
                                    out_backprop=[32, 28, 28, 16], strides=[1, 2, 2, 1],
                                    padding="VALID")

corrupts the heap and kills the process (SIGSEGV, or glibc "malloc assertion failure in
_int_malloc" / "corrupted size vs. prev_size" / "free(): invalid size": the manifestation varies
with the heap layout, the fault does not) in TensorFlow 2.21 on an AVX-512 CPU
with the default settings (oneDNN on).

This is the tf_simclr ResNet-18 projection shortcut of block_group2 at width 1/8 and
image_size 224 (block_group1 output 56x56x8 -> 1x1/2 conv -> 28x28x16, batch 2 x 16 views).

With TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels) the same op passes. So does
ONEDNN_MAX_CPU_ISA=AVX (oneDNN falls back to gemm-based backward-weights), and so does the
same math written as "subsample, then stride-1 1x1 conv": `--formulation=avgpool` (a 1x1
average pool with stride 2, the fix tf_simclr applies in models/backbones/resnet.py) or
`--formulation=subsample` (x[:, ::2, ::2]). Both give bit-identical gradients. C_in = 16
(`--cin=16`) passes as well. ONEDNN_MAX_CPU_ISA=AVX512_CORE still crashes (same kernel), and
ONEDNN_MAX_CPU_ISA=AVX2 passes at C_in = 8 but crashes at C_in = 4.

Root cause (oneDNN v3.7.3, the copy inside TF 2.21; also unfixed on oneDNN main, see
uxlfoundation/oneDNN issue #6035): oneDNN picks `jit_1x1:avx512_core,backward_weights`
(jit_avx512_common_1x1_convolution_bwd_weights_t). For stride > 1 it first copies the strided
source pixels into a per-thread "rtus" (reduce-to-unit-stride) workspace. For an NHWC
source, rtus_prepare_space_info() sizes each thread's workspace as  is * IC  floats
(is = output pixels), but execute_backward_weights() points the copy at
ws + sp * ic_block  with ic_block = 16 (the AVX-512 channel block), so whenever the spatial
reduction is split into more than one chunk (sp > 0) and IC < 16, the rtus_driver JIT kernel
writes up to (is - chunk) * (16 - IC) floats past the workspace, i.e. past the end of the
scratchpad malloc'ed by oneDNN. Here: 12160 bytes past a 51456-byte scratchpad, on every
call. Under gdb the faulting instruction is a masked store `vmovups %zmm1,(%r12){%k2}`
inside the JIT kernel `rtus_driver_t` (identified with ONEDNN_JIT_PROFILE=2), with
jit_avx512_common_1x1_convolution_bwd_weights_t::execute_backward_weights on the stack.
The op and shapes are legal; nothing in the model is wrong. The AVX2 kernel
(ONEDNN_MAX_CPU_ISA=AVX2, ic_block 8) has the same bug for IC < 8 (wrong gradients and
overflows at IC = 4), so capping at AVX2 is only a partial workaround.

Usage
-----
    python benchmarks/onednn_strided_1x1_crash.py            # runs the op in this process: crashes (exit 134/139)
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/onednn_strided_1x1_crash.py     # PASS
    ONEDNN_MAX_CPU_ISA=AVX  python benchmarks/onednn_strided_1x1_crash.py     # PASS (all of oneDNN capped: slow)
    python benchmarks/onednn_strided_1x1_crash.py --formulation=avgpool       # PASS: avg_pool 1x1/2 + stride-1 conv
    python benchmarks/onednn_strided_1x1_crash.py --formulation=subsample     # PASS: x[:, ::2, ::2] + stride-1 conv
    python benchmarks/onednn_strided_1x1_crash.py --cin=16                    # PASS: IC = ic_block, no overflow
    python benchmarks/onednn_strided_1x1_crash.py --matrix   # runs all of the above in subprocesses, prints a table

Options: --n, --h (input height = width), --cin, --cout, --iters, --formulation
{strided,subsample,avgpool}. Exit status: the crash (134 SIGABRT / 139 SIGSEGV) by default;
0 = PASS; 1 = wrong gradient. With --matrix: 0 if the default variant crashed as expected. Each run checks the gradient against a float64 numpy reference.
"""

import argparse
import os
import subprocess
import sys
import time


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = [x for x in flags if x.startswith(("avx", "amx", "fma", "sse4"))]
                    return " ".join(sorted(keep))
    except OSError:
        pass
    return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def run_case(args):
    """Runs the op in this process. Crashes under the default settings."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Log primitive creation and execution, so the last line before a crash names the kernel.
    os.environ.setdefault("ONEDNN_VERBOSE", "profile_create,profile_exec")
    import numpy as np
    import tensorflow as tf

    print(f"python {sys.version.split()[0]}, tensorflow {tf.__version__}, numpy {np.__version__}")
    print(f"cpu: {cpu_model()}; flags: {cpu_flags()}")
    env_keys = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ONEDNN_VERBOSE")
    print("env:", {k: os.environ.get(k) for k in env_keys})
    n, h, cin, cout, s = args.n, args.h, args.cin, args.cout, 2
    ho = (h - 1) // s + 1
    print(f"case: Conv2DBackpropFilter input [{n},{h},{h},{cin}] NHWC f32, filter [1,1,{cin},{cout}], "
          f"stride {s}, VALID, out_backprop [{n},{ho},{ho},{cout}]; formulation={args.formulation}", flush=True)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, h, cin), dtype=np.float32)
    dy = rng.standard_normal((n, ho, ho, cout), dtype=np.float32)
    ref = np.einsum("nhwc,nhwo->co", x[:, ::s, ::s, :].astype(np.float64), dy.astype(np.float64))
    xt, dyt = tf.constant(x), tf.constant(dy)

    @tf.function
    def grad_w(x, dy):
        if args.formulation == "avgpool":
            # The fix proposed for tf_simclr/resnet.py: a 1x1 average pool with stride 2 selects
            # x[:, ::2, ::2] bit for bit; its gradient is oneDNN's pooling backward, not the rtus copy.
            # The weight gradient is then a stride-1 Conv2DBackpropFilter.
            return tf.raw_ops.Conv2DBackpropFilter(
                input=tf.nn.avg_pool2d(x, 1, s, "VALID"), filter_sizes=[1, 1, cin, cout], out_backprop=dy,
                strides=[1, 1, 1, 1], padding="VALID")
        if args.formulation == "subsample":
            # Same math: a 1x1 stride-2 VALID conv reads exactly the pixels x[:, ::2, ::2];
            # with the subsampling done first, the conv has stride 1 and oneDNN does not use
            # the faulty rtus copy.
            return tf.raw_ops.Conv2DBackpropFilter(
                input=x[:, ::s, ::s, :], filter_sizes=[1, 1, cin, cout], out_backprop=dy,
                strides=[1, 1, 1, 1], padding="VALID")
        return tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[1, 1, cin, cout], out_backprop=dy, strides=[1, s, s, 1], padding="VALID")

    err = 0.0
    t0 = time.time()
    for i in range(args.iters):
        out = grad_w(xt, dyt).numpy()[0, 0]
        err = max(err, float(np.abs(out - ref).max() / np.abs(ref).max()))
        # A little heap traffic between calls, so that a corrupted heap is noticed quickly.
        junk = [np.ones(1 << k, np.uint8) for k in range(4, 18)]
        del junk
    dt = (time.time() - t0) / args.iters * 1e3
    ok = err < 1e-4
    print(f"{'PASS' if ok else 'FAIL (wrong gradient)'}: {args.iters} calls survived, "
          f"max relative error vs numpy float64 = {err:.2e}, {dt:.2f} ms/call", flush=True)
    return 0 if ok else 1


def run_matrix(args):
    here = os.path.abspath(__file__)
    variants = [
        ("default (oneDNN on, native ISA)", {}, []),
        ("TF_ENABLE_ONEDNN_OPTS=0", {"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
        ("ONEDNN_MAX_CPU_ISA=AVX", {"ONEDNN_MAX_CPU_ISA": "AVX"}, []),
        ("ONEDNN_MAX_CPU_ISA=AVX2 (C_in=8)", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
        ("ONEDNN_MAX_CPU_ISA=AVX2, C_in=4", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, ["--cin=4", "--cout=8"]),
        ("ONEDNN_MAX_CPU_ISA=AVX512_CORE", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, []),
        ("default, --formulation=subsample", {}, ["--formulation=subsample"]),
        ("default, --formulation=avgpool", {}, ["--formulation=avgpool"]),
        ("default, C_in=16 (control)", {}, ["--cin=16"]),
    ]
    base = [f"--n={args.n}", f"--h={args.h}", f"--cin={args.cin}", f"--cout={args.cout}", f"--iters={args.iters}"]
    print(f"{'variant':40s} {'exit':>5s}  result")
    worst = 0
    for name, env, extra in variants:
        e = dict(os.environ, ONEDNN_VERBOSE="0", **env)
        p = subprocess.run([sys.executable, here, *base, *extra], env=e, capture_output=True, text=True)
        text = (p.stdout + p.stderr).strip().splitlines()
        result = next((l for l in reversed(text) if l.startswith(("PASS", "FAIL"))), None)
        if p.returncode < 0 or p.returncode in (134, 139):
            sig = {6: "SIGABRT", 11: "SIGSEGV"}.get(-p.returncode if p.returncode < 0 else p.returncode - 128, "signal")
            glibc = next((l.strip() for l in text if any(k in l for k in ("malloc", "free()", "corrupted", "Fatal glibc"))), "")
            result = f"CRASH ({sig}) {glibc}".strip()
        print(f"{name:40s} {p.returncode:5d}  {result}", flush=True)
        if name.startswith("default (") and not result.startswith("CRASH"):
            worst = 1  # the bug did not reproduce
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--h", type=int, default=56)
    ap.add_argument("--cin", type=int, default=8)
    ap.add_argument("--cout", type=int, default=16)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--formulation", choices=["strided", "subsample", "avgpool"], default="strided")
    ap.add_argument("--matrix", action="store_true", help="run the variants in subprocesses and print a table")
    args = ap.parse_args()
    sys.exit(run_matrix(args) if args.matrix else run_case(args))


if __name__ == "__main__":
    main()
