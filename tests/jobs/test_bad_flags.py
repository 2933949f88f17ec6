"""Bad flags are refused before any work: one `run.py: error:` line, exit status 2, nothing written, read or prepared.

Each case runs `python run.py` in a fresh folder with a tiny model on a
*metadata-only* copy of the prepared Fashion-MNIST: TFDS knows its classes and
split sizes, but the image files are gone. A check that did not fire would
create the model_dir and then fail reading the missing images (a traceback and
exit status 1, not 2), so the exit status, the error line and the unchanged file
listing (the data folder included) show the check came before any work.
"""

import os
import shutil
import subprocess
import sys

import pytest

import helpers

TINY_FLAGS = [
    "--use_tpu=False", "--dataset=fashion_mnist", "--train_split=train", "--eval_split=test",
    "--resnet_depth=18", "--width_multiplier=0.125", "--image_size=16", "--proj_out_dim=16", "--num_proj_layers=2",
    "--global_bn=False", "--train_batch_size=8", "--train_steps=2", "--checkpoint_steps=2", "--use_blur=False",
]


@pytest.fixture(scope="module")
def deeper_checkpoint(tmp_path_factory):
    """A pretraining model_dir written by a ResNet-34 (the cases' flags say ResNet-18)."""
    from tf_simclr.config import Config
    from tf_simclr.models import factory
    from tf_simclr.storage import checkpoint as ckpt_lib

    model_config = helpers.tiny_model_config(resnet_depth=34)
    model_dir = tmp_path_factory.mktemp("resnet34_pretrain")
    model = factory.build_model(model_config)
    ckpt_lib.save_checkpoint(str(model_dir), 2, model, meta={"config": Config(model=model_config).to_dict()})
    return str(model_dir)


def _metadata_only_copy(prepared_dir, target):
    """The prepared TFDS folder without its record files: metadata answers, reading fails."""
    shutil.copytree(prepared_dir, target, ignore=lambda folder, names: [n for n in names if ".tfrecord" in n])
    assert not [f for _, _, files in os.walk(target) for f in files if ".tfrecord" in f]
    return str(target)


# (case id, flags; "{tmp}" is the test's folder, "{ckpt}" the ResNet-34 model_dir), text the error line must hold.
CASES = [
    ("unknown_dataset", ["--dataset=fashon_mnist"], "dataset='fashon_mnist'"),
    ("unknown_split", ["--train_split=trian"], "split='trian'"),
    ("finetune_without_checkpoint", ["--train_mode=finetune"], "--checkpoint"),
    ("missing_checkpoint", ["--train_mode=finetune", "--checkpoint={tmp}/no_such_run"], "--checkpoint={tmp}/no_such_run does not exist"),
    ("checkpoint_of_other_depth", ["--train_mode=finetune", "--checkpoint={ckpt}"], "--resnet_depth=34 (here 18)"),
    ("model_dir_under_a_file", ["--model_dir={tmp}/a_file/run"], "--model_dir={tmp}/a_file/run cannot be created"),
    ("export_dir_is_a_file", ["--export_dir={tmp}/a_file"], "--export_dir={tmp}/a_file is a file"),
    ("deterministic_without_seed", ["--deterministic"], "--deterministic needs --seed"),
    ("eval_without_a_head", ["--mode=eval", "--lineareval_while_pretraining=false"], "--mode=eval has nothing to evaluate"),
    # Needs the split's size (60000 examples: 938 steps), which the metadata gives without reading an image.
    ("steps_per_execution_vs_epoch", ["--train_steps=0", "--train_epochs=1", "--checkpoint_steps=0",
                                      "--train_batch_size=64", "--steps_per_execution=5"], "--steps_per_execution=5"),
]


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, dirs, files in os.walk(folder) for f in dirs + files)


def _run(tmp_path, data_dir, flags, fill):
    argv = [*TINY_FLAGS, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'model_dir'}", *[f.format(**fill) for f in flags]]
    proc = subprocess.run([sys.executable, helpers.RUN_PY, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    last_line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return proc, last_line


@pytest.mark.parametrize("flags,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_exits_2_with_one_error_line_before_reading_or_writing(tmp_path, fashion_mnist_dir, deeper_checkpoint,
                                                                        flags, expected):
    (tmp_path / "a_file").write_text("not a folder")
    data_dir = _metadata_only_copy(fashion_mnist_dir, tmp_path / "tfds")
    fill = {"tmp": str(tmp_path), "ckpt": deeper_checkpoint}
    before = _listing(tmp_path)
    proc, last_line = _run(tmp_path, data_dir, flags, fill)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line.startswith("run.py: error:") and expected.format(**fill) in last_line, last_line
    assert len([line for line in proc.stderr.splitlines() if line.startswith("run.py: error:")]) == 1
    assert "Traceback" not in proc.stderr  # Refused by a check, not by a failure in the work.
    assert _listing(tmp_path) == before  # No model_dir, no exported_models/<name>, no file, data folder unchanged.
    assert not (tmp_path / "model_dir").exists() and not (tmp_path / "exported_models").exists()


def test_bad_flag_on_an_unprepared_dataset_prepares_nothing(tmp_path, deeper_checkpoint):
    """The latest check (a checkpoint's architecture) still fires before TFDS would prepare the dataset."""
    data_dir = tmp_path / "tfds_empty"
    data_dir.mkdir()
    proc, last_line = _run(tmp_path, str(data_dir), ["--train_mode=finetune", "--checkpoint={ckpt}"],
                           {"ckpt": deeper_checkpoint})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line.startswith("run.py: error:") and "--resnet_depth=34 (here 18)" in last_line, last_line
    assert os.listdir(data_dir) == []  # Preparing fashion_mnist would have written fashion_mnist/ here.
    assert not (tmp_path / "model_dir").exists() and not (tmp_path / "exported_models").exists()
