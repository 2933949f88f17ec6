"""TensorFlow's oneDNN CPU kernels, also on x86 CPUs with AVX2 where TensorFlow 2.21 leaves them off.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it loads, and without it turns
oneDNN on only for Linux CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX
(`DefaultOneDnnPolicy` in tensorflow/core/util/util.cc). Other AVX2 CPUs (AMD EPYC
Rome/Milan, Xeons before Cascade Lake) get its Eigen kernels, which on a 2-core AMD
EPYC made the quickstart's training step 2.4x slower: 3.16 s against 1.30 s at batch
256 (docs/benchmarks.md). So tf_simclr's command line and its tests set the variable
to 1 on such CPUs before TensorFlow loads, unless it is set already. The oneDNN fault
tf_simclr's ResNet avoids (strided 1x1 convolutions on few channels) has an AVX2
variant too, below 8 channels; the same guard (16) covers it.
"""

from __future__ import annotations

import os
import platform
import sys

ENV = "TF_ENABLE_ONEDNN_OPTS"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    """The first CPU's feature flags from `cpuinfo` (Linux); empty where it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def use_onednn_on_avx2(cpuinfo: str = "/proc/cpuinfo", machine: str | None = None) -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 when unset, TensorFlow not loaded yet, on an x86-64 Linux CPU with AVX2.

    Returns:
        Whether it set the variable. A value the user set (0 or 1) is always kept.
    """
    if ENV in os.environ or "tensorflow" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    if "avx2" not in cpu_flags(cpuinfo):
        return False
    os.environ[ENV] = "1"
    return True


def onednn_enabled() -> bool | None:
    """Whether the loaded TensorFlow runs oneDNN's CPU kernels; None without TensorFlow or where it cannot say."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer (private, checked on 2.21).
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def describe() -> str:
    """For the run's log on a CPU: which kernels TensorFlow runs, and how to get oneDNN's where it is off."""
    enabled = onednn_enabled()
    if enabled is None:
        return ""
    if enabled:
        return "oneDNN kernels on"
    if os.environ.get(ENV, "").lower() in ("0", "false"):
        return f"oneDNN kernels off ({ENV}={os.environ[ENV]})"
    return (f"oneDNN kernels off: {ENV}=1 before TensorFlow is imported made training 2.4x faster on an AVX2 CPU "
            "(docs/benchmarks.md)")
