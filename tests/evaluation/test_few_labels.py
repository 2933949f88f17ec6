"""Few-label baselines: raw pixels of exactly the fine-tune's labelled images, and the same recipe from scratch."""

import json
import os

import numpy as np
import pytest

import helpers
from tf_simclr.data import digits, sources
from tf_simclr.evaluation import few_labels
from tf_simclr.evaluation.linear_probe import standardize_features

from tests.evaluation.test_report import SIZE, _pixels_from_files

PER_CLASS = 40


@pytest.fixture(autouse=True)
def two_penalties(monkeypatch):
    """Two L2 penalties instead of four: 16 cross-validation fits instead of 40 (the grid's size is not tested here)."""
    monkeypatch.setattr(few_labels, "L2_GRID", (1e-3, 1e-1))


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits") / "digits")
    digits.write_digits_folder(root)
    return root


def _chosen_ids(root):
    """The first PER_CLASS training files of each class, as paths relative to the root."""
    ids = []
    for label in sorted(os.listdir(os.path.join(root, "train")), key=int):
        names = sorted(os.listdir(os.path.join(root, "train", label)))[:PER_CLASS]
        ids += [f"train/{label}/{n}" for n in names]
    return ids


def _finetune_config(root, model_dir, ids_file, **train):
    return helpers.tiny_config(f"folder:{root}", model_dir, model={"image_size": SIZE},
                               data={"train_split": "train", "eval_split": "test"},
                               train_mode="finetune", train_subset_ids=ids_file, **train)


def test_raw_pixel_baseline_uses_exactly_the_labelled_images(digits_folder, tmp_path):
    from sklearn.linear_model import LogisticRegression

    ids = _chosen_ids(digits_folder)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    config = _finetune_config(digits_folder, str(tmp_path / "run"), str(ids_file))
    source = sources.load_source(config.data.dataset, splits=["train", "test"])
    ours = few_labels.raw_pixel_baseline(config, source)

    # Independently: PIL-decoded pixels of the listed files, scikit-learn's logistic regression, same penalty.
    x_all, y_all = _pixels_from_files(digits_folder, "train")
    names = [f"train/{label}/{n}" for label in sorted(os.listdir(os.path.join(digits_folder, "train")), key=int)
             for n in sorted(os.listdir(os.path.join(digits_folder, "train", label)))]
    keep = np.isin(names, ids)
    x_train, y_train = x_all[keep], y_all[keep]
    x_test, y_test = _pixels_from_files(digits_folder, "test")
    assert ours["num_train"] == len(ids) == 10 * PER_CLASS and ours["num_test"] == len(y_test)
    if ours["standardize"]:
        x_train, x_test = standardize_features(x_train, x_test)
    assert ours["l2"] in few_labels.L2_GRID
    reference = LogisticRegression(C=1.0 / (2 * ours["l2"] * len(y_train)), max_iter=5000).fit(x_train, y_train)
    sklearn_top_1 = float(np.mean(reference.predict(x_test) == y_test))
    assert abs(ours["linear_top_1"] - sklearn_top_1) <= 0.02, (ours["linear_top_1"], sklearn_top_1)


def test_from_scratch_trains_the_same_recipe_without_the_checkpoint(digits_folder, tmp_path):
    pretrain = helpers.tiny_config(f"folder:{digits_folder}", str(tmp_path / "pretrain"), model={"image_size": SIZE},
                                   data={"train_split": "train", "eval_split": "test"}, train_steps=2)
    from tf_simclr.training import trainer

    trainer.train(pretrain)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(_chosen_ids(digits_folder)) + "\n")
    config = _finetune_config(digits_folder, str(tmp_path / "finetune"), str(ids_file),
                              checkpoint=pretrain.train.model_dir, fine_tune_after_block=4, train_steps=3)
    scratch = few_labels.scratch_config(config)
    assert scratch.train.checkpoint.endswith(few_labels.SCRATCH_INIT_DIR) and scratch.train.fine_tune_after_block == -1
    assert (scratch.train.learning_rate, scratch.train.train_steps, scratch.train.optimizer) == \
        (config.train.learning_rate, config.train.train_steps, config.train.optimizer)

    source = sources.load_source(config.data.dataset, splits=["train", "test"])
    report = few_labels.few_label_baselines(config, source, fine_tuned={"top_1_accuracy": 0.5})
    assert set(report) == {"fine_tuned", "raw_pixels", "raw_pixels_probe", "from_scratch", "num_labelled", "num_test"}
    assert report["num_labelled"] == 10 * PER_CLASS and 0 <= report["from_scratch"] <= 1
    scratch_dir = os.path.join(config.train.model_dir, few_labels.SCRATCH_DIR)
    with open(os.path.join(scratch_dir, "result.json")) as f:
        assert json.load(f)["top_1_accuracy"] == pytest.approx(report["from_scratch"])
    with open(os.path.join(config.train.model_dir, few_labels.REPORT_FILE)) as f:
        assert json.load(f) == report
    assert "same network, from scratch" in few_labels.format_baselines(report)
    # The scratch run started from a never-trained network, not from the pretraining run.
    from tf_simclr.storage import checkpoint as ckpt_lib

    init = ckpt_lib._load_arrays(ckpt_lib.resolve_checkpoint(scratch.train.checkpoint))
    pretrained = ckpt_lib._load_arrays(ckpt_lib.resolve_checkpoint(pretrain.train.model_dir))
    shared = [k for k in init if k.startswith("encoder/") and k in pretrained and init[k].ndim == 4]  # Conv kernels.
    assert shared and all(not np.array_equal(init[k], pretrained[k]) for k in shared)


def test_few_label_baselines_need_a_fine_tune(digits_folder, tmp_path):
    config = helpers.tiny_config(f"folder:{digits_folder}", str(tmp_path / "run"))
    with pytest.raises(ValueError, match="--train_mode=finetune"):
        few_labels.few_label_baselines(config, source=None)


def test_the_flag_outside_a_fine_tune_fails_before_any_work(tmp_path):
    from tf_simclr.jobs import checks

    config = helpers.tiny_config("fashion_mnist", str(tmp_path / "run"), run={"few_label_baselines": True})
    with pytest.raises(ValueError, match="--few_label_baselines .* --train_mode=finetune"):
        checks.check_config(config)
    assert not os.path.exists(tmp_path / "run")


def test_cross_validation_picks_the_penalty_that_generalizes():
    """Few noisy examples in many dimensions: the weakest penalty overfits, a stronger one wins on held-out folds."""
    from tf_simclr.evaluation.linear_probe import linear_eval

    rng = np.random.default_rng(0)
    n, d = 120, 400
    y = np.arange(n) % 3
    centers = rng.normal(size=(3, d)) * 0.15
    x = (centers[y] + rng.normal(size=(n, d))).astype("float32")
    chosen = few_labels.choose_probe(x, y, num_classes=3, grid=(1e-5, 1e-1), folds=4)["l2"]
    # Independently: held-out accuracy of both penalties on fresh data from the same distribution.
    y_new = np.arange(3000) % 3
    x_new = (centers[y_new] + rng.normal(size=(3000, d))).astype("float32")
    fresh = {l2: max(linear_eval(x, y, x_new, y_new, num_classes=3, l2=l2, standardize=std)["top_1_accuracy"]
                     for std in (True, False)) for l2 in (1e-5, 1e-1)}
    assert chosen == max(fresh, key=fresh.get), (chosen, fresh)
