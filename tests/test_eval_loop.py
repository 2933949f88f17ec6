"""The eval loop scores every checkpoint a (simulated) trainer writes, in order, then stops."""

import json
import os
import threading
import time

import numpy as np
import pytest

from tf_simclr import checkpoint as ckpt_lib
from tf_simclr import data as data_lib
from tf_simclr import eval_loop
from tf_simclr import train as train_lib

from tests.test_train import tiny_config

# The class each checkpoint's supervised head always predicts (kernel 0, one-hot bias).
PREDICTED = {10: 3, 20: 7, 30: 0}


def _write(model, model_dir, step):
    kernel, bias = model.supervised_head.weights[:2]
    kernel.assign(np.zeros(kernel.shape, "float32"))
    bias.assign(np.eye(bias.shape[0], dtype="float32")[PREDICTED[step]])
    ckpt_lib.save_checkpoint(model_dir, step, model, meta={"writer": "test"}, max_to_keep=0)


@pytest.mark.slow
def test_loop_evaluates_existing_and_new_checkpoints_in_order_then_stops(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config = tiny_config(fashion_mnist_dir, model_dir, train_steps=30, eval_steps=1, eval_batch_size=64)
    assert eval_loop.final_step(config) == 30
    writer_model = train_lib.create_model(config, 10, train_lib.make_plan(config, 1000))
    _write(writer_model, model_dir, 10)  # Present before the loop starts.

    def trainer():
        for step in (20, 30):
            time.sleep(1.0)
            _write(writer_model, model_dir, step)

    thread = threading.Thread(target=trainer)
    thread.start()
    started = time.monotonic()
    results = eval_loop.eval_loop(config, timeout_secs=60, poll_secs=0.2)
    thread.join()
    assert time.monotonic() - started < 50  # Stopped at the final step, not by the timeout.

    # Independent check: a head that always predicts class c scores the share of c among the eval images.
    source = data_lib.load_source("fashion_mnist", fashion_mnist_dir)
    _, labels = next(iter(data_lib.build_dataset(source, "test", batch_size=64, is_training=False, mode="eval", image_size=16)))
    labels = np.asarray(labels)
    assert [r["global_step"] for r in results] == [10, 20, 30]
    for r in results:
        assert r["top_1_accuracy"] == pytest.approx(np.mean(labels == PREDICTED[r["global_step"]]), abs=1e-6)
        with open(os.path.join(model_dir, f"result_{r['global_step']}.json")) as f:
            assert json.load(f)["top_1_accuracy"] == pytest.approx(r["top_1_accuracy"])
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["global_step"] == 30


def test_loop_stops_after_the_timeout_without_new_checkpoints(tmp_path):
    config = tiny_config("/nonexistent", str(tmp_path / "run"), train_steps=100)
    os.makedirs(config.train.model_dir)
    for step in (40, 20):  # Unsorted on purpose.
        os.makedirs(os.path.join(config.train.model_dir, f"ckpt-{step}"))
        open(os.path.join(config.train.model_dir, f"ckpt-{step}", ckpt_lib.META_FILE), "w").write("{}")
    os.makedirs(os.path.join(config.train.model_dir, ".tmp-ckpt-60-x"))  # Half-written: never evaluated.
    seen = []
    started = time.monotonic()
    results = eval_loop.eval_loop(
        config, timeout_secs=0.5, poll_secs=0.05,
        evaluate_fn=lambda path: seen.append(path) or {"global_step": int(path.rsplit("-", 1)[1])},
    )
    assert 0.5 <= time.monotonic() - started < 5
    assert [r["global_step"] for r in results] == [20, 40]
    assert [os.path.basename(p) for p in seen] == ["ckpt-20", "ckpt-40"]


def test_loop_rejects_bad_intervals(tmp_path):
    config = tiny_config("/nonexistent", str(tmp_path / "run"))
    with pytest.raises(ValueError, match="poll_secs=0"):
        eval_loop.eval_loop(config, poll_secs=0, last_step=1, evaluate_fn=lambda p: {})
