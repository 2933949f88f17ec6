"""KERAS_BACKEND=jax trains the same model as TensorFlow, and their checkpoints interchange.

The pytest process is TensorFlow; the JAX side runs in a subprocess
(`tests/training/jax_worker.py`, or `run.py`) with KERAS_BACKEND=jax. Both build
the model and optimizer with `training.trainer.compile_model` (LARS, warm-up +
cosine schedule, weight decay) from one config, start from the same checkpoint
and train on the same batches.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.config import Config, DataConfig, TrainConfig
from tf_simclr.export import exports_dir, hub_module, load
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer
from tf_simclr.optim.plan import make_plan

SIZE, BATCH, STEPS, EXAMPLES, CLASSES = 16, 8, 3, 24, 2
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_worker.py")

pytest.importorskip("jax")


def _jax_env(devices: int = 1):
    """A JAX subprocess's environment; `devices` > 1 splits the CPU into that many XLA devices."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    if devices > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _config(model_dir: str) -> Config:
    return Config(
        model=helpers.tiny_model_config(image_size=SIZE, global_bn=True),
        data=DataConfig(dataset="synthetic"),
        # A large rate so that LARS visibly moves the weights in 3 steps; decay in the optimizer and the loss.
        train=TrainConfig(model_dir=model_dir, train_batch_size=BATCH, train_steps=STEPS, learning_rate=20.0,
                          warmup_epochs=1 / 3, weight_decay=1e-3, optimizer="lars", lineareval_while_pretraining=True),
    )


def _model(config):
    return trainer.compile_model(config, CLASSES, make_plan(config, EXAMPLES))


def _features(model, images):
    return np.asarray(model(images, training=False)["final_avg_pool"])


