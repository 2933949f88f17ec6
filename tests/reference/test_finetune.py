"""Fine-tuning a reference model: run.py with the reference's own --checkpoint, and the converted checkpoint.

Both train the whole encoder (`--fine_tune_after_block=-1`) on a tiny labelled set of 10 classes (the fixture's
classes, so its supervised head is restored as the reference restores it): every trainable variable moves, the
loss falls, and the frozen projection head (`--ft_proj_selector=0` reads the encoder) stays bit-identical.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import helpers
from tests.reference import fixture_files
from tf_simclr.config import config_from_dict
from tf_simclr.models import factory
from tf_simclr.optim.plan import make_plan
from tf_simclr.reference import weights
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import restore, trainer

pytestmark = pytest.mark.slow
NUM_CLASSES = 10
STEPS = 6
BATCH = 10  # Even: oneDNN in TF 2.21 has crashed ResNet training steps on odd batches.
FINETUNE_FLAGS = ["--train_mode=finetune", "--fine_tune_after_block=-1", "--optimizer=momentum",
                  "--learning_rate=1.0", "--weight_decay=0", "--warmup_epochs=0", f"--train_batch_size={BATCH}",
                  f"--train_steps={STEPS}", f"--checkpoint_steps={STEPS}", "--train_summary_steps=1",
                  "--export_at_end=false", "--global_bn=False", "--seed=0", "--use_tpu=False"]


def write_tinted_folder(root, classes=NUM_CLASSES, per_class=1, size=64, seed=0) -> str:
    """`train/` and `validation/` folders of noisy images whose colour tells the class: a set a few steps can learn."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, (classes, 3))
    for split in ("train", "validation"):
        for label in range(classes):
            folder = os.path.join(root, split, f"class{label}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(colours[label] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                with open(os.path.join(folder, f"{i}.png"), "wb") as f:
                    f.write(tf.io.encode_png(pixels).numpy())
    return root


@pytest.fixture(scope="module")
def tinted(tmp_path_factory):
    return write_tinted_folder(str(tmp_path_factory.mktemp("tinted")))


def _fine_tuned_model(model_dir):
    """The model a fine-tuning run saved (its config from flags.json, its newest checkpoint)."""
    with open(os.path.join(model_dir, "flags.json")) as f:
        config = config_from_dict(json.load(f))
    model = factory.model_from_config(config, NUM_CLASSES, plain_batch_norm=True)
    ckpt_lib.restore_checkpoint(model_dir, model)
    return model


def _assert_trained_from_the_reference(model):
    """Every trainable variable moved from the reference's value; frozen ones kept it, bit for bit."""
    reference = weights.open_reference(fixture_files.SAVED_MODEL)
    trainable = {id(v) for v in model.trainable_weights}
    moved, kept = [], []
    for path, target in reference.targets.items():
        variable = weights.target_variable(model, target)
        same = np.array_equal(np.asarray(variable), reference.variables.value(path))
        (kept if same else moved).append((target.part, id(variable) in trainable, variable.path))
    assert not [m for m in kept if m[1]], [m for m in kept if m[1]][:5]  # No trainable variable stayed.
    assert {part for part, _, _ in kept} <= {"projection_head"}  # Encoder statistics moved too; the head is frozen.
    assert len(kept) == len(model.projection_head.weights) > 0
    assert {part for part, _, _ in moved} == {"encoder", "supervised_head"}
    assert len(trainable) == len([m for m in moved if m[1]])


def test_run_py_fine_tunes_from_the_reference_savedmodel(tinted, tmp_path):
    """The reference's published flow: --checkpoint names its SavedModel."""
    model_dir = str(tmp_path / "ft")
    argv = [f"--dataset=folder:{tinted}", "--train_split=train", "--eval_split=validation", f"--model_dir={model_dir}",
            f"--checkpoint={fixture_files.SAVED_MODEL}", *fixture_files.flags_of_the_fixture(), *FINETUNE_FLAGS,
            "--learning_rate=0.1", "--deterministic"]  # At 1.0 the restored head's loss can jump on step 2.
    proc = subprocess.run([sys.executable, helpers.RUN_PY, *argv], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(encoder, projection_head, supervised_head)" in proc.stderr  # Its 10-class head was restored.
    with open(os.path.join(model_dir, "learning_curve.json")) as f:
        losses = [row["sup_loss"] for row in json.load(f)["train"]]
    assert len(losses) == STEPS and losses[-1] < losses[0] and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    _assert_trained_from_the_reference(_fine_tuned_model(model_dir))


def test_converted_checkpoint_fine_tunes(converted, tinted, tmp_path):
    """The converted tf_simclr checkpoint as --checkpoint (its encoder; the run's own head starts fresh).

    A fresh head learns slowly from this random encoder, and its per-step losses are noisy (one crop of each of
    10 images), so float rounding alone can decide a short run: at 0.3 for 8 steps the half-means of seeds 0-3
    dropped 0.06-0.14 with two-pass batch statistics, but -0.01-0.11 with one-pass ones (two seeds failed). So: a
    fixed stream, 0.1, 16 steps, and the mean of the last 4 losses below that of the first 4. Measured for seeds
    0-3: drops of 0.14-0.20 (one-pass statistics) and 0.06-0.23 (two-pass); at lr 0 the check fails (2.305 -> 2.352).
    """
    config = helpers.tiny_config(
        f"folder:{tinted}", str(tmp_path / "ft"), model=_fixture_model_fields(), train_mode="finetune",
        checkpoint=converted["model_dir"], fine_tune_after_block=-1, optimizer="momentum", learning_rate=0.1,
        weight_decay=0.0, train_batch_size=BATCH, train_steps=16, checkpoint_steps=16, seed=0, deterministic=True)
    steps = helpers.StepLogs()
    model = trainer.train(config, callbacks=[steps])
    losses = steps.series("sup_loss")
    assert len(losses) == 16 and losses[-1] < losses[0] and np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    _assert_trained_from_the_reference(model)


def _fixture_model_fields():
    flags = fixture_files.reference_flags()
    return {**{name: flags[name] for name in fixture_files.ARCHITECTURE_FLAGS}, "global_bn": False}


# ------------------------------------------------------------------ The supervised head at the start of a run
def _restored(tmp_path, num_classes, **train):
    config = helpers.tiny_config("folder:/unused", str(tmp_path / "run"), model=_fixture_model_fields(),
                                 train_mode="finetune", checkpoint=fixture_files.MODEL_DIR, **train)
    model = trainer.compile_model(config, num_classes, make_plan(config, 100))
    assert restore.restore(model, config) == 0  # Weights only: the run starts at step 0, as the reference's.
    return model


def _head_of_the_reference():
    reference = weights.open_reference(fixture_files.MODEL_DIR)
    return [reference.variables.value(reference.layout.supervised[name]) for name in ("kernel", "bias")]


def test_head_is_restored_when_its_classes_match(tmp_path):
    model = _restored(tmp_path, NUM_CLASSES)
    for variable, want in zip(model.supervised_head.linear_layer.weights, _head_of_the_reference()):
        np.testing.assert_array_equal(np.asarray(variable), want)


def test_zero_init_logits_layer_zeroes_the_restored_head(tmp_path):
    model = _restored(tmp_path, NUM_CLASSES, zero_init_logits_layer=True)
    assert all(not np.any(np.asarray(v)) for v in model.supervised_head.trainable_weights)
    kernel = model.encoder.get_layer("initial_conv1").kernel  # The encoder still comes from the reference.
    reference = weights.open_reference(fixture_files.MODEL_DIR)
    np.testing.assert_array_equal(np.asarray(kernel), reference.variables.value(reference.layout.stem[0].path("kernel")))


def test_head_of_other_classes_starts_fresh(tmp_path, caplog):
    with caplog.at_level("INFO", logger="tf_simclr"):
        model = _restored(tmp_path, 3)
    assert tuple(model.supervised_head.linear_layer.kernel.shape) == (256, 3)
    assert "starts fresh: it has 10 classes from 256 features, this run's has 3 classes" in caplog.text


# ------------------------------------------------------------------ Every --fine_tune_after_block
def _stage_variables(model, config, k):
    """ids of the variables of encoder stages 0..k (what --fine_tune_after_block=k freezes)."""
    from tf_simclr.models import backbones

    stages = backbones.encoder_stages(config.model, model.encoder)
    return {id(v) for stage in stages[: k + 1] for layer in stage for v in layer.weights}


@pytest.mark.parametrize("block", [-1, 0, 1, 2, 3, 4])
def test_every_fine_tune_after_block_trains_what_follows_it(tmp_path, block):
    """One step from the reference's weights: stages 0..block keep them bit for bit (statistics too); the rest moves."""
    config = helpers.tiny_config("folder:/unused", str(tmp_path / "run"), model=_fixture_model_fields(),
                                 train_mode="finetune", checkpoint=fixture_files.SAVED_MODEL,
                                 fine_tune_after_block=block, optimizer="momentum", learning_rate=0.1,
                                 weight_decay=0.0)
    model = trainer.compile_model(config, NUM_CLASSES, make_plan(config, 100))
    restore.restore(model, config)
    reference = weights.open_reference(fixture_files.SAVED_MODEL)
    encoder_targets = [(path, weights.target_variable(model, t)) for path, t in reference.targets.items()
                       if t.part == "encoder"]
    for path, variable in encoder_targets:  # Loaded before training.
        np.testing.assert_array_equal(np.asarray(variable), reference.variables.value(path), err_msg=path)
    frozen = _stage_variables(model, config, block)
    trainable = {id(v) for v in model.trainable_weights}
    assert not frozen & trainable
    images = fixture_files.recorded()["images"]
    model.train_step((tf.constant(images), tf.constant([0, 1, 2, 3])))  # Eager: no tracing of the big step.
    moved = {id(v) for path, v in encoder_targets
             if not np.array_equal(np.asarray(v), reference.variables.value(path))}
    encoder_ids = {id(v) for _, v in encoder_targets}
    assert moved & frozen == set()
    if block == 4:
        assert moved == set() and frozen == encoder_ids  # Linear evaluation: the whole encoder is fixed.
    else:
        # Every trainable encoder variable moved; unfrozen batch norms updated their statistics too.
        assert trainable & encoder_ids <= moved and moved == encoder_ids - frozen
    head = model.supervised_head.linear_layer.kernel
    assert not np.array_equal(np.asarray(head), _head_of_the_reference()[0])


def test_continued_pretraining_starts_from_the_reference(tmp_path):
    """--train_mode=pretrain --checkpoint=<reference model_dir>: every part, the linear-eval head included."""
    config = helpers.tiny_config("folder:/unused", str(tmp_path / "run"), model=_fixture_model_fields(),
                                 train_mode="pretrain", checkpoint=fixture_files.MODEL_DIR)
    model = trainer.compile_model(config, NUM_CLASSES, make_plan(config, 100))
    assert restore.restore(model, config) == 0
    reference = weights.open_reference(fixture_files.MODEL_DIR)
    for path, target in reference.targets.items():
        np.testing.assert_array_equal(np.asarray(weights.target_variable(model, target)),
                                      reference.variables.value(path), err_msg=path)
    outputs = model(fixture_files.recorded()["images"], training=False)
    fixture_files.assert_outputs_equal_recorded(outputs)
