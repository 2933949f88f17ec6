"""benchmarks/trace_summary.py sorts real kernel names into the right kinds and sums a trace per step."""

import gzip
import importlib.util
import json
import os

import pytest

import helpers


def _load():
    path = os.path.join(helpers.REPO, "benchmarks", "trace_summary.py")
    spec = importlib.util.spec_from_file_location("trace_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trace_summary = _load()


@pytest.mark.parametrize(
    "name, kind",
    [
        # Kernel names as CUDA and XLA write them in JAX's GPU traces, and XLA:CPU's names.
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "matrix (conv / gemm)"),
        ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_256x128_32x3_tn_align8", "matrix (conv / gemm)"),
        ("triton_gemm_dot_12", "matrix (conv / gemm)"),
        ("conv_general_dilated.62", "matrix (conv / gemm)"),
        ("loop_convert_fusion_3", "other fusion"),  # a dtype cast, not a convolution
        ("wrapped_convert.20", "other"),
        ("pad_convert_fusion.2", "other fusion"),
        ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true>", "copy / transpose"),
        ("transpose_copy_fusion.29", "copy / transpose"),
        ("input_reduce_fusion_7", "reduction fusion"),
    ],
)
def test_kernel_kinds(name, kind):
    assert trace_summary.kind_of(name) == kind


def test_sums_device_kernels_per_step(tmp_path):
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "name": "sm90_xmma_fprop", "dur": 3000.0},
        {"ph": "X", "pid": 1, "name": "sm90_xmma_fprop", "dur": 1000.0},
        {"ph": "X", "pid": 1, "name": "loop_convert_fusion", "dur": 2000.0},
        {"ph": "X", "pid": 2, "name": "PjitFunction(train_step)", "dur": 9000.0},  # host: left out
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    totals, processes = trace_summary.kernel_times(trace_summary.find_trace(str(tmp_path)))
    assert processes == ["/device:GPU:0"] and totals == {"sm90_xmma_fprop": 4000.0, "loop_convert_fusion": 2000.0}
    text = trace_summary.summary(totals, steps=2, top=5)
    # (4000 + 2000) us over 2 steps = 3.00 ms a step; the convolution's share is 4000 / 6000.
    assert "device time a step: 3.00 ms" in text
    assert "matrix (conv / gemm)         2.00 ms   66.7%" in text
