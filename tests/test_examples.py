"""The examples in examples/ still run against the package (tiny settings)."""

import os
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
