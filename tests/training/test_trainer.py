"""End to end on real Fashion-MNIST (training.trainer): pretraining learns, and an interrupted run resumes."""

import json
import os

import keras
import numpy as np
import pytest

import helpers
from tf_simclr.augment.spec import spec_from_config
from tf_simclr.data import pipeline, sources
from tf_simclr.evaluation import supervised
from tf_simclr.losses import ntxent
from tf_simclr.models import build_model
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer

pytestmark = pytest.mark.slow

KNN_EXAMPLES = 500


def fashion_config(data_dir, model_dir, **train):
    """The run of this file: ResNet-18/8 at 16 px, batch 32, 80 steps, on Fashion-MNIST (train -> test)."""
    values = dict(export_dir=model_dir + "_exports", export_at_end=True, train_batch_size=32, train_steps=80,
                  checkpoint_steps=20, learning_rate=1.0, weight_decay=1e-4, temperature=0.5, seed=1)
    values.update(train)
    return helpers.tiny_config("fashion_mnist", model_dir, data={"data_dir": data_dir, "eval_split": "test",
                                                                 "color_jitter_strength": 0.5}, **values)


class StepRecorder(helpers.StepLogs):
    """StepLogs, plus the first step trained, the kNN monitor's epoch-end points, and a simulated crash."""

    def __init__(self, crash_at=None):
        super().__init__()
        self.crash_at = crash_at
        self.first_step = None
        self.epoch_logs = []

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if "knn_top_1" in (logs or {}):
            self.epoch_logs.append({"step": int(self.model.optimizer.iterations.numpy()), "knn_top_1": logs["knn_top_1"]})

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.crash_at is not None and self.steps[-1][0] >= self.crash_at:
            raise KeyboardInterrupt("simulated crash")


def _monitor_subset(source, split):
    """The kNN monitor's examples, drawn independently of it: the first 500 labelled eval views of the split."""
    images, labels = [], []
    for x, y in pipeline.eval_dataset(source, split, 16, batch_size=250):
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(map(len, labels)) >= KNN_EXAMPLES:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    keep = labels >= 0
    return images[keep][:KNN_EXAMPLES], labels[keep][:KNN_EXAMPLES]


def _numpy_knn_accuracy(model, train, test, k=200, temperature=0.1, num_classes=10):
    """Weighted cosine kNN (InstDisc) in NumPy on the model's `final_avg_pool` features."""
    def features(images):
        f = np.concatenate([np.asarray(model(images[i:i + 250], training=False)["final_avg_pool"])
                            for i in range(0, len(images), 250)]).astype(np.float64)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    bank, queries = features(train[0]), features(test[0])
    similarity = queries @ bank.T
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
    votes = np.zeros((len(queries), num_classes))
    np.add.at(votes, (np.repeat(np.arange(len(queries)), k), train[1][nearest].reshape(-1)), weights.reshape(-1))
    return float(np.mean(np.argmax(votes, axis=1) == test[1]))


