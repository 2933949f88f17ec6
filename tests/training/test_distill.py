"""`--train_mode=distill` end to end: a frozen teacher, a student that learns it, and everything around training.

One small teacher (a 20-step Fashion-MNIST run with a linear head) serves every test.
The student's numbers are checked against independent computations: the teacher's
weights against its own checkpoint, the held-out KL to the teacher against a NumPy
computation from both models' logits, the export against the trained model, 2 replicas against 1.
"""

import hashlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr import jobs
from tf_simclr.data import pipeline, sources, subsets
from tf_simclr.export import load
from tf_simclr.models import teacher as teacher_lib
from tf_simclr.optim.optimizers import build_optimizer
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer

pytestmark = pytest.mark.slow

STEPS = 24
# Students of the tests that check mechanics rather than learning: a micro encoder under the ResNet teacher.
MICRO = helpers.MICRO_MODEL


def _fashion(data_dir, model_dir, **train):
    values = dict(train_batch_size=32, learning_rate=0.1, optimizer="momentum", weight_decay=0.0, seed=1,
                  deterministic=True)  # The same teacher and student in every run: the KL test has no luck in it.
    values.update(train)
    return helpers.tiny_config("fashion_mnist", model_dir, data={"data_dir": data_dir, "eval_split": "test"},
                               **values)


@pytest.fixture(scope="module")
def teacher_dir(fashion_mnist_dir, tmp_path_factory):
    """A pretraining run whose linear head (trained alongside) is the teacher's classifier."""
    model_dir = str(tmp_path_factory.mktemp("teacher") / "run")
    trainer.train(_fashion(fashion_mnist_dir, model_dir, train_steps=20, checkpoint_steps=20, learning_rate=1.0,
                           optimizer="lars", temperature=0.5))
    return model_dir


def _digest(folder):
    with open(os.path.join(ckpt_lib.resolve_checkpoint(folder), ckpt_lib.VARIABLES_FILE), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _held_out(data_dir, n=256):
    source = sources.load_source("fashion_mnist", data_dir)
    images, _ = next(iter(pipeline.eval_dataset(source, "test", 16, batch_size=n)))
    return images.numpy()


def _kl_to_teacher(model, images):
    """Mean KL(teacher || student) of the class distributions (tau = 1), in float64 NumPy.

    Not argmax agreement: a 20-step teacher calls most images one class, and a student
    that starts out predicting that class already agrees with it by chance.
    """
    log_t = helpers.numpy_log_softmax(model.teacher(images, training=False))
    log_s = helpers.numpy_log_softmax(model(images, training=False)["logits_sup"])
    return float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)))


class AtStart(keras.callbacks.Callback):
    """The teacher's weights and the student's held-out KL to the teacher before the first step."""

    def __init__(self, images):
        super().__init__()
        self.images = images

    def on_train_begin(self, logs=None):
        self.teacher = [np.array(v.numpy()) for v in self.model.teacher.weights]
        self.kl = _kl_to_teacher(self.model, self.images)


