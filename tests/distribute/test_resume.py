"""`--deterministic` resume on 2 replicas (2 logical CPUs, and 2 worker processes) ends bit-identical to no resume.

A kill between two checkpoints leaves the model_dir with the older checkpoint. The
runs are deterministic, so the uninterrupted run's own `ckpt-2` is exactly what
such a kill leaves: the resumed run starts from a copy of it (one run fewer than
killing a third run) and must end with the uninterrupted run's final weights, bit
for bit, after the same per-step losses. On 2 replicas a step takes a per-replica
batch for each replica, so a resume at the wrong data position (e.g. `step`
batches skipped instead of `step * replicas` over the input pipelines) trains on
other examples and the weights differ.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import helpers
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer

pytestmark = pytest.mark.slow

STEPS, EVERY, RESUME_AT = 4, 2, 2
HANG_GUARD_SECONDS = 600  # Only against a hung process; nothing is asserted about speed.


def arrays(model_dir, step):
    with np.load(os.path.join(ckpt_lib.checkpoint_path(model_dir, step), ckpt_lib.VARIABLES_FILE)) as stored:
        return {k: stored[k] for k in stored.files}


def assert_bit_identical(a, b):
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} arrays differ, e.g. {differ[:5]}"


def left_by_a_kill(uninterrupted, model_dir):
    """`model_dir` as a run killed between ckpt-2 and ckpt-4 left it: its ckpt-2 (the uninterrupted run's)."""
    os.makedirs(model_dir)
    shutil.copytree(ckpt_lib.checkpoint_path(uninterrupted, RESUME_AT), ckpt_lib.checkpoint_path(model_dir, RESUME_AT))
    return model_dir


def test_two_logical_cpus_resume_bit_identical_to_an_uninterrupted_run(image_folder, tmp_path, two_cpu_strategy):
    assert two_cpu_strategy.num_replicas_in_sync == 2
    uninterrupted = str(tmp_path / "uninterrupted")
    config = helpers.tiny_config(f"folder:{image_folder}", uninterrupted, train_steps=STEPS, checkpoint_steps=EVERY,
                                 keep_checkpoint_max=0, deterministic=True, seed=3,
                                 model=helpers.MICRO_MODEL)  # Resuming is the subject.
    full = helpers.StepLogs()
    trainer.train(config, two_cpu_strategy, callbacks=[full])
    model_dir = left_by_a_kill(uninterrupted, str(tmp_path / "resumed"))
    resumed = helpers.StepLogs()
    trainer.train(config.replace(train={"model_dir": model_dir}), two_cpu_strategy, callbacks=[resumed])

    assert [step for step, _ in resumed.steps] == [3, 4]  # Resumed at ckpt-2.
    assert resumed.series("contrast_loss") == full.series("contrast_loss")[RESUME_AT:]  # The same batches.
    assert_bit_identical(arrays(model_dir, STEPS), arrays(uninterrupted, STEPS))


def _run_two_workers(folder, model_dir, log_prefix):
    """Trains with `run.py` in 2 worker processes (TF_CONFIG on 127.0.0.1); returns the chief's log."""
    ports = helpers.free_ports(2)
    command = [
        sys.executable, helpers.RUN_PY, f"--dataset=folder:{folder}", f"--model_dir={model_dir}",
        "--export_at_end=False", f"--backbone={helpers.MICRO_BACKBONE}", "--image_size=16",  # Not the ResNet's test.
        "--proj_out_dim=16", "--num_proj_layers=2", "--train_batch_size=8", f"--train_steps={STEPS}",
        f"--checkpoint_steps={EVERY}", "--keep_checkpoint_max=0", "--use_tpu=False", "--warmup_epochs=0",
        "--use_blur=False", "--deterministic", "--seed=3",
    ]
    workers, logs = [], [f"{log_prefix}-worker{i}.log" for i in range(2)]
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}))
        with open(logs[index], "w") as log:
            workers.append(subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [w.wait(timeout=HANG_GUARD_SECONDS) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    texts = [open(path).read() for path in logs]
    assert codes == [0, 0], "\n".join(f"worker {i} (status {c}):\n{t[-3000:]}" for i, (c, t) in enumerate(zip(codes, texts)))
    assert "2 replicas in all" in texts[0]  # A cluster of 2, not two lone runs.
    return texts[0]


def test_two_worker_processes_resume_bit_identical_to_an_uninterrupted_run(image_folder, tmp_path):
    uninterrupted = str(tmp_path / "uninterrupted")
    _run_two_workers(image_folder, uninterrupted, str(tmp_path / "uninterrupted"))
    model_dir = left_by_a_kill(uninterrupted, str(tmp_path / "resumed"))
    chief_log = _run_two_workers(image_folder, model_dir, str(tmp_path / "resumed"))

    assert f"Resumed from {ckpt_lib.checkpoint_path(model_dir, RESUME_AT)} (step {RESUME_AT})" in chief_log
    assert_bit_identical(arrays(model_dir, STEPS), arrays(uninterrupted, STEPS))
