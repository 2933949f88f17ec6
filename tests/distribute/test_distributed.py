"""Same mathematics at any scale: 2 worker processes or 2 logical CPUs train like one replica; the chief alone writes.

2 worker processes (MultiWorkerMirroredStrategy via TF_CONFIG) and 2 logical CPUs
(MirroredStrategy) train exactly like one replica on the same global batch, and a
multi-worker `run.py` writes only from the chief and survives a killed worker.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.models import build_model
from tf_simclr.optim.optimizers import build_optimizer
from tf_simclr.optim.weight_decay import plan_weight_decay
from tf_simclr.storage import checkpoint

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
TINY = helpers.micro_model_config(image_size=16, global_bn=True)  # Distribution is the subject, not the ResNet.
STEPS, GLOBAL_BATCH = 3, 8
HANG_GUARD_SECONDS = 600  # Only against a hung process; nothing is asserted about speed.


def _is_moving_statistic(path):
    return "moving_mean" in path or "moving_variance" in path


def _assert_same_training(reference, other, initial, paths):
    """Weights agree to 2% of how far training moved them; BN statistics likewise.

    float32 sums over replicas round differently; a wrong gradient scale, local
    negatives or local batch norm move weights by a whole update (the same bound
    catches them in the model tests).
    """
    moved_statistics = 0
    for key in reference:
        moved = np.max(np.abs(reference[key] - initial[key]))
        np.testing.assert_allclose(other[key], reference[key], rtol=0, atol=0.02 * moved + 1e-7, err_msg=paths[key])
        moved_statistics += _is_moving_statistic(paths[key]) and moved > 0
    statistics = sum(_is_moving_statistic(paths[key]) for key in reference)
    assert moved_statistics == statistics >= 8, (moved_statistics, statistics)  # Every synchronized BN statistic
    # (encoder and projection head) moved and was compared.


def _arrays(folder):
    with np.load(os.path.join(checkpoint.resolve_checkpoint(folder), "variables.npz")) as stored:
        return {k: stored[k] for k in stored.files if k.startswith(("encoder/", "projection_head/"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Initial weights and the global batches every variant trains on."""
    path = tmp_path_factory.mktemp("distributed")
    keras.utils.set_random_seed(11)
    model = build_model(TINY)
    checkpoint.save_checkpoint(str(path / "init"), 0, model)
    rng = np.random.default_rng(5)
    images = rng.random((STEPS, GLOBAL_BATCH, 16, 16, 6), dtype=np.float32)
    np.savez(path / "batches.npz", images=images)
    return path