def test_pretraining_learns_and_resumes_after_a_crash(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config = fashion_config(fashion_mnist_dir, model_dir)

    crashing = StepRecorder(crash_at=50)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, callbacks=[crashing])
    assert ckpt_lib.checkpoint_steps(model_dir) == [20, 40]
    assert not [n for n in os.listdir(model_dir) if n.startswith(".tmp")]

    resumed = StepRecorder()
    monitored = fashion_config(fashion_mnist_dir, model_dir, knn_monitor_examples=KNN_EXAMPLES)  # Plus a kNN curve.
    model = trainer.train(monitored, callbacks=[resumed])
    # The kNN monitor reported a learning curve point at each checkpoint period of the resumed run.
    assert [e["step"] for e in resumed.epoch_logs] == [60, 80]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(model_dir, "eval")))
    assert resumed.first_step == 40  # Step count restored, not restarted.
    assert int(model.optimizer.iterations.numpy()) == 80
    assert ckpt_lib.checkpoint_steps(model_dir)[-1] == 80

    # The monitor's last point is the trained encoder's kNN accuracy, computed here independently (same
    # examples, NumPy kNN), and it beats a randomly initialized encoder of the same shape on them.
    source = sources.load_source("fashion_mnist", fashion_mnist_dir)
    train_subset, test_subset = _monitor_subset(source, "train"), _monitor_subset(source, "test")
    trained_knn = _numpy_knn_accuracy(model, train_subset, test_subset)
    assert resumed.epoch_logs[-1]["knn_top_1"] == pytest.approx(trained_knn, abs=2 / KNN_EXAMPLES)
    keras.utils.set_random_seed(0)
    random_knn = _numpy_knn_accuracy(build_model(config.model), train_subset, test_subset)
    print(f"kNN top-1: trained {trained_knn:.3f}, random init {random_knn:.3f}")
    assert trained_knn > random_knn + 0.05, (trained_knn, random_knn)

    # Learning: the training loss of the first 20 steps vs the last 20 (Keras logs running means per epoch).
    assert resumed.series("contrast_loss")[-1] < crashing.series("contrast_loss")[19] - 0.3
    assert 0 < resumed.series("learning_rate")[-1] < crashing.series("learning_rate")[0]  # Cosine decay continued.
    # And on fixed augmented pairs of test images (8 groups of 32 pairs, as in training), the trained encoder
    # ranks each view's positive far higher among the group's 63 other views (NumPy cosines) than a randomly
    # initialized one of the same shape, and its NT-Xent loss is lower. (Top-1 accuracy over so few anchors is
    # too noisy to compare: 0.11-0.15 trained vs 0.05-0.09 random; the mean rank is 13.9-15.0 vs 28.1-29.0,
    # chance 31, in 5 runs.)
    views = pipeline.Views("pretrain", spec_from_config(config.data, config.model.image_size))
    pairs, _ = next(iter(pipeline.build_dataset(source, "test", views, 256, seed=0)))
    groups = [np.concatenate([pairs[i * 32:(i + 1) * 32, ..., :3], pairs[i * 32:(i + 1) * 32, ..., 3:]], 0)
              for i in range(8)]

    def pair_scores(m):
        ranks, losses = [], []
        for group in groups:
            z = m(group, training=False)["proj_head_output"]
            losses.append(float(ntxent.contrastive_loss(z, temperature=0.5)[0]))
            z = np.asarray(z, np.float64)
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            similarity = z @ z.T
            np.fill_diagonal(similarity, -np.inf)
            positive = similarity[np.arange(64), (np.arange(64) + 32) % 64]
            ranks.append(np.sum(similarity > positive[:, None], axis=1))  # 0: the positive is the nearest.
        return np.mean(np.concatenate(ranks)), np.mean(losses)

    trained_rank, trained_loss = pair_scores(model)
    random_rank, random_loss = pair_scores(build_model(config.model))
    assert trained_rank < 0.7 * random_rank and trained_loss < random_loss - 0.4, (trained_rank, random_rank,
                                                                                   trained_loss, random_loss)

    # The run's bookkeeping: flags.json, TensorBoard events with the reference's summary names.
    with open(os.path.join(model_dir, "flags.json")) as f:
        assert json.load(f)["train"]["train_steps"] == 80
    events = os.listdir(os.path.join(model_dir, "train"))
    assert any(name.startswith("events.out.tfevents") for name in events)

    # Pure pretraining still exports (the reference's never does): one module, at the last step.
    assert os.listdir(model_dir + "_exports") == ["80"]
    assert os.path.exists(os.path.join(model_dir + "_exports", "80", "saved_model.pb"))

    # The linear head trained alongside (--lineareval_while_pretraining): its accuracy on 16 batches of the
    # test split, against the same head's predictions computed here. After 80 steps it scored 18-42% in 12 runs,
    # so 1,024 images: on 256, 18% (47 right) was not distinguishable from chance at the 1e-6 tail.
    scored = config.replace(train={"eval_steps": 16, "eval_batch_size": 64})
    results = supervised.evaluate_checkpoint(scored, model, source=source)
    assert results["global_step"] == 80
    images, labels = next(iter(pipeline.eval_dataset(source, "test", 16, batch_size=1024)))
    predicted = np.argmax(np.asarray(model(images, training=False)["logits_sup"]), axis=1)
    assert results["top_1_accuracy"] == pytest.approx(float(np.mean(predicted == labels.numpy())), abs=1e-6)
    assert helpers.beats_chance(results["top_1_accuracy"], 1024, 10), results  # The head learnt from frozen features.
    assert os.path.exists(os.path.join(model_dir, "result_80.json"))


def test_finished_run_does_not_train_again(fashion_mnist_dir, tmp_path):
    model_dir = str(tmp_path / "done")
    config = fashion_config(fashion_mnist_dir, model_dir, train_steps=4, checkpoint_steps=2, export_at_end=False)
    trainer.train(config)
    recorder = StepRecorder()
    trainer.train(config, callbacks=[recorder])
    assert recorder.steps == [] and ckpt_lib.checkpoint_steps(model_dir) == [2, 4]
