"""End to end on real Fashion-MNIST: pretraining learns, and an interrupted run resumes."""

import json
import os

import keras
import numpy as np
import pytest

from tf_simclr import checkpoint as ckpt_lib
from tf_simclr import data as data_lib
from tf_simclr import objective
from tf_simclr import train as train_lib
from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig
from tf_simclr.model import build_model

pytestmark = pytest.mark.slow


def tiny_config(data_dir, model_dir, **train_overrides):
    train = dict(
        model_dir=model_dir, export_dir=model_dir + "_exports", train_batch_size=32, train_steps=80, checkpoint_steps=20, learning_rate=1.0,
        warmup_epochs=0, weight_decay=1e-4, temperature=0.5, seed=1, verbose=0,
    )
    train.update(train_overrides)
    return Config(
        model=ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=16, proj_out_dim=16, num_proj_layers=2),
        data=DataConfig(dataset="fashion_mnist", data_dir=data_dir, eval_split="test", image_size=16, use_blur=False, color_jitter_strength=0.5),
        train=TrainConfig(**train),
    )


class StepRecorder(keras.callbacks.Callback):
    def __init__(self, crash_at=None):
        super().__init__()
        self.crash_at = crash_at
        self.first_step = None
        self.logs = []
        self.epoch_logs = []

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if "knn_top_1" in (logs or {}):
            self.epoch_logs.append({"step": int(self.model.optimizer.iterations.numpy()), "knn_top_1": logs["knn_top_1"]})

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})
        if self.crash_at is not None and int(self.model.optimizer.iterations.numpy()) >= self.crash_at:
            raise KeyboardInterrupt("simulated crash")


def test_pretraining_learns_and_resumes_after_a_crash(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config = tiny_config(fashion_mnist_dir, model_dir)

    crashing = StepRecorder(crash_at=50)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(config, callbacks=[crashing])
    assert ckpt_lib.checkpoint_steps(model_dir) == [20, 40]
    assert not [n for n in os.listdir(model_dir) if n.startswith(".tmp")]

    resumed = StepRecorder()
    monitored = tiny_config(fashion_mnist_dir, model_dir, knn_monitor_examples=500)  # Same run, plus a kNN curve.
    model = train_lib.train(monitored, callbacks=[resumed])
    # The kNN monitor reported a learning curve point at each checkpoint period of the resumed run.
    assert [e["step"] for e in resumed.epoch_logs] == [60, 80]
    assert all(0.1 < e["knn_top_1"] <= 1.0 for e in resumed.epoch_logs)  # Above chance (10 classes).
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(model_dir, "eval")))
    assert resumed.first_step == 40  # Step count restored, not restarted.
    assert int(model.optimizer.iterations.numpy()) == 80
    assert ckpt_lib.checkpoint_steps(model_dir)[-1] == 80

    # Learning: the training loss of the first 20 steps vs the last 20 (Keras logs running means per epoch).
    assert resumed.logs[-1]["contrast_loss"] < crashing.logs[19]["contrast_loss"] - 0.3
    assert 0 < resumed.logs[-1]["learning_rate"] < crashing.logs[0]["learning_rate"]  # Cosine decay continued.
    # And on fixed augmented pairs of test images (8 groups of 32, as in training), the trained
    # encoder finds positives far more often than a randomly initialized one of the same shape.
    source = data_lib.load_source("fashion_mnist", fashion_mnist_dir)
    pairs, _ = next(iter(data_lib.build_dataset(source, "test", batch_size=256, is_training=True, mode="pretrain",
                                                 image_size=16, color_jitter_strength=0.5, seed=0)))
    views = np.concatenate([pairs[..., :3], pairs[..., 3:]], 0)

    def pair_scores(m):
        accuracies, losses = [], []
        for i in range(8):
            group = np.concatenate([views[i * 32:(i + 1) * 32], views[256 + i * 32:256 + (i + 1) * 32]], 0)
            loss, logits, labels = objective.contrastive_loss(m(group, training=False)["proj_head_output"], temperature=0.5)
            accuracies.append(float(objective.contrastive_metrics(logits, labels)[0]))
            losses.append(float(loss))
        return np.mean(accuracies), np.mean(losses)

    trained_acc, trained_loss = pair_scores(model)
    random_acc, random_loss = pair_scores(build_model(config.model))
    assert trained_acc > random_acc + 0.05 and trained_loss < random_loss - 0.4, (trained_acc, random_acc)

    # The run's bookkeeping: flags.json, TensorBoard events with the reference's summary names.
    with open(os.path.join(model_dir, "flags.json")) as f:
        assert json.load(f)["train"]["train_steps"] == 80
    events = os.listdir(os.path.join(model_dir, "train"))
    assert any(name.startswith("events.out.tfevents") for name in events)

    # Pure pretraining still exports (the reference's never does): one module, at the last step.
    assert os.listdir(model_dir + "_exports") == ["80"]
    assert os.path.exists(os.path.join(model_dir + "_exports", "80", "saved_model.pb"))

    results = train_lib.evaluate_checkpoint(config, model)
    assert results["global_step"] == 80 and 0.0 <= results["top_1_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(model_dir, "result_80.json"))


def test_finished_run_does_not_train_again(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "done")
    config = tiny_config(fashion_mnist_dir, model_dir, train_steps=4, checkpoint_steps=2)
    train_lib.train(config)
    recorder = StepRecorder()
    train_lib.train(config, callbacks=[recorder])
    assert recorder.logs == [] and ckpt_lib.checkpoint_steps(model_dir) == [2, 4]