@pytest.fixture(scope="module")
def distilled(fashion_mnist_dir, teacher_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("distill")
    digest = _digest(teacher_dir)
    images = _held_out(fashion_mnist_dir)
    config = _fashion(fashion_mnist_dir, str(work / "student"), train_mode="distill", teacher=teacher_dir,
                      train_steps=STEPS, checkpoint_steps=STEPS // 2, export_at_end=True,
                      export_dir=str(work / "exported"))
    start, logs = AtStart(images), helpers.StepLogs()
    model = trainer.train(config, callbacks=[start, logs])
    return {"config": config, "model": model, "start": start, "logs": logs, "images": images, "digest": digest,
            "work": work}


def test_teacher_weights_are_bit_identical_after_distillation(distilled, teacher_dir):
    model = distilled["model"]
    after = [np.array(v.numpy()) for v in model.teacher.weights]
    fresh, _ = teacher_lib.load_teacher(teacher_dir)  # What the teacher's own checkpoint holds.
    assert len(after) == len(fresh.weights) > 20
    for before, end, stored in zip(distilled["start"].teacher, after, fresh.weights):
        assert np.array_equal(before, end) and np.array_equal(end, stored.numpy())
    assert _digest(teacher_dir) == distilled["digest"]  # Its files are untouched.
    assert not {id(v) for v in model.teacher.weights} & {id(v) for v in model.trainable_variables}


def test_student_moves_towards_the_teacher_on_held_out_images(distilled):
    before, after = distilled["start"].kl, _kl_to_teacher(distilled["model"], distilled["images"])
    # Deterministic teacher and student: 0.1428 -> 0.0691 (0.48x) here, on every run. Before the streams were
    # seeded the ratio ranged 0.29-0.55 across runs (0.55 failed a 0.5 bound under load). A student that learns
    # nothing stays near 1x.
    assert before > 0.02 and after <= 0.7 * before, (before, after)
    series = distilled["logs"].series("distill_loss")
    assert len(series) == STEPS and np.mean(series[-4:]) < np.mean(series[:4])


def test_checkpoints_hold_the_student_only_and_resume(distilled, fashion_mnist_dir):
    config = distilled["config"]
    model_dir = config.train.model_dir
    assert ckpt_lib.checkpoint_steps(model_dir) == [STEPS // 2, STEPS]
    stored = set(np.load(os.path.join(model_dir, f"ckpt-{STEPS}", ckpt_lib.VARIABLES_FILE)).files)
    parts = {key.split("/")[0] for key in stored}
    assert parts == {"encoder", "projection_head", "supervised_head", "optimizer"}, parts
    assert ckpt_lib.read_meta(model_dir)["num_classes"] == 10  # The teacher's classes.
    resumed = trainer.train(config.replace(train={"train_steps": STEPS + 2, "export_at_end": False}))
    assert int(resumed.optimizer.iterations.numpy()) == STEPS + 2
    assert ckpt_lib.checkpoint_steps(model_dir)[-1] == STEPS + 2


def test_distilled_student_exports_and_reloads(distilled):
    exported = str(distilled["work"] / "exported")
    logits = load.load_encoder(exported, output_key="logits_sup")
    images = distilled["images"][:8]
    expected = np.asarray(distilled["model"](images, training=False)["logits_sup"])
    np.testing.assert_allclose(np.asarray(logits(images)), expected, rtol=1e-4, atol=1e-5)


def test_a_folder_without_labels_distils(image_folder, teacher_dir, tmp_path):
    flat = helpers.write_image_folder(str(tmp_path / "flat"), classes=("",), per_class=16)
    config = helpers.tiny_config(f"folder:{flat}", str(tmp_path / "student"), train_mode="distill",
                                 teacher=teacher_dir, train_steps=2, checkpoint_steps=2, optimizer="momentum",
                                 model=MICRO)
    source = sources.load_source(config.data.dataset)
    assert source.num_classes == 0 and not source.is_labeled("train")
    logs = helpers.StepLogs()
    model = trainer.train(config, callbacks=[logs])
    assert model.supervised_head.num_classes == 10 and len(logs.series("teacher_agreement")) == 2
    with pytest.raises(ValueError, match="--distill_label_weight=0.5 needs labels"):
        jobs.prepare(config.replace(train={"distill_label_weight": 0.5}))


def test_flag_problems_fail_before_any_work(image_folder, teacher_dir, tmp_path):
    model_dir = str(tmp_path / "never")
    base = helpers.tiny_config(f"folder:{image_folder}", model_dir, train_mode="distill", teacher=teacher_dir,
                               model=MICRO)
    pretrain_only = str(tmp_path / "no_head")
    trainer.train(helpers.tiny_config(f"folder:{image_folder}", pretrain_only, train_steps=2, checkpoint_steps=2,
                                      lineareval_while_pretraining=False, model=MICRO))
    cases = [
        (base, "predicts 10 classes, --dataset=folder:.* has 2"),
        (base.replace(train={"teacher": None}), "--train_mode=distill needs --teacher"),
        (base.replace(train={"teacher": str(tmp_path / "missing")}), "--teacher=.* does not exist"),
        (base.replace(train={"teacher": pretrain_only}), "has no supervised head"),
        (base.replace(train={"train_mode": "pretrain"}), "--teacher is the teacher of --train_mode=distill"),
        (base.replace(train={"distill_temperature": 0.0}), "--distill_temperature must be > 0"),
        (base.replace(train={"train_label_fraction": 0.1}), "--distill_label_weight=0 reads none"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=message):
            jobs.prepare(config.replace(run={"mode": "train"}))
    assert not os.path.exists(model_dir)


def test_label_share_keeps_only_the_chosen_labels():
    source = helpers.PositionSource(n=40, num_classes=4, size=2)
    config = helpers.tiny_config("arrays", "/unused", train_mode="distill", teacher="/unused",
                                 distill_label_weight=0.5, train_label_fraction=0.25, subset_seed=3)
    masked = subsets.labelled_subset(config.replace(data={"train_split": "train"}), source)
    chosen = subsets.subset_source(source, "train", fraction=0.25, seed=3).indices  # The same draw.
    labels = np.array([int(label) for _, label in masked.as_dataset("train").as_numpy_iterator()])
    expected = np.full(40, -1)
    expected[chosen] = np.arange(40)[chosen] % 4
    assert masked.num_examples("train") == 40 and len(chosen) == 12  # ceil(2.5) of each class's 10.
    np.testing.assert_array_equal(labels, expected)


def test_two_replicas_distil_like_one(teacher_dir, tmp_path, two_cpu_strategy):
    """Same init, same global batches: losses agree, and weights to 2% of how far 3 steps moved them."""
    from tf_simclr.models import factory

    config = helpers.tiny_config("synthetic", str(tmp_path / "unused"), train_mode="distill", teacher=teacher_dir,
                                 model={**MICRO, "global_bn": True})
    batches = np.random.default_rng(4).random((3, 8, 16, 16, 3), dtype=np.float32)
    init = str(tmp_path / "init")

    def run(strategy):
        with strategy.scope():
            teacher, _ = teacher_lib.load_teacher(teacher_dir)
            model = factory.model_from_config(config, 10, teacher=teacher)
            optimizer = build_optimizer("momentum", 0.5, momentum=0.9)
            model.compile(optimizer=optimizer)
            optimizer.build(model.trainable_variables)
        if ckpt_lib.latest_checkpoint(init):
            ckpt_lib.restore_checkpoint(init, model)
        else:
            ckpt_lib.save_checkpoint(init, 0, model)
        start = {k: np.array(v.numpy()) for k, v in ckpt_lib.named_variables(model).items()}
        per_replica = 8 // strategy.num_replicas_in_sync
        data = tf.data.Dataset.from_tensor_slices((batches, np.zeros(batches.shape[:2], "int32"))).unbatch()
        history = model.fit(strategy.distribute_datasets_from_function(lambda ctx: data.batch(per_replica)),
                            epochs=3, steps_per_epoch=1, verbose=0)
        end = {k: np.array(v.numpy()) for k, v in ckpt_lib.named_variables(model).items()}
        return start, end, history.history["distill_loss"]

    start, single, single_loss = run(tf.distribute.get_strategy())
    mirrored_start, mirrored, mirrored_loss = run(two_cpu_strategy)
    assert two_cpu_strategy.num_replicas_in_sync == 2
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-4)
    moved_keys = 0
    for key, expected in single.items():
        np.testing.assert_array_equal(mirrored_start[key], start[key])
        moved = np.max(np.abs(expected - start[key]))
        moved_keys += moved > 0
        np.testing.assert_allclose(mirrored[key], expected, rtol=0, atol=0.02 * moved + 1e-7, err_msg=key)
    assert moved_keys > 0.5 * len(single)
