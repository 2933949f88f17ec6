"""SIGKILL and SIGTERM mid-run: the same command resumes and ends bit-identical to an uninterrupted run.

Each run is a real `run.py` process on the tiny image folder with `--deterministic`,
so the comparison is exact: op determinism, augmentation seeded per example and
the data stream resumed at the checkpoint's step. The kill delays are random: the
seed is printed, and `FAULT_SEED=<seed>` replays them (docs/testing.md).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.slow

STEPS, EVERY = 40, 5
HANG_GUARD_SECONDS = 600  # Only against a hung process; nothing is asserted about speed.


def _command(folder, model_dir):
    return [
        sys.executable, helpers.RUN_PY, f"--dataset=folder:{folder}", f"--model_dir={model_dir}",
        "--export_at_end=False", f"--backbone={helpers.MICRO_BACKBONE}", "--image_size=16",  # Not the ResNet's test.
        "--proj_out_dim=16", "--num_proj_layers=2", "--train_batch_size=16", f"--train_steps={STEPS}",
        f"--checkpoint_steps={EVERY}", "--keep_checkpoint_max=3", "--use_tpu=False", "--warmup_epochs=1",
        "--deterministic", "--seed=3",
    ]


def _start(folder, model_dir, log):
    return subprocess.Popen(_command(folder, model_dir), cwd=helpers.REPO, stdout=log, stderr=subprocess.STDOUT)


def _run_to_end(folder, model_dir, log_path):
    with open(log_path, "a") as log:
        code = _start(folder, model_dir, log).wait(timeout=HANG_GUARD_SECONDS)
    assert code == 0, open(log_path).read()[-3000:]


def _wait_for(path, process):
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not os.path.exists(path):
        assert process.poll() is None, f"the run ended (status {process.returncode}) before {path} appeared"
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear (hung run?)")
        time.sleep(0.05)


def _final_weights(model_dir):
    with np.load(os.path.join(model_dir, f"ckpt-{STEPS}", "variables.npz")) as stored:
        return {k: stored[k] for k in stored.files}


def _assert_bit_identical(a, b, note=""):
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} arrays differ, e.g. {differ[:5]} {note}"


@pytest.fixture(scope="module")
def uninterrupted(image_folder, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    _run_to_end(image_folder, model_dir, model_dir + ".log")
    return _final_weights(model_dir)


def test_sigkill_at_random_steps_resumes_bit_identical(image_folder, uninterrupted, tmp_path):
    model_dir, log_path = str(tmp_path / "run"), str(tmp_path / "run.log")
    rng, seed = helpers.fault_rng()
    replay = f"(replay: FAULT_SEED={seed})"
    kills = []
    for first_checkpoint in (EVERY, 4 * EVERY):
        with open(log_path, "a") as log:
            process = _start(image_folder, model_dir, log)
            _wait_for(os.path.join(model_dir, f"ckpt-{first_checkpoint}"), process)
            delay = rng.uniform(0, 0.5)
            print(f"kill {delay:.3f} s after ckpt-{first_checkpoint} appeared")
            time.sleep(delay)  # Anywhere in the steps after it, mid-write included.
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL, f"the run finished before it could be killed {replay}"
        kills.append(max(int(n.split("-")[1]) for n in os.listdir(model_dir) if n.startswith("ckpt-")))
    _run_to_end(image_folder, model_dir, log_path)
    log = open(log_path).read()
    for step in kills:
        assert f"Resumed from {os.path.join(model_dir, f'ckpt-{step}')} (step {step})" in log, replay
    _assert_bit_identical(_final_weights(model_dir), uninterrupted, replay)


def test_sigterm_saves_a_checkpoint_and_exits_then_resumes_bit_identical(image_folder, uninterrupted, tmp_path):
    model_dir, log_path = str(tmp_path / "run"), str(tmp_path / "run.log")
    with open(log_path, "a") as log:
        process = _start(image_folder, model_dir, log)
        _wait_for(os.path.join(model_dir, f"ckpt-{EVERY}"), process)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    log = open(log_path).read()
    assert code == 143, log[-3000:]
    stopped = [line for line in log.splitlines() if "Stopped by SIGTERM at step" in line]
    assert stopped, log[-3000:]
    step = int(stopped[-1].split("at step ")[1].split(";")[0])
    assert EVERY <= step < STEPS
    assert os.path.exists(os.path.join(model_dir, f"ckpt-{step}", "meta.json"))  # Saved where it stopped.
    _run_to_end(image_folder, model_dir, log_path)
    assert f"(step {step})" in open(log_path).read().split("Resumed from")[-1].splitlines()[0]
    _assert_bit_identical(_final_weights(model_dir), uninterrupted)
