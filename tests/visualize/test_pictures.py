"""Pictures: the learning curve's PNG and JSON (equal to what the run logged), and the embedding command."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import helpers
import tf_simclr
from tf_simclr.cli import main as cli_main
from tf_simclr.visualize import learning_curve

pytestmark = pytest.mark.slow
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(image_folder, tmp_path_factory):
    """A 6-step pretraining run with summaries every step and the kNN monitor at steps 3 and 6."""
    config = helpers.tiny_config(f"folder:{image_folder}", str(tmp_path_factory.mktemp("run") / "run"),
                                 train_steps=6, checkpoint_steps=3, summary_steps=1, knn_monitor_examples=16,
                                 data={"eval_split": "train"})
    tf_simclr.train(config)
    return config


def _scalars(log_dir):
    """tag -> {step: value} from TensorBoard event files (an independent reader of what was logged)."""
    found = {}
    for name in sorted(os.listdir(log_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def _is_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
        return image.size


def test_learning_curve_png_is_written_and_its_json_equals_the_logged_metrics(run):
    model_dir = run.train.model_dir
    width, height = _is_png(os.path.join(model_dir, learning_curve.PLOT_FILE))
    assert width > 400 and height > 200
    with open(os.path.join(model_dir, learning_curve.CURVE_FILE)) as f:
        curve = json.load(f)
    logged = _scalars(os.path.join(model_dir, "train"))
    assert [row["step"] for row in curve["train"]] == [1, 2, 3, 4, 5, 6]
    for row in curve["train"]:
        for name in ("contrast_loss", "contrast_acc", "embedding_std"):
            np.testing.assert_allclose(row[name], logged[f"train/{name}"][row["step"]], rtol=1e-6)
    knn = _scalars(os.path.join(model_dir, "eval"))["eval/knn_top_1"]
    assert {row["step"]: row["knn_top_1"] for row in curve["knn"]} == pytest.approx(knn)
    assert sorted(knn) == [3, 6]
    assert 0 < curve["raw_pixel_knn"] <= 1
    assert curve["embedding_dim"] == run.model.proj_out_dim
    stds = [row["embedding_std"] for row in curve["train"]]
    assert all(0 < s <= 1 for s in stds)


def test_curve_command_redraws_the_png(run, tmp_path):
    out = str(tmp_path / "curve.png")
    assert cli_main(["tf_simclr", "visualize", "curve", f"--model_dir={run.train.model_dir}", f"--out={out}"]) == 0
    _is_png(out)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_command_writes_a_png_beside_raw_pixels(run, image_folder, tmp_path, method):
    out = str(tmp_path / f"embedding_{method}.png")
    code = cli_main(["tf_simclr", "visualize", "embedding", f"--checkpoint={run.train.model_dir}",
                     f"--dataset=folder:{image_folder}", "--split=train", "--examples=40", f"--method={method}",
                     f"--out={out}"])
    assert code == 0
    width, height = _is_png(out)
    assert width > 2 * height * 0.9  # Two panels side by side: encoder features | raw pixels.


def test_embedding_of_an_export_works_like_a_checkpoint(run, image_folder, tmp_path):
    from tf_simclr.export import hub_module

    export = hub_module.export_from_checkpoint(run.train.model_dir, str(tmp_path / "export"))
    out = str(tmp_path / "embedding.png")
    assert cli_main(["tf_simclr", "visualize", "embedding", f"--checkpoint={export}", f"--dataset=folder:{image_folder}",
                     "--split=train", "--examples=30", "--method=pca", f"--out={out}"]) == 0
    _is_png(out)
