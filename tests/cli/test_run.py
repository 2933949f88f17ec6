"""run.py / tf_simclr.cli: the reference's published commands parse unchanged; bad flags exit 2 and touch nothing."""

import glob
import os
import subprocess
import sys

import pytest
from absl import flags

import helpers
from tf_simclr.cli import flags as flags_lib
from tf_simclr.cli import train as cli_train  # noqa: F401  Defines the trainer's flags on absl's FLAGS.
from tf_simclr.jobs import checks

# From google-research/simclr's README (TPU paths replaced by local ones).
REFERENCE_CIFAR10 = (
    "--train_mode=pretrain --train_batch_size=512 --train_epochs=1000 --learning_rate=1.0 --weight_decay=1e-4 "
    "--temperature=0.5 --dataset=cifar10 --image_size=32 --eval_split=test --resnet_depth=18 --use_blur=False "
    "--color_jitter_strength=0.5 --model_dir=/tmp/simclr_test --use_tpu=False"
)
REFERENCE_FINETUNE = (
    "--mode=train_then_eval --train_mode=finetune --fine_tune_after_block=4 --zero_init_logits_layer=True "
    "--variable_schema=(?!global_step|(?:.*/|^)LARSOptimizer|head) --global_bn=False --optimizer=momentum "
    "--learning_rate=0.1 --weight_decay=0.0 --train_epochs=100 --train_batch_size=512 --warmup_epochs=0 "
    "--dataset=imagenet2012 --image_size=224 --eval_split=validation --data_dir=/data --model_dir=/tmp/ft "
    "--checkpoint=/tmp/simclr_test --use_tpu=False --train_summary_steps=0"
)


@pytest.fixture
def parse():
    """Parses a command line into a Config as run.py does; leaves absl's FLAGS unparsed afterwards."""

    def parse(argv):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["run.py"] + argv)
        return flags_lib.config_from_flags(flags.FLAGS)

    yield parse
    flags.FLAGS.unparse_flags()


def test_reference_cifar10_command_parses_with_its_meanings(parse):
    config = parse(REFERENCE_CIFAR10.split())
    assert config.model.resnet_depth == 18 and config.model.cifar_stem
    assert config.train.learning_rate == 1.0 and config.train.temperature == 0.5
    assert config.data.use_blur is False and config.data.color_jitter_strength == 0.5
    assert config.train.lineareval_while_pretraining  # The reference's default.
    assert config.train.optimizer == "lars" and config.train.weight_decay == 1e-4


def test_reference_finetune_command_parses_including_tf1_flags(parse):
    config = parse(REFERENCE_FINETUNE.split())
    assert config.train.train_mode == "finetune" and config.train.fine_tune_after_block == 4
    assert config.train.zero_init_logits_layer and config.train.optimizer == "momentum"
    assert config.train.checkpoint == "/tmp/simclr_test" and config.model.global_bn is False
    assert config.run.mode == "train_then_eval" and config.train.summary_steps == 0  # --train_summary_steps.


@pytest.mark.parametrize("flagfile", sorted(glob.glob(os.path.join(helpers.REPO, "flags", "*.cfg"))))
def test_every_recipe_parses_and_validates(parse, flagfile):
    config = parse([f"--flagfile={flagfile}"])
    if config.train.train_mode == "finetune" and not config.train.checkpoint:
        config = parse([f"--flagfile={flagfile}", "--checkpoint=/pretrained"])  # The user's part of the command.
    checks.check_config(config)


def _uses_quickstart_weights(flagfile):
    with open(flagfile) as f:
        lines = [line.strip() for line in f if not line.lstrip().startswith("#")]
    return "--checkpoint=runs/quickstart" in lines


QUICKSTART_USERS = [f for f in sorted(glob.glob(os.path.join(helpers.REPO, "flags", "*.cfg"))) if _uses_quickstart_weights(f)]


@pytest.mark.parametrize("flagfile", QUICKSTART_USERS, ids=os.path.basename)
def test_recipes_that_load_the_quickstart_share_its_architecture(parse, flagfile):
    """A recipe reading runs/quickstart must build the quickstart's network, or its first step is a refusal."""
    names = ("image_size", "cifar_stem_stride") + checks.ARCHITECTURE_FLAGS
    quickstart = parse([f"--flagfile={os.path.join(helpers.REPO, 'flags', 'quickstart.cfg')}"]).model
    recipe = parse([f"--flagfile={flagfile}"]).model
    assert {n: getattr(recipe, n) for n in names} == {n: getattr(quickstart, n) for n in names}


def test_fractional_width_multiplier(parse):
    assert parse(["--width_multiplier=0.125"]).model.width_multiplier == 0.125


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--dataset=fashon_mnist"], "Did you mean: fashion_mnist"),
        (["--resnet_depth=42"], "--resnet_depth"),
        (["--train_mode=pretrain", "--fine_tune_after_block=2"], "--fine_tune_after_block"),
        (["--temperature=0"], "--temperature"),
        (["--train_label_fraction=0.1", "--train_subset_ids=ids.txt"], "not both"),
        (["--train_mode=finetune"], "--checkpoint"),
    ],
)
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, argv, expected):
    model_dir, data_dir = tmp_path / "run", tmp_path / "tfds"
    data_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, helpers.RUN_PY, f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--use_tpu=False", *argv],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("run.py: error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], proc.stderr[-2000:]
    assert not model_dir.exists() and not (tmp_path / "exported_models").exists()
    assert os.listdir(data_dir) == []  # No dataset prepared (nor downloaded) before the check.
