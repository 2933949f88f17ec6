"""The eval loop scores every checkpoint a (simulated) trainer writes, in order, then stops: at the final step or the timeout.

Time is a fake clock injected into `eval_loop(..., clock=, sleep=)`: the
simulated trainer writes its checkpoints from inside `sleep`, so the test
controls exactly what the loop sees at every poll, and never waits.
"""

import json
import os

import numpy as np
import pytest

import helpers
from tf_simclr.data import pipeline, sources
from tf_simclr.evaluation import eval_loop
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer
from tf_simclr.optim.plan import make_plan

# The class each checkpoint's supervised head always predicts (kernel 0, one-hot bias).
PREDICTED = {10: 3, 20: 7, 30: 0}


class FakeTime:
    """`clock` and `sleep` for the loop: sleeping advances the clock, and runs `on_sleep` (the trainer)."""

    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.sleeps = []
        self.on_sleep = on_sleep

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


def _write(model, model_dir, step):
    kernel, bias = model.supervised_head.weights[:2]
    kernel.assign(np.zeros(kernel.shape, "float32"))
    bias.assign(np.eye(bias.shape[0], dtype="float32")[PREDICTED[step]])
    ckpt_lib.save_checkpoint(model_dir, step, model, meta={"writer": "test"}, max_to_keep=0)


@pytest.mark.slow
def test_loop_evaluates_existing_and_new_checkpoints_in_order_then_stops_at_the_final_step(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config = helpers.tiny_config("fashion_mnist", model_dir, data={"data_dir": fashion_mnist_dir, "eval_split": "test"},
                                 train_steps=30, eval_steps=1, eval_batch_size=64)
    assert eval_loop.final_step(config) == 30
    writer_model = trainer.compile_model(config, 10, make_plan(config, 1000))
    _write(writer_model, model_dir, 10)  # Present before the loop starts.

    def trainer_writes(sleeps):  # The trainer's next checkpoint every 5 polls (1 s of fake time).
        if sleeps in (5, 10):
            _write(writer_model, model_dir, 10 + 2 * sleeps)

    time = FakeTime(trainer_writes)
    source = sources.load_source("fashion_mnist", fashion_mnist_dir)
    results = eval_loop.eval_loop(config, timeout_secs=60, poll_secs=0.2, source=source, clock=time.clock,
                                  sleep=time.sleep)
    # Stopped right after scoring the final step (10 polls, 2 s of fake time), not by the 60 s timeout.
    assert time.sleeps == [0.2] * 10 and time.now < 60

    # Independent check: a head that always predicts class c scores the share of c among the eval images.
    _, labels = next(iter(pipeline.eval_dataset(source, "test", 16, batch_size=64)))
    labels = np.asarray(labels)
    assert [r["global_step"] for r in results] == [10, 20, 30]
    for r in results:
        assert r["top_1_accuracy"] == pytest.approx(np.mean(labels == PREDICTED[r["global_step"]]), abs=1e-6)
        with open(os.path.join(model_dir, f"result_{r['global_step']}.json")) as f:
            assert json.load(f)["top_1_accuracy"] == pytest.approx(r["top_1_accuracy"])
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["global_step"] == 30


def test_loop_stops_after_the_timeout_without_new_checkpoints(tmp_path):
    config = helpers.tiny_config("/nonexistent", str(tmp_path / "run"), train_steps=100)
    os.makedirs(config.train.model_dir)
    for step in (40, 20):  # Unsorted on purpose.
        os.makedirs(os.path.join(config.train.model_dir, f"ckpt-{step}"))
        open(os.path.join(config.train.model_dir, f"ckpt-{step}", ckpt_lib.META_FILE), "w").write("{}")
    os.makedirs(os.path.join(config.train.model_dir, ".tmp-ckpt-60-x"))  # Half-written: never evaluated.
    seen = []
    time = FakeTime()
    results = eval_loop.eval_loop(
        config, timeout_secs=1.0, poll_secs=0.25, last_step=100, clock=time.clock, sleep=time.sleep,
        evaluate_fn=lambda path: seen.append(path) or {"global_step": int(path.rsplit("-", 1)[1])},
    )
    # It waited out the timeout, polling, and stopped at the first poll past it.
    assert time.sleeps == [0.25] * 5 and 1.0 < time.now <= 1.0 + 0.25
    assert [r["global_step"] for r in results] == [20, 40]
    assert [os.path.basename(p) for p in seen] == ["ckpt-20", "ckpt-40"]


def test_a_new_checkpoint_restarts_the_timeout(tmp_path):
    config = helpers.tiny_config("/nonexistent", str(tmp_path / "run"), train_steps=100)
    model_dir = config.train.model_dir

    def trainer_writes(sleeps):  # One checkpoint after 3 polls (0.75 s): before the 1 s timeout ran out.
        if sleeps == 3:
            os.makedirs(os.path.join(model_dir, "ckpt-50"))
            open(os.path.join(model_dir, "ckpt-50", ckpt_lib.META_FILE), "w").write("{}")

    time = FakeTime(trainer_writes)
    results = eval_loop.eval_loop(config, timeout_secs=1.0, poll_secs=0.25, last_step=100, clock=time.clock,
                                  sleep=time.sleep, evaluate_fn=lambda path: {"global_step": 50, "at": time.now})
    assert results == [{"global_step": 50, "at": 0.75}]
    assert len(time.sleeps) == 3 + 5  # 5 more polls: the timeout counts from the new checkpoint.


def test_loop_rejects_bad_intervals(tmp_path):
    config = helpers.tiny_config("/nonexistent", str(tmp_path / "run"))
    with pytest.raises(ValueError, match="poll_secs=0"):
        eval_loop.eval_loop(config, poll_secs=0, last_step=1, evaluate_fn=lambda p: {})
