"""oneDNN's CPU kernels on AVX2 CPUs: set before TensorFlow loads, never over the user's choice."""

import os
import subprocess
import sys

import pytest

from tf_simclr import cpu_kernels

AVX2_FLAGS = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2\n"
AVX_ONLY_FLAGS = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx\n"


@pytest.fixture
def before_tensorflow(monkeypatch):
    """A process that has not loaded TensorFlow yet, on Linux, with TF_ENABLE_ONEDNN_OPTS unset."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv(cpu_kernels.ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    return monkeypatch


def _cpuinfo(tmp_path, flags_line):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n" + flags_line + "\nprocessor\t: 1\n" + flags_line)
    return str(path)


def test_sets_it_on_an_x86_cpu_with_avx2(before_tensorflow, tmp_path):
    assert cpu_kernels.use_onednn_on_avx2(_cpuinfo(tmp_path, AVX2_FLAGS), machine="x86_64")
    assert os.environ[cpu_kernels.ENV] == "1"


@pytest.mark.parametrize("value", ["0", "1", "false"])
def test_keeps_the_users_value(before_tensorflow, tmp_path, value):
    before_tensorflow.setenv(cpu_kernels.ENV, value)
    assert not cpu_kernels.use_onednn_on_avx2(_cpuinfo(tmp_path, AVX2_FLAGS), machine="x86_64")
    assert os.environ[cpu_kernels.ENV] == value


def test_leaves_other_cpus_to_tensorflow(before_tensorflow, tmp_path):
    assert not cpu_kernels.use_onednn_on_avx2(_cpuinfo(tmp_path, AVX_ONLY_FLAGS), machine="x86_64")
    assert not cpu_kernels.use_onednn_on_avx2(_cpuinfo(tmp_path, AVX2_FLAGS), machine="aarch64")
    assert not cpu_kernels.use_onednn_on_avx2(str(tmp_path / "missing"), machine="x86_64")
    assert cpu_kernels.ENV not in os.environ


def test_too_late_once_tensorflow_is_loaded(monkeypatch, tmp_path):
    monkeypatch.delenv(cpu_kernels.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    assert not cpu_kernels.use_onednn_on_avx2(_cpuinfo(tmp_path, AVX2_FLAGS), machine="x86_64")
    assert cpu_kernels.ENV not in os.environ


def test_reads_the_first_flags_line(tmp_path):
    assert cpu_kernels.cpu_flags(_cpuinfo(tmp_path, AVX2_FLAGS)) == {
        "fpu", "sse", "sse2", "ssse3", "sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"}
    assert cpu_kernels.cpu_flags(os.devnull) == frozenset()


def test_tensorflow_runs_onednn_after_it_on_this_machine():
    """TensorFlow's own answer in a fresh process: on where this CPU has AVX2 (or TensorFlow's own default is on)."""
    env = {k: v for k, v in os.environ.items() if k != cpu_kernels.ENV}
    script = ("import tf_simclr\n"
              "from tf_simclr import cpu_kernels\n"
              "print(tf_simclr.use_onednn_on_avx2())\n"
              "import tensorflow\n"
              "print(cpu_kernels.onednn_enabled())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    was_set, enabled = done.stdout.split()[-2:]
    x86_linux = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "AMD64")
    assert was_set == str(x86_linux and "avx2" in cpu_kernels.cpu_flags())
    if was_set == "True":
        assert enabled == "True"
