"""The frozen-feature report: three rows by one probe, and the raw-pixel row equals scikit-learn's logistic regression."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import helpers
from tf_simclr.data import digits
from tf_simclr.evaluation import report as report_lib
from tf_simclr.evaluation.linear_probe import PROBE_L2_GRID, standardize_features
from tf_simclr.models import factory

SIZE = 8  # The digits' own size: raw pixels at the size the encoder sees.


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits") / "digits")
    digits.write_digits_folder(root)
    return root


def _pixels_from_files(root, split):
    """Independent of tf_simclr's pipeline: PIL-decoded PNGs / 255, grey repeated to RGB, flattened."""
    xs, ys = [], []
    for label in sorted(os.listdir(os.path.join(root, split)), key=int):
        folder = os.path.join(root, split, label)
        for name in sorted(os.listdir(folder)):
            gray = np.asarray(Image.open(os.path.join(folder, name)), np.float32) / 255.0
            xs.append(np.repeat(gray[..., None], 3, axis=-1).reshape(-1))
            ys.append(int(label))
    return np.stack(xs), np.asarray(ys)


def test_raw_pixel_row_matches_scikit_learn_logistic_regression(digits_folder, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    config = helpers.tiny_config(f"folder:{digits_folder}", str(tmp_path / "run"), model={"image_size": SIZE},
                                 data={"train_split": "train", "eval_split": "test"})
    report = report_lib.frozen_feature_report(config, None, rows=("raw_pixels",))
    ours = report["raw_pixels"]
    x_train, y_train = _pixels_from_files(digits_folder, "train")
    x_test, y_test = _pixels_from_files(digits_folder, "test")
    assert (ours["num_train"], ours["num_test"], ours["feature_dim"]) == (len(y_train), len(y_test), SIZE * SIZE * 3)
    x_train, x_test = standardize_features(x_train, x_test)
    # The penalty the report chose on held-out training digits; mean cross-entropy + l2 * ||W||^2 is
    # C = 1 / (2 * l2 * N) in scikit-learn.
    l2 = ours["linear_l2"]
    assert set(ours["linear_l2_validation"]) == {f"{v:g}" for v in PROBE_L2_GRID}
    assert ours["linear_l2_validation"][f"{l2:g}"] == max(ours["linear_l2_validation"].values())
    reference = LogisticRegression(C=1.0 / (2 * l2 * len(y_train)), max_iter=5000).fit(x_train, y_train)
    sklearn_top_1 = float(np.mean(reference.predict(x_test) == y_test))
    assert abs(ours["linear_top_1"] - sklearn_top_1) <= 0.01, (ours["linear_top_1"], sklearn_top_1)
    assert ours["linear_top_1"] > 0.9  # Digits are linearly separable from pixels: the baseline is real.
    # The choice, judged independently: scikit-learn's 3-fold cross-validated accuracy at the chosen penalty is
    # within 1.5 points of its best over the grid.
    cv = {v: cross_val_score(LogisticRegression(C=1.0 / (2 * v * len(y_train) * 2 / 3), max_iter=3000), x_train,
                             y_train, cv=3).mean() for v in PROBE_L2_GRID}
    assert cv[l2] >= max(cv.values()) - 0.015, (l2, cv)


def test_report_has_three_rows_and_writes_them(digits_folder, tmp_path):
    config = helpers.tiny_config(f"folder:{digits_folder}", str(tmp_path / "run"), model={"image_size": 16},
                                 data={"train_split": "train", "eval_split": "test"})
    os.makedirs(config.train.model_dir)
    model = factory.build_model(config.model)
    report = report_lib.frozen_feature_report(config, model, max_examples=500)
    assert list(report) == ["pretrained", "random_init", "raw_pixels"]
    assert report["pretrained"]["feature_dim"] == report["random_init"]["feature_dim"] == 64
    assert report["raw_pixels"]["feature_dim"] == 16 * 16 * 3
    assert all(r["num_train"] == 500 for r in report.values())
    assert "linear_top_5" in report["raw_pixels"]  # 10 classes: top-5 means something.
    with open(os.path.join(config.train.model_dir, report_lib.REPORT_FILE)) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    table = report_lib.format_report(report)
    assert "raw_pixels" in table and "pretrained vs raw pixels" in table


def test_top_5_is_left_out_for_five_classes_or_fewer(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype("float32")
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0).astype(int)  # 4 classes.
    result = report_lib.evaluate_features(x[:150], y[:150], x[150:], y[150:], num_classes=4)
    assert "linear_top_5" not in result and result["linear_top_1"] > 0.8
