"""A NaN/Inf loss never reaches a checkpoint: the run stops on the last good one, or skips and counts the batch.

One corrupt batch (NaN images at batch index 5, i.e. global step 6) is injected by
wrapping `data.pipeline.build_dataset`. Runs are `--deterministic`, so a clean run
of the same config is the independent reference: up to the poisoned step every
checkpoint must equal the clean run's.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.data import pipeline
from tf_simclr.export import hub_module
from tf_simclr.training import callbacks as callbacks_lib
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer

pytestmark = pytest.mark.slow

IMAGE_SIZE = 16
TRAIN_STEPS = 10
POISONED_BATCH = 5  # 0-based index in the training stream: trained at global step 6.
POISONED_STEP = POISONED_BATCH + 1


def run_config(image_folder, model_dir, **train):
    values = dict(train_steps=TRAIN_STEPS, checkpoint_steps=2, keep_checkpoint_max=0, lineareval_while_pretraining=False,
                  seed=1, deterministic=True)
    values.update(train)
    # What a bad batch does to a run is the subject, not the ResNet.
    return helpers.tiny_config(f"folder:{image_folder}", model_dir, model=helpers.MICRO_MODEL, **values)


def poison_training_batches(monkeypatch, batch_index=POISONED_BATCH):
    """Makes the training pipeline's batch `batch_index` all-NaN images (a corrupt input batch)."""
    original = pipeline.build_dataset

    def build(source, split, views, batch_size, **kwargs):
        dataset = original(source, split, views, batch_size, **kwargs)
        if not (views.training and "input_context" in kwargs):  # Only train()'s training stream.
            return dataset
        nan = tf.constant(float("nan"))
        return dataset.enumerate().map(
            lambda i, xy: (tf.where(i == batch_index, xy[0] * nan, xy[0]), xy[1])
        )

    monkeypatch.setattr(pipeline, "build_dataset", build)


def load_arrays(checkpoint_folder):
    with np.load(os.path.join(checkpoint_folder, ckpt_lib.VARIABLES_FILE)) as stored:
        return {key: stored[key] for key in stored.files}


def all_finite(arrays):
    return all(np.all(np.isfinite(v)) for v in arrays.values() if np.issubdtype(v.dtype, np.floating))


def assert_same_arrays(actual, expected, rtol=0.0, atol=0.0):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def clean_run(image_folder, tmp_path_factory):
    """The reference: the same run without poison, a checkpoint at every step."""
    model_dir = str(tmp_path_factory.mktemp("clean") / "run")
    trainer.train(run_config(image_folder, model_dir, checkpoint_steps=1))
    assert ckpt_lib.checkpoint_steps(model_dir) == list(range(1, TRAIN_STEPS + 1))
    return model_dir