@pytest.fixture(scope="module")
def single_replica(workdir):
    subprocess.run([sys.executable, WORKER, str(workdir), "single"], check=True, timeout=300)
    with open(workdir / "single.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_two_worker_processes_train_like_one_replica(workdir, single_replica):
    ports = [str(p) for p in helpers.free_ports(2)]
    workers = [subprocess.Popen([sys.executable, WORKER, str(workdir), str(i), *ports], stderr=subprocess.PIPE)
               for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()[-3000:]
    logs = [json.load(open(workdir / f"worker{i}.json")) for i in range(2)]
    assert [log["replicas"] for log in logs] == [2, 2]
    assert [log["chief"] for log in logs] == [True, False]
    assert single_replica["replicas"] == 1
    # Loss after each step, as each worker reports it.
    for log in logs:
        np.testing.assert_allclose(log["contrast_loss"], single_replica["contrast_loss"], rtol=1e-4)
    assert not os.path.exists(workdir / "worker1")  # Only the chief writes.
    meta = checkpoint.read_meta(str(workdir / "single"))
    _assert_same_training(_arrays(str(workdir / "single")), _arrays(str(workdir / "worker0")),
                          _arrays(str(workdir / "init")), meta["paths"])


def _compiled_under(strategy, workdir, optimizer, steps_per_execution=1):
    """The tiny model from WORKDIR/init, compiled in `strategy`'s scope with `optimizer(model)`."""
    with strategy.scope():
        model = build_model(TINY)
        checkpoint.restore_checkpoint(str(workdir / "init"), model)
        opt = optimizer(model)
        model.compile(optimizer=opt, steps_per_execution=steps_per_execution)
        opt.build(model.trainable_variables)
    return model, opt


def _lars_with_decay(model):
    decay = plan_weight_decay(model, 1e-4, optimizer_applies_decay=True)
    model.set_weight_decay(decay)
    return build_optimizer("lars", 0.02, momentum=0.9, weight_decay=1e-4, excluded_variables=decay.optimizer_excluded)


def _halves(strategy, batches):
    """One input pipeline feeds both replicas: the two halves of each global batch, in order."""
    return strategy.distribute_datasets_from_function(lambda ctx: tf.data.Dataset.from_tensor_slices(
        (batches, np.zeros(batches.shape[:2], "int32"))).unbatch().batch(GLOBAL_BATCH // 2))


def test_two_logical_cpus_train_like_one_replica_step_by_step(workdir, single_replica, two_cpu_strategy):
    batches = np.load(workdir / "batches.npz")["images"]
    model, _ = _compiled_under(two_cpu_strategy, workdir, _lars_with_decay)
    history = model.fit(_halves(two_cpu_strategy, batches), epochs=STEPS, steps_per_epoch=1, verbose=0)
    np.testing.assert_allclose(history.history["contrast_loss"], single_replica["contrast_loss"], rtol=1e-4)
    saved = checkpoint.save_checkpoint(str(workdir / "mirrored"), STEPS, model)
    meta = checkpoint.read_meta(str(workdir / "single"))
    _assert_same_training(_arrays(str(workdir / "single")), _arrays(saved), _arrays(str(workdir / "init")), meta["paths"])


def _start_worker(index, ports, folder, model_dir, export_dir, log):
    env = dict(os.environ, TF_CONFIG=json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}))
    command = [
        sys.executable, helpers.RUN_PY, f"--dataset=folder:{folder}", f"--model_dir={model_dir}",
        f"--export_dir={export_dir}", f"--backbone={helpers.MICRO_BACKBONE}", "--image_size=16",
        "--train_batch_size=16", "--train_steps=30", "--checkpoint_steps=10", "--keep_checkpoint_max=2",
        "--use_tpu=False", "--warmup_epochs=0", "--lineareval_while_pretraining=False", "--use_blur=False",
    ]
    return subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_multi_worker_run_writes_from_the_chief_only_and_a_killed_worker_rejoins(image_folder, tmp_path):
    ports = helpers.free_ports(2)
    model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "exports")
    logs = [open(tmp_path / f"worker{i}.log", "a") for i in range(2)]
    chief, worker = (_start_worker(i, ports, image_folder, model_dir, export_dir, logs[i]) for i in range(2))
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not os.path.exists(os.path.join(model_dir, "ckpt-10")):
        assert chief.poll() is None and worker.poll() is None, "a worker ended before the first checkpoint"
        if time.monotonic() > deadline:
            chief.kill(), worker.kill()
            pytest.fail("no first checkpoint (hung run?)")
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=60) == -signal.SIGKILL
    restarted = _start_worker(1, ports, image_folder, model_dir, export_dir, logs[1])  # Same command, same port.
    assert restarted.wait(timeout=HANG_GUARD_SECONDS) == 0, open(tmp_path / "worker1.log").read()[-3000:]
    assert chief.wait(timeout=120) == 0, open(tmp_path / "worker0.log").read()[-3000:]
    chief_log = open(tmp_path / "worker0.log").read()
    assert "A peer worker failed" in chief_log  # The chief noticed, re-executed itself...
    resumed = int(chief_log.split("Resumed from")[1].split("(step ")[1].split(")")[0])
    assert 10 <= resumed < 30  # ...and both resumed from the chief's checkpoint, not from scratch.
    assert f"(step {resumed})" in open(tmp_path / "worker1.log").read().split("Resumed from")[-1]
    # Only the chief's files: checkpoints, flags, summaries and the learning curve; one export.
    assert sorted(os.listdir(model_dir)) == ["ckpt-20", "ckpt-30", "flags.json", "learning_curve.json",
                                             "learning_curve.png", "train"]
    assert os.listdir(export_dir) == ["30"]


def test_several_steps_per_execution_on_two_replicas_equal_single_steps(workdir, two_cpu_strategy):
    """Keras 3.15's own multi-step loop fails on 2 replicas; ours must run the same steps."""
    batches = np.load(workdir / "batches.npz")["images"][:2]

    def train(steps_per_execution):
        model, opt = _compiled_under(two_cpu_strategy, workdir, lambda m: build_optimizer("momentum", 0.05, momentum=0.9),
                                     steps_per_execution)
        history = model.fit(_halves(two_cpu_strategy, batches), epochs=1, steps_per_epoch=2, verbose=0)
        return history.history["contrast_loss"][0], int(opt.iterations.numpy()), [v.numpy() for v in model.weights]

    loss1, steps1, weights1 = train(1)
    loss2, steps2, weights2 = train(2)
    assert steps1 == steps2 == 2
    np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
    for a, b in zip(weights1, weights2):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
