"""Training and evaluation on Keras/JAX with TensorFlow blocked from import (a GPU machine without TensorFlow).

Each test runs a subprocess through `without_tensorflow.py`, which makes every
TensorFlow import fail; the pytest process (TensorFlow) recomputes what it checks
through the tf.data pipeline or scikit-learn.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import helpers
from tf_simclr.data import idx, pipeline, sources
from tf_simclr.evaluation import knn, linear_probe, report
from tf_simclr.evaluation.features import extract_features, raw_pixels
from tf_simclr.export import hub_module, load
from tf_simclr.storage import checkpoint as ckpt_lib

pytest.importorskip("jax")

BLOCKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "without_tensorflow.py")
SIZE, N_TRAIN, N_TEST, KNN_EXAMPLES = 16, 512, 256, 128
NONE_LOADED = "tensorflow modules loaded: []"


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, BLOCKER, script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=helpers.REPO)


@pytest.fixture(scope="module")
def fashion_subset(tmp_path_factory):
    """The first 512 training and 256 test images of Fashion-MNIST, as an idx folder."""
    if not os.path.isdir(idx.FASHION_MNIST_DIR):
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    full = idx.read_idx_folder(idx.FASHION_MNIST_DIR)
    chosen = {"train": N_TRAIN, "test": N_TEST}
    splits = {split: (full[split][0][:n, ..., 0], full[split][1][:n]) for split, n in chosen.items()}
    return helpers.write_idx_folder(str(tmp_path_factory.mktemp("fashion-mnist")), splits=splits)


def test_run_py_pretrains_and_evaluates_arrays_without_tensorflow(fashion_subset, tmp_path):
    model_dir = tmp_path / "run"
    proc = _run(helpers.RUN_PY, f"--dataset=idx:{fashion_subset}", "--train_split=train", "--eval_split=test",
                f"--model_dir={model_dir}", "--use_tpu=False", "--train_batch_size=32", "--train_steps=4",
                "--checkpoint_steps=2", f"--backbone={helpers.MICRO_BACKBONE}", f"--image_size={SIZE}",
                "--proj_out_dim=16", "--use_blur=False", "--warmup_epochs=0", "--augment_on=device",
                "--feature_eval=True", f"--knn_monitor_examples={KNN_EXAMPLES}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert NONE_LOADED in proc.stdout
    assert ckpt_lib.checkpoint_steps(str(model_dir)) == [2, 4]
    assert "No TF-Hub export of step 4: exporting needs TensorFlow" in proc.stderr
    with open(model_dir / report.REPORT_FILE) as f:
        written = json.load(f)
    assert set(written) == set(report.ROWS)
    assert all(row["num_train"] == N_TRAIN and row["num_test"] == N_TEST for row in written.values())

    # The raw-pixel row again, through tf.data's evaluation views, TensorFlow's linear probe and kNN.
    source = sources.load_source(f"idx:{fashion_subset}", splits=["train", "test"])
    x_train, y_train = extract_features(raw_pixels, pipeline.eval_dataset(source, "train", SIZE))
    x_test, y_test = extract_features(raw_pixels, pipeline.eval_dataset(source, "test", SIZE))
    pixels = written["raw_pixels"]
    assert pixels["feature_dim"] == SIZE * SIZE * 3
    assert helpers.beats_chance(pixels["knn_top_1"], N_TEST, 10)
    assert abs(pixels["knn_top_1"] - knn.knn_accuracy(x_train, y_train, x_test, y_test, num_classes=10)) <= 1 / N_TEST
    # At the penalty the report chose on held-out training images. 768 pixels on 512 images: the two backends'
    # 30-epoch Adam runs stop at slightly different points of the same convex objective (4 of 256 at 1e-3).
    probe = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=10, l2=pixels["linear_l2"])
    assert abs(pixels["linear_top_1"] - probe["top_1_accuracy"]) <= 5 / N_TEST, (pixels, probe)

    with open(model_dir / "learning_curve.json") as f:
        curve = json.load(f)
    assert [row["step"] for row in curve["knn"]] == [2, 4]
    first = slice(0, KNN_EXAMPLES)
    monitor_pixels = knn.knn_accuracy(x_train[first], y_train[first], x_test[first], y_test[first], num_classes=10)
    assert abs(curve["raw_pixel_knn"] - monitor_pixels) <= 1 / KNN_EXAMPLES

    # The JAX-trained checkpoint, exported here with TensorFlow: its SavedModel's features give the report's kNN.
    export = hub_module.export_from_checkpoint(str(model_dir), export_dir=str(tmp_path / "exported"))
    encoder = load.load_encoder(export, from_saved_model=True)
    f_train, _ = extract_features(encoder, pipeline.eval_dataset(source, "train", SIZE))
    f_test, _ = extract_features(encoder, pipeline.eval_dataset(source, "test", SIZE))
    exported_knn = knn.knn_accuracy(f_train, y_train, f_test, y_test, num_classes=10)
    assert abs(written["pretrained"]["knn_top_1"] - exported_knn) <= 2 / N_TEST, (written["pretrained"], exported_knn)


_PROBE = """
import json, sys
import numpy as np
from tf_simclr.evaluation import linear_probe