# ------------------------------------------------------------------ Stop on a non-finite loss
def test_poisoned_batch_stops_on_the_last_good_checkpoint(image_folder, clean_run, tmp_path, monkeypatch):
    poison_training_batches(monkeypatch)
    model_dir = str(tmp_path / "run")
    config = run_config(image_folder, model_dir)  # Checkpoints every 2 steps: step 6 is a checkpoint step.

    with pytest.raises(callbacks_lib.NonFiniteLossError) as raised:
        trainer.train(config)

    error = raised.value
    assert error.step == POISONED_STEP
    newest = os.path.join(model_dir, "ckpt-4")
    assert error.last_checkpoint == newest
    assert ckpt_lib.checkpoint_steps(model_dir) == [2, 4]  # Nothing at step 6 or later.
    assert ckpt_lib.latest_checkpoint(model_dir) == newest
    assert not [n for n in os.listdir(model_dir) if n.startswith(".")]  # No temporary or moved-aside folders.

    message = str(error)
    assert f"step {POISONED_STEP}" in message
    for cause in ("learning rate", "precision", "corrupt input", "--skip_nonfinite_steps"):
        assert cause in message, cause

    # The kept checkpoint is exactly the clean run's state after 4 steps: finite, untouched by the NaN batch.
    stored = load_arrays(newest)
    assert all_finite(stored)
    assert_same_arrays(stored, load_arrays(os.path.join(clean_run, "ckpt-4")))

    # And it restores into a model rebuilt from its own metadata, which then computes finite features.
    model, meta = hub_module.model_from_checkpoint(newest)
    assert meta["step"] == 4
    for part, holder in model.checkpoint_parts().items():
        for index, variable in enumerate(holder.variables):
            np.testing.assert_array_equal(np.asarray(variable.numpy()), stored[f"{part}/{index}"], err_msg=f"{part}/{index}")
    images = np.random.default_rng(1).uniform(size=(4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    features = np.asarray(model(images, training=False)["final_avg_pool"])
    assert features.shape[0] == 4 and np.all(np.isfinite(features))


# ------------------------------------------------------------------ Skip and count
def test_skip_nonfinite_steps_skips_the_poisoned_batch_once(image_folder, clean_run, tmp_path, monkeypatch):
    poison_training_batches(monkeypatch)
    model_dir = str(tmp_path / "run")
    config = run_config(image_folder, model_dir, checkpoint_steps=1, skip_nonfinite_steps=True)
    recorder = helpers.StepLogs()

    trainer.train(config, callbacks=[recorder])

    # Every step ran and was checkpointed; the poisoned one was counted once, when it happened.
    assert ckpt_lib.checkpoint_steps(model_dir) == list(range(1, TRAIN_STEPS + 1))
    assert recorder.series("nonfinite_steps") == [0.0] * POISONED_BATCH + [1.0] * (TRAIN_STEPS - POISONED_BATCH)
    assert all(np.isfinite(v) for v in recorder.series("total_loss"))  # Skipped losses stay out of the means.

    def arrays(step, run=model_dir):
        return load_arrays(os.path.join(run, f"ckpt-{step}"))

    # Before the poison the run is the clean run (up to float rounding: the skipping train step
    # is another graph, which oneDNN may fuse differently).
    assert_same_arrays(arrays(POISONED_BATCH), arrays(POISONED_BATCH, clean_run), rtol=1e-5, atol=1e-6)

    # The skipped step changed nothing but the step counter: weights, batch-norm statistics
    # (the NaN forward pass updated them; the skip restores them) and optimizer slots.
    before, after = arrays(POISONED_STEP - 1), arrays(POISONED_STEP)
    assert sorted(before) == sorted(after)
    changed = [key for key in before if not np.array_equal(before[key], after[key])]
    assert len(changed) == 1 and changed[0].startswith("optimizer/"), changed
    assert (int(before[changed[0]]), int(after[changed[0]])) == (POISONED_STEP - 1, POISONED_STEP)

    # The run went on training: the final weights are finite, and differ from the clean run's
    # (they saw one batch fewer).
    final, clean_final = arrays(TRAIN_STEPS), arrays(TRAIN_STEPS, clean_run)
    assert all_finite(final)
    model_keys = [k for k in final if not k.startswith("optimizer/")]
    assert any(not np.array_equal(final[k], clean_final[k]) for k in model_keys)
    assert any(not np.array_equal(final[k], after[k]) for k in model_keys)  # Steps 7..10 did update it.


# ------------------------------------------------------------------ CheckpointAndStop alone
class _FakeOptimizer:
    def __init__(self):
        self.iterations = np.int64(0)


class _FakeModel:
    """What CheckpointAndStop reads: optimizer.iterations and stop_training."""

    def __init__(self):
        self.optimizer = _FakeOptimizer()
        self.stop_training = False


def _drive(callback, model, steps_and_logs):
    """Feeds `(global step, logs)` batch ends until the callback stops the run; returns the steps run."""
    callback.on_train_begin()
    ran = []
    for step, logs in steps_and_logs:
        model.optimizer.iterations = np.int64(step)
        callback.on_train_batch_end(step - 1, logs)
        ran.append(step)
        if model.stop_training:
            break
    callback.on_train_end()
    return ran


def _record_saves(monkeypatch):
    saved = []
    monkeypatch.setattr(ckpt_lib, "save_checkpoint",
                        lambda directory, step, *args, **kwargs: saved.append(step) or f"{directory}/ckpt-{step}")
    return saved


@pytest.mark.parametrize("bad_logs", [
    {"total_loss": float("nan"), "loss": 1.0},
    {"total_loss": 1.0, "loss": float("inf")},
    {"total_loss": np.float32("-inf")},
])
def test_checkpoint_and_stop_never_saves_non_finite_logs(tmp_path, monkeypatch, bad_logs):
    saved = _record_saves(monkeypatch)
    model = _FakeModel()
    stopper = callbacks_lib.CheckpointAndStop(str(tmp_path), every_steps=2, total_steps=10)
    stopper.set_model(model)
    good = {"total_loss": 2.5, "loss": 2.5}

    ran = _drive(stopper, model, [(1, good), (2, good), (3, good), (4, bad_logs), (5, good), (6, good)])

    assert ran == [1, 2, 3, 4]  # Stopped right at the bad step.
    assert model.stop_training
    assert saved == [2]  # Step 4 is a checkpoint step, and on_train_end would save too: neither did.
    assert stopper.nonfinite_step == 4
    assert stopper.last_path == f"{tmp_path}/ckpt-2"


def test_checkpoint_and_stop_saves_finite_runs_to_the_end(tmp_path, monkeypatch):
    """The control for the test above: the same driving with finite logs saves every 2 steps."""
    saved = _record_saves(monkeypatch)
    model = _FakeModel()
    stopper = callbacks_lib.CheckpointAndStop(str(tmp_path), every_steps=2, total_steps=5)
    stopper.set_model(model)

    ran = _drive(stopper, model, [(s, {"total_loss": 1.0}) for s in range(1, 8)])

    assert ran == [1, 2, 3, 4, 5]
    assert saved == [2, 4, 5]  # The last step is saved although 5 is not a multiple of 2.
    assert stopper.nonfinite_step is None


# ------------------------------------------------------------------ run.py's exit
def test_run_py_turns_the_error_into_one_error_line_and_exit_1(tmp_path, monkeypatch, capsys):
    """The command line ends a NaN run with status 1 and a `run.py: error:` line naming step and checkpoint."""
    from absl import flags

    from tf_simclr import jobs
    from tf_simclr.cli import train as cli_train

    checkpoint = str(tmp_path / "ckpt-4")

    def nan_run(config, strategy, source):
        raise callbacks_lib.NonFiniteLossError(POISONED_STEP, checkpoint)

    monkeypatch.setattr(jobs, "prepare", lambda config: (None, None))  # The checks passed.
    monkeypatch.setattr(jobs, "execute", nan_run)
    monkeypatch.setattr(sys, "argv", ["run.py"])
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["run.py", "--use_tpu=False", f"--model_dir={tmp_path / 'run'}"])
    try:
        with pytest.raises(SystemExit) as exited:
            cli_train.main(["run.py"])
    finally:
        flags.FLAGS.unparse_flags()

    assert exited.value.code == 1
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run.py: error:")]
    assert len(error_lines) == 1
    assert f"at step {POISONED_STEP}" in error_lines[0] and checkpoint in error_lines[0]
