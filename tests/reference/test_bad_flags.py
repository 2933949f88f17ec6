"""Flags that contradict a reference model's variables are refused before any work: exit 2, one line, nothing written.

`python run.py` runs with the fixture's architecture flags but one, and the error line must name that flag and the
value the variables hold; the test folder (model_dir, exports) and the fixture are left as they were.
"""

import dataclasses
import os
import subprocess
import sys

import pytest

import helpers
from tests.reference import fixture_files
from tf_simclr.config import ModelConfig
from tf_simclr.jobs import checks

CASES = [
    ("finetune_saved_model_without_sk", "saved_model", ["--train_mode=finetune", "--sk_ratio=0"],
     "--sk_ratio=0 (found 0.0625)"),
    ("export_ckpt_prefix_of_other_depth", "ckpt_prefix", ["--mode=export", "--resnet_depth=101"],
     "--resnet_depth=101 (found 50)"),
    ("eval_model_dir_on_other_classes", "model_dir", ["--mode=eval", "--train_mode=finetune"],
     "supervised head has 10 classes, --dataset=folder:"),
]


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, dirs, files in os.walk(folder) for f in dirs + files)


@pytest.fixture(scope="module")
def two_class_folder(tmp_path_factory):
    return helpers.write_image_folder(str(tmp_path_factory.mktemp("images")), per_class=4, size=20)


@pytest.mark.parametrize("form,flags,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_contradicting_flag_exits_2_before_writing(tmp_path, two_class_folder, form, flags, expected):
    fixture_before = _listing(fixture_files.FIXTURES)
    argv = ["--use_tpu=False", f"--dataset=folder:{two_class_folder}", "--train_split=train",
            "--eval_split=validation", f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'exports'}",
            "--train_steps=2", "--train_batch_size=8", "--global_bn=False", *fixture_files.flags_of_the_fixture(),
            f"--checkpoint={fixture_files.FORMS[form]}", *flags]
    proc = subprocess.run([sys.executable, helpers.RUN_PY, *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("run.py: error: "), lines[-1]
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert _listing(tmp_path) == []  # No model_dir, no export, no flags.json.
    assert _listing(fixture_files.FIXTURES) == fixture_before


def _config(tmp_path, mode="train", **overrides):
    """The fixture's architecture (as its flags file says), with `overrides` of any section's fields."""
    model = {name: fixture_files.reference_flags()[name] for name in fixture_files.ARCHITECTURE_FLAGS}
    model["global_bn"] = False
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model.update({k: overrides.pop(k) for k in list(overrides) if k in model_fields})
    return helpers.tiny_config("folder:/unused", str(tmp_path / "run"), model=model, run={"mode": mode},
                               checkpoint=fixture_files.SAVED_MODEL, **overrides)


class _TenClasses:
    num_classes = 10

    def num_examples(self, split):
        return 100


@pytest.mark.parametrize("overrides,message", [
    (dict(se_ratio=0.25), "--se_ratio=0.25 (found 0)"),
    (dict(proj_head_mode="none"), "--proj_head_mode=none (found nonlinear)"),
    (dict(num_proj_layers=2), "--num_proj_layers=2 (found 3)"),
    (dict(mode="eval", ft_proj_selector=-1), "--ft_proj_selector=-1 feeds the supervised head 128 features"),
    # Layers 0-2 are all 256 wide: the SavedModel's traced graph tells which one its head read.
    (dict(mode="eval", ft_proj_selector=1), "--ft_proj_selector=1 (found 0: the SavedModel's supervised head reads"),
    (dict(mode="export", ft_proj_selector=2), "--ft_proj_selector=2 (found 0"),
])
def test_checks_name_the_flag_and_the_value_found(tmp_path, overrides, message):
    mode = overrides.pop("mode", "train")
    config = _config(tmp_path, mode=mode, train_mode="finetune", **overrides)
    with pytest.raises(ValueError) as raised:
        checks.check_before_work(config, num_replicas=1, source=_TenClasses())
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not os.path.exists(tmp_path / "run")


def test_matching_flags_pass_the_checks(tmp_path):
    for mode in ("train", "export", "eval"):
        checks.check_before_work(_config(tmp_path, mode=mode, train_mode="finetune"), num_replicas=1,
                                 source=_TenClasses())
    assert not os.path.exists(tmp_path / "run")
