"""A run's output is its own: TensorFlow's start-up lines appear only on request (TF_SIMCLR_SHOW_TF_STARTUP=1)."""

import os
import subprocess
import sys

import helpers

# What TensorFlow 2.21 prints from C++ as it starts on a CPU machine, before any log level applies.
STARTUP_MARKERS = ("oneDNN custom operations are on", "Could not find cuda drivers", "cuInit")


def _run(tmp_path, **env):
    """A run that imports TensorFlow and TFDS, then fails a flag check (nothing trains)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_SIMCLR_SHOW_TF_STARTUP")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, helpers.RUN_PY, "--dataset=no_such_dataset_xyz", "--use_tpu=False",
         f"--model_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=environment, timeout=300,
    )


def test_tensorflow_start_up_lines_are_hidden_and_the_error_is_shown(tmp_path):
    done = _run(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "error: Unknown dataset" in output
    assert not [m for m in STARTUP_MARKERS if m in output], output
    assert not (tmp_path / "run").exists()


def test_the_environment_variable_shows_them(tmp_path):
    done = _run(tmp_path, TF_SIMCLR_SHOW_TF_STARTUP="1", TF_CPP_MIN_LOG_LEVEL="0")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "oneDNN custom operations are on" in output or "Could not find cuda drivers" in output, output
