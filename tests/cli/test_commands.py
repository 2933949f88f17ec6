"""The command line inside the package: `python -m tf_simclr`, the console script, and the helper commands."""

import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tf_simclr.cli import main

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _python_m(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tf_simclr", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def test_console_script_points_at_the_cli():
    scripts = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "tf_simclr"]
    assert scripts, "pip install -e . declares the tf_simclr console script"
    assert scripts[0].value == "tf_simclr.cli:main"
    assert scripts[0].load() is main


def test_python_m_lists_the_commands_and_the_trainer_flags():
    listing = _python_m("help")
    assert listing.returncode == 0
    for command in ("fashion_mnist", "digits", "export", "visualize"):
        assert command in listing.stdout
    trainer = _python_m("--helpfull")
    assert trainer.returncode == 0
    assert "--train_batch_size" in trainer.stdout and "--proj_head_mode" in trainer.stdout


def test_unknown_commands_and_bad_flags_exit_2(capsys):
    assert main(["tf_simclr", "frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["tf_simclr", "digits", "--no_such_flag=1"]) == 2
    assert main(["tf_simclr", "export"]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err


def test_digits_command_writes_the_folder(tmp_path, capsys):
    out = str(tmp_path / "digits")
    assert main(["tf_simclr", "digits", f"--out={out}"]) == 0
    counts = {split: sum(len(files) for _, _, files in os.walk(os.path.join(out, split))) for split in ("train", "test")}
    assert counts == {"train": 1437, "test": 360}
    assert "--dataset=folder:" in capsys.readouterr().out


def test_visualize_views_writes_a_grid(tmp_path):
    image = str(tmp_path / "a.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(image)
    out = str(tmp_path / "views.png")
    assert main(["tf_simclr", "visualize", "views", f"--images={image},{image}", "--image_size=24", "--num_views=3",
                 f"--out={out}", "--seed=1"]) == 0
    with Image.open(out) as grid:
        assert grid.size == (4 * 24 + 5 * 2, 2 * 24 + 3 * 2)  # (views + original) columns, one row per image.


def test_command_help_lists_only_its_flags(capsys):
    assert main(["tf_simclr", "export", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--keep_max" in text and "--train_batch_size" not in text


@pytest.mark.parametrize("module", ["tf_simclr.visualize"])
def test_python_m_of_a_subpackage_runs_its_command(module, tmp_path):
    done = subprocess.run([sys.executable, "-m", module, "curve"], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2 and "needs --model_dir" in done.stderr