def _arrays(folder):
    with np.load(os.path.join(folder, ckpt_lib.VARIABLES_FILE)) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """TensorFlow trains in this process, JAX in a worker, from one checkpoint on the same batches.

    The JAX worker splits each batch over 2 devices (keras.distribution.DataParallel):
    one global array per step, so negatives and batch-norm statistics are global
    without any gather, and TensorFlow on one replica must give the same numbers.
    """
    work = str(tmp_path_factory.mktemp("jax_vs_tf"))
    config = _config(os.path.join(work, "tf_init"))
    rng = np.random.default_rng(11)
    images = rng.random((STEPS, BATCH, SIZE, SIZE, 6), dtype=np.float32)
    labels = rng.integers(0, CLASSES, (STEPS, BATCH)).astype("int32")
    probe = rng.random((4, SIZE, SIZE, 3), dtype=np.float32)
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    np.savez(os.path.join(work, "batches.npz"), images=images, labels=labels, probe=probe,
             num_examples=EXAMPLES, num_classes=CLASSES)

    keras.utils.set_random_seed(5)
    model = _model(config)
    meta = {"config": config.to_dict(), "dataset": "synthetic", "num_classes": CLASSES}
    init = ckpt_lib.save_checkpoint(os.path.join(work, "tf_init"), 0, model, model.optimizer, meta=meta)
    tf_features_init = _features(model, probe)
    recorder = helpers.StepLogs()
    model.fit(tf.data.Dataset.from_tensor_slices((images, labels)), epochs=1, steps_per_epoch=STEPS,
              callbacks=[recorder], verbose=0, shuffle=False)
    trained = ckpt_lib.save_checkpoint(os.path.join(work, "tf_trained"), STEPS, model, model.optimizer, meta=meta)

    proc = subprocess.run([sys.executable, WORKER, work], env=_jax_env(devices=2),
                          capture_output=True, text=True, timeout=300, cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jax_result = dict(np.load(os.path.join(work, "jax_result.npz")))
    return {
        "work": work, "probe": probe, "init": init, "tf_trained": trained, "tf_logs": [logs for _, logs in recorder.steps],
        "tf_features_init": tf_features_init, "jax": jax_result,
        "jax_ckpt": os.path.join(work, "jax_ckpt", f"ckpt-{STEPS}"),
    }


def test_step_one_loss_matches_tensorflow(runs):
    names = list(runs["jax"]["log_names"])
    jax_first = dict(zip(names, runs["jax"]["logs"][0]))
    tf_first = runs["tf_logs"][0]
    for name in ("total_loss", "contrast_loss", "sup_loss", "weight_decay", "learning_rate"):
        np.testing.assert_allclose(jax_first[name], tf_first[name], rtol=1e-4, err_msg=name)
    assert tf_first["weight_decay"] > 0  # The loss-side decay (supervised head under LARS) is really there.
    # Running means over all steps: each step's loss agrees too (to the drift the weights allow).
    # The warm-up/cosine schedule gives each step the same rate (0 at step 1, then > 0).
    for step, logs in enumerate(runs["tf_logs"]):
        jax_logs = dict(zip(names, runs["jax"]["logs"][step]))
        np.testing.assert_allclose(jax_logs["total_loss"], logs["total_loss"], rtol=2e-3)
        np.testing.assert_allclose(jax_logs["learning_rate"], logs["learning_rate"], rtol=1e-6)
    assert runs["tf_logs"][-1]["learning_rate"] > 0


def test_weights_after_lars_steps_match_tensorflow(runs):
    """Every variable (BN moving statistics and LARS momenta included) ends within 2% of its movement."""
    start, tf_end = _arrays(runs["init"]), _arrays(runs["tf_trained"])
    jax_end = _arrays(runs["jax_ckpt"])
    assert set(jax_end) == set(tf_end)
    assert int(runs["jax"]["step"]) == STEPS
    assert int(runs["jax"]["devices"]) == 2  # The batch really was sharded.
    moved_keys = 0
    for key, expected in tf_end.items():
        moved = np.max(np.abs(expected.astype(np.float64) - start[key]))
        moved_keys += moved > 0
        np.testing.assert_allclose(jax_end[key], expected, rtol=0, atol=0.02 * moved + 1e-7, err_msg=key)
    # Not trivially equal: nearly every variable moved (a few zero-initialized slots may not).
    assert moved_keys > 0.9 * len(tf_end)
    # The batch-norm moving means are among them (they change only through the forward pass's updates).
    model = _model(_config(runs["work"]))
    paths = {key: v.path for key, v in ckpt_lib.named_variables(model, model.optimizer).items()}
    bn_means = [k for k, p in paths.items() if p.endswith("moving_mean")]
    assert bn_means and all(np.max(np.abs(tf_end[k] - start[k])) > 0 for k in bn_means)


def test_jax_checkpoint_restores_and_exports_under_tensorflow(runs, tmp_path):
    probe, jax_features = runs["probe"], runs["jax"]["features_trained"]
    model = _model(_config(str(tmp_path / "restore")))
    meta = ckpt_lib.restore_checkpoint(runs["jax_ckpt"], model, model.optimizer)
    assert meta["step"] == STEPS and int(model.optimizer.iterations.numpy()) == STEPS
    np.testing.assert_allclose(_features(model, probe), jax_features, rtol=1e-4, atol=1e-6)

    path = hub_module.export_from_checkpoint(runs["jax_ckpt"], str(tmp_path / "export"))
    encoder = load.load_encoder(path, from_saved_model=True)  # The SavedModel graph itself.
    np.testing.assert_allclose(np.asarray(encoder(probe)), jax_features, rtol=1e-4, atol=1e-6)
    # Training moved the features away from the initial ones: the match is not the untrained model's.
    assert np.max(np.abs(jax_features - runs["tf_features_init"])) > 1e-3


def test_tensorflow_checkpoint_restores_under_jax(runs):
    np.testing.assert_allclose(runs["jax"]["features_restored"], runs["tf_features_init"], rtol=1e-4, atol=1e-6)


def test_run_py_trains_checkpoints_and_exports_under_jax(image_folder, tmp_path):
    """The whole run on JAX, with the augmentations inside the jitted step (--augment_on=device)."""
    folder = image_folder
    model_dir, export_dir = tmp_path / "run", tmp_path / "exported"
    argv = [
        f"--dataset=folder:{folder}", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
        "--use_tpu=False", "--train_batch_size=8", "--train_steps=4", "--checkpoint_steps=2", "--resnet_depth=18",
        "--width_multiplier=0.125", "--image_size=16", "--proj_out_dim=16", "--num_proj_layers=2", "--use_blur=False",
        "--warmup_epochs=0", "--augment_on=device",
    ]
    proc = subprocess.run([sys.executable, helpers.RUN_PY, *argv], env=_jax_env(), capture_output=True,
                          text=True, timeout=300, cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert ckpt_lib.checkpoint_steps(str(model_dir)) == [2, 4]
    assert ckpt_lib.read_meta(str(model_dir))["step"] == 4
    assert "device_augment/0" in np.load(os.path.join(model_dir, "ckpt-4", "variables.npz")).files  # Its seed state.
    assert os.path.exists(export_dir / "4" / "saved_model.pb"), proc.stderr[-3000:]
    # The export is of the run's last checkpoint (its features were checked against JAX's above).
    with open(export_dir / "4" / exports_dir.EXPORT_META_FILE) as f:
        assert json.load(f)["checkpoint"] == os.path.abspath(model_dir / "ckpt-4")


def test_run_py_distils_under_jax(image_folder, tmp_path):
    """--train_mode=distill on JAX: the teacher's weights travel in the jitted step's state, the student alone is saved.

    (The export under JAX is the other run.py test's; a distilled student's export is tests/training/test_distill.py's.)
    """
    teacher_dir, model_dir = tmp_path / "teacher", tmp_path / "student"
    micro = helpers.MICRO_BACKBONE  # Teacher and student: the step's state is the subject, not the ResNet.
    trainer.train(helpers.tiny_config(f"folder:{image_folder}", str(teacher_dir), train_steps=2, checkpoint_steps=2,
                                      model=helpers.MICRO_MODEL))
    argv = [
        f"--dataset=folder:{image_folder}", f"--model_dir={model_dir}", "--export_at_end=False",
        f"--teacher={teacher_dir}", "--train_mode=distill", "--optimizer=momentum", "--learning_rate=0.1",
        "--use_tpu=False", "--train_batch_size=8", "--train_steps=2", "--checkpoint_steps=2", f"--backbone={micro}",
        "--image_size=16", "--proj_out_dim=16", "--num_proj_layers=2", "--warmup_epochs=0",
    ]
    proc = subprocess.run([sys.executable, helpers.RUN_PY, *argv], env=_jax_env(), capture_output=True,
                          text=True, timeout=300, cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stored = np.load(os.path.join(model_dir, "ckpt-2", "variables.npz")).files
    assert {key.split("/")[0] for key in stored} == {"encoder", "projection_head", "supervised_head", "optimizer"}
    with open(model_dir / "learning_curve.json") as f:
        assert "teacher_agreement" in json.load(f)["train"][-1]


_NO_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # A GPU machine with JAX only: any TensorFlow import fails.
import jax
import keras
import numpy as np
import tf_simclr
from tf_simclr.augment import device
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.models import simclr  # noqa: F401  The model imports without TensorFlow.
views = jax.jit(lambda x: device.stacked_views(x, [1, 2], AugmentSpec(16)))(np.zeros((2, 20, 20, 3), np.uint8))
loss, _, _ = tf_simclr.contrastive_loss(keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(4, 8))))
weight = keras.Variable(np.ones((3, 3), "float32"))
optimizer = tf_simclr.build_optimizer("lars", 0.1, weight_decay=1e-4)
optimizer.apply([keras.ops.ones((3, 3))], [weight])
assert "tensorflow" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
assert tuple(views.shape) == (4, 16, 16, 3) and float(np.asarray(weight).max()) < 1.0
try:
    tf_simclr.build_dataset
except ImportError as e:
    print("dataset needs tensorflow:", e)
print("loss", float(loss))
"""


def test_model_loss_and_device_augmentation_import_without_tensorflow():
    """The model, loss, LARS and device augmentation import and run on Keras/JAX alone (gpu_benchmark.py relies on it)."""
    done = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW], env=_jax_env(), cwd=helpers.REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dataset needs tensorflow" in done.stdout
    loss = float(done.stdout.strip().splitlines()[-1].split()[-1])
    assert np.isfinite(loss) and loss > 0
