"""The examples in examples/ still run against the package (tiny settings)."""

import json
import os
import subprocess
import sys

import pytest

import helpers

sys.path.insert(0, os.path.join(helpers.REPO, "examples"))
pytestmark = pytest.mark.slow


def test_pretrain_in_python_runs_a_few_steps(fashion_mnist_dir):
    import pretrain_in_python

    model, history = pretrain_in_python.main(steps=2, data_dir=fashion_mnist_dir, batch_size=32)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert 0.0 <= history.history["contrast_acc"][-1] <= 1.0 and "sup_loss" in history.history


def test_downstream_app_trains_a_classifier_on_an_export():
    import finetune_exported_encoder

    accuracy = finetune_exported_encoder.main(["--epochs=2"])
    assert 0.5 < accuracy <= 1.0  # Fine-tuning the exported encoder learns the digits (0.81 seen; chance is 0.1).


def test_jax_arrays_example_trains_and_reports_without_tensorflow(tmp_path):
    from tf_simclr.data import idx

    if not os.path.isdir(idx.FASHION_MNIST_DIR):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    pytest.importorskip("jax")
    blocker = os.path.join(helpers.REPO, "tests", "training", "without_tensorflow.py")
    example = os.path.join(helpers.REPO, "examples", "jax_arrays_without_tensorflow.py")
    proc = subprocess.run([sys.executable, blocker, example, "--steps=2", "--examples=256", "--width=0.125",
                           f"--model_dir={tmp_path}"], env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=300, cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow modules loaded: []" in proc.stdout
    with open(tmp_path / "feature_eval.json") as f:
        scores = json.load(f)
    assert sorted(scores) == ["pretrained", "random_init", "raw_pixels"]
    assert scores["raw_pixels"]["feature_dim"] == 28 * 28 * 3 and scores["pretrained"]["num_test"] == 256
    assert helpers.beats_chance(scores["raw_pixels"]["linear_top_1"], 256, 10)