rng = np.random.default_rng(1)
centres = rng.normal(size=(6, 24))
def draw(n):
    labels = rng.integers(0, 6, n)
    return (centres[labels] + 1.6 * rng.normal(size=(n, 24))).astype(np.float32), labels
(x_train, y_train), (x_test, y_test) = draw(4000), draw(2000)
np.savez(sys.argv[1], x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
result = linear_probe.linear_eval(x_train, y_train, x_test, y_test, num_classes=6, l2=1e-4, seed=0)
print(json.dumps(result))
"""


def test_linear_probe_without_tensorflow_matches_scikit_learn(tmp_path):
    script, features = tmp_path / "probe.py", tmp_path / "features.npz"
    script.write_text(_PROBE)
    proc = _run(str(script), str(features), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert NONE_LOADED in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[0])
    with np.load(features) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    mean, std = x_train.mean(0), x_train.std(0)
    # Same objective: sklearn minimizes C * sum(CE) + ||W||^2 / 2 = N*C * (mean CE + ||W||^2 / (2 N C)).
    sk = LogisticRegression(C=1.0 / (2 * 1e-4 * len(y_train)), max_iter=2000).fit((x_train - mean) / std, y_train)
    sk_test = sk.score((x_test - mean) / std, y_test)
    assert 0.6 < sk_test < 0.95, "the problem should be neither trivial nor hopeless"
    assert abs(result["top_1_accuracy"] - sk_test) < 0.015, (result, sk_test)
    assert abs(result["train_accuracy"] - sk.score((x_train - mean) / std, y_train)) < 0.015


@pytest.mark.parametrize("flags, message", [
    (["--dataset=folder:{folder}"], "is read with TensorFlow, which does not import here"),
    (["--dataset=idx:{idx}", "--mode=train_then_eval", "--augment_on=host"],
     "change --mode=train_then_eval (use train); --augment_on=host (use device), or install TensorFlow"),
])
def test_what_needs_tensorflow_fails_before_work_naming_the_fix(tmp_path, flags, message):
    folder = helpers.write_image_folder(str(tmp_path / "images"), per_class=2, size=8)
    idx_folder = helpers.write_idx_folder(str(tmp_path / "idx"))
    flags = [flag.format(folder=folder, idx=idx_folder) for flag in flags]
    proc = _run(helpers.RUN_PY, *flags, "--eval_split=test", f"--model_dir={tmp_path / 'run'}", "--use_tpu=False",
                timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert not (tmp_path / "run").exists()


_PYTHON_API = """
import sys
import numpy as np
import tf_simclr
from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig

rng = np.random.default_rng(0)
source = tf_simclr.ArraySource({"train": (rng.integers(0, 256, (64, 12, 12, 1), dtype=np.uint8), np.arange(64) % 4)})
config = Config(model=ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=12, proj_out_dim=8),
                data=DataConfig(dataset="mine", augment_on="host"),
                train=TrainConfig(model_dir=sys.argv[1], train_steps=2, train_batch_size=16, checkpoint_steps=2))
try:
    tf_simclr.train(config, source=source)
except ValueError as e:
    print("refused:", e)
"""


def test_train_from_python_names_what_needs_tensorflow(tmp_path):
    """(Training from Python on arrays is examples/jax_arrays_without_tensorflow.py's test, tests/test_examples.py.)"""
    script = tmp_path / "train.py"
    script.write_text(_PYTHON_API)
    proc = _run(str(script), str(tmp_path / "run"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: TensorFlow is not installed" in proc.stdout and "--augment_on=host (use device)" in proc.stdout
    assert not (tmp_path / "run").exists()
