"""The config declares every flag once: names, defaults and types of the reference's flags, and a lossless round trip."""

import dataclasses

import pytest
from absl import flags

from tf_simclr import config as config_lib
from tf_simclr.cli import flags as flags_lib
from tf_simclr.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig

# The reference's tf2/run.py flags with their defaults (read from google-research/simclr), and the TF1 flags its
# README's commands still pass.
REFERENCE_DEFAULTS = {
    "learning_rate": 0.3, "learning_rate_scaling": "linear", "warmup_epochs": 10, "weight_decay": 1e-6,
    "batch_norm_decay": 0.9, "train_batch_size": 512, "train_split": "train", "train_epochs": 100, "train_steps": 0,
    "eval_steps": 0, "eval_batch_size": 256, "checkpoint_epochs": 1, "checkpoint_steps": 0,
    "eval_split": "validation", "dataset": "imagenet2012", "cache_dataset": False, "mode": "train",
    "train_mode": "pretrain", "lineareval_while_pretraining": True, "checkpoint": None,
    "zero_init_logits_layer": False, "fine_tune_after_block": -1, "master": None, "model_dir": None,
    "data_dir": None, "use_tpu": True, "tpu_name": None, "tpu_zone": None, "gcp_project": None,
    "optimizer": "lars", "momentum": 0.9, "eval_name": None, "keep_checkpoint_max": 5, "keep_hub_module_max": 1,
    "temperature": 0.1, "hidden_norm": True, "proj_head_mode": "nonlinear", "proj_out_dim": 128,
    "num_proj_layers": 3, "ft_proj_selector": 0, "global_bn": True, "width_multiplier": 1, "resnet_depth": 50,
    "sk_ratio": 0.0, "se_ratio": 0.0, "image_size": 224, "color_jitter_strength": 1.0, "use_blur": True,
    "variable_schema": "?!global_step", "train_summary_steps": 0,
}


@pytest.fixture(scope="module")
def fresh_flags():
    values = flags.FlagValues()
    flags_lib.define_flags(values)
    return values


def test_every_reference_flag_exists_with_its_default(fresh_flags):
    for name, default in REFERENCE_DEFAULTS.items():
        assert name in fresh_flags, name
        assert fresh_flags[name].default == default, (name, fresh_flags[name].default, default)


def test_every_config_field_is_exactly_one_flag(fresh_flags):
    names = [config_lib.flag_name(f) for cls in config_lib.SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), "two fields share a flag name"
    defined = {flag.name for flag in fresh_flags.get_flags_for_module(flags_lib.__name__)}
    assert set(names) == defined


def test_flags_parse_into_a_config_and_keep_types(fresh_flags):
    fresh_flags(["prog", "--train_batch_size=64", "--width_multiplier=0.125", "--use_tpu=False", "--strict",
                 "--train_summary_steps=7", "--mode=train_then_eval", "--feature_eval", "--backbone=resnet"])
    config = flags_lib.config_from_flags(fresh_flags)
    assert config.train.train_batch_size == 64 and isinstance(config.train.train_batch_size, int)
    assert config.model.width_multiplier == 0.125
    assert config.run.use_tpu is False and config.run.mode == "train_then_eval" and config.run.feature_eval
    assert config.data.strict_images is True  # --strict (the flag) is strict_images (the field).
    assert config.train.summary_steps == 7  # --train_summary_steps (the reference's TF1 name).
    assert config.train.model_dir == "runs/imagenet2012_pretrain"  # Derived when not given.
    fresh_flags.unparse_flags()


def test_enum_flags_reject_unknown_values(fresh_flags):
    with pytest.raises(flags.IllegalFlagValueError):
        fresh_flags(["prog", "--proj_head_mode=quadratic"])
    fresh_flags.unparse_flags()


def test_image_size_exists_once_and_the_model_owns_it():
    assert "image_size" in {f.name for f in dataclasses.fields(ModelConfig)}
    assert "image_size" not in {f.name for f in dataclasses.fields(DataConfig)}
    assert ModelConfig(image_size=32).cifar_stem and not ModelConfig(image_size=33).cifar_stem


def test_default_model_dir_and_explicit_one():
    assert Config(data=DataConfig(dataset="folder:/a/b"), train=TrainConfig(train_mode="finetune")).train.model_dir \
        == "runs/folder__a_b_finetune"
    assert Config(train=TrainConfig(model_dir="gs://bucket/run")).train.model_dir == "gs://bucket/run"


def test_round_trip_through_dict_ignores_unknown_and_old_fields():
    config = Config(model=ModelConfig(resnet_depth=18), train=TrainConfig(model_dir="x", train_steps=9),
                    run=RunConfig(mode="eval"))
    stored = config.to_dict()
    stored["data"]["image_size"] = 28  # Files written before image_size had one home.
    stored["train"]["from_the_future"] = 1
    assert config_lib.config_from_dict(stored) == config
    assert config_lib.config_from_dict({}) == Config()


def test_replace_changes_fields_of_sections():
    config = Config(train=TrainConfig(model_dir="x"))
    changed = config.replace(train={"train_steps": 5}, model={"resnet_depth": 18})
    assert (changed.train.train_steps, changed.model.resnet_depth, changed.train.model_dir) == (5, 18, "x")
    assert config.train.train_steps == 0


@pytest.mark.parametrize("fraction, ids, fragment", [(1.5, None, "[0, 1]"), (0.1, "ids.txt", "not both")])
def test_label_subset_rule(fraction, ids, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        config_lib.check_label_subset(fraction, ids)
    config_lib.check_label_subset(0.01, None)
