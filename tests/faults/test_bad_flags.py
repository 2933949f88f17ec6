"""Bad flags fail in seconds, before any training: one `run.py: error:` line, exit status 2, nothing written.

Each case runs `python run.py` in a fresh folder with a tiny model on the offline
Fashion-MNIST; a check that did not fire would start (and here finish) training,
which the exit status, the file listing and the 60 s bound catch.
"""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_PY = os.path.join(ROOT, "run.py")
TINY_FLAGS = [
    "--use_tpu=False", "--dataset=fashion_mnist", "--train_split=train", "--eval_split=test",
    "--resnet_depth=18", "--width_multiplier=0.125", "--image_size=16", "--proj_out_dim=16", "--num_proj_layers=2",
    "--global_bn=False", "--train_batch_size=8", "--train_steps=2", "--checkpoint_steps=2", "--use_blur=False",
]


@pytest.fixture(scope="module")
def deeper_checkpoint(tmp_path_factory):
    """A pretraining model_dir written by a ResNet-34 (the cases' flags say ResNet-18)."""
    import dataclasses

    from tf_simclr import checkpoint as ckpt_lib
    from tf_simclr import model as model_lib
    from tf_simclr.config import Config, ModelConfig

    model_config = ModelConfig(resnet_depth=34, width_multiplier=0.125, image_size=16, proj_out_dim=16, num_proj_layers=2, global_bn=False)
    model_dir = tmp_path_factory.mktemp("resnet34_pretrain")
    model = model_lib.build_model(model_config)
    ckpt_lib.save_checkpoint(str(model_dir), 2, model, meta={"config": dataclasses.asdict(Config(model=model_config))})
    return str(model_dir)


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
    ("steps_per_execution_vs_epoch", ["--train_steps=0", "--train_epochs=1", "--checkpoint_steps=0",
                                      "--train_batch_size=64", "--steps_per_execution=5"], "--steps_per_execution=5"),
]


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, dirs, files in os.walk(folder) for f in dirs + files)


@pytest.mark.parametrize("flags,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_fails_fast_with_one_error_line_and_writes_nothing(tmp_path, fashion_mnist_dir, deeper_checkpoint, flags, expected):
    (tmp_path / "a_file").write_text("not a folder")
    fill = {"tmp": str(tmp_path), "ckpt": deeper_checkpoint}
    argv = [*TINY_FLAGS, f"--data_dir={fashion_mnist_dir}", f"--model_dir={tmp_path / 'model_dir'}", *[f.format(**fill) for f in flags]]
    before = _listing(tmp_path)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, RUN_PY, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    seconds = time.monotonic() - started
    last_line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    print(f"{seconds:5.1f} s  {last_line}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line.startswith("run.py: error:") and expected.format(**fill) in last_line, last_line
    assert _listing(tmp_path) == before  # No model_dir, no exported_models/<name>, no file.
    assert not (tmp_path / "model_dir").exists() and not (tmp_path / "exported_models").exists()
    assert seconds < 60, f"{seconds:.0f} s: the check came after work started"
