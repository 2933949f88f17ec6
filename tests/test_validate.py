"""validate: each bad flag is refused before work, by the same rule the code it protects applies later."""

import dataclasses
import json
import logging
import os
import re

import numpy as np
import pytest

from tf_simclr import augment, resnet, validate
from tf_simclr import checkpoint as ckpt_lib
from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig

TINY = ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=16, proj_out_dim=16, num_proj_layers=2, global_bn=False)


@pytest.fixture(scope="module")
def unprepared_dir(tmp_path_factory):
    """A TFDS data_dir without fashion_mnist prepared: metadata (classes) only, sizes unknown."""
    return str(tmp_path_factory.mktemp("tfds_unprepared"))


def make_config(tmp_path, data_dir=None, model=TINY, **train):
    train = {"model_dir": str(tmp_path / "run"), "train_batch_size": 8, "train_steps": 4, **train}
    return Config(
        model=model,
        data=DataConfig(dataset="fashion_mnist", data_dir=data_dir, image_size=model.image_size, use_blur=False),
        train=TrainConfig(**train),
    )


def tree(path):
    return sorted(os.path.join(d, f) for d, dirs, files in os.walk(path) for f in dirs + files)


# ------------------------------------------------------------------ image size vs the encoder
def _final_map(encoder, size):
    return int(encoder(np.zeros((1, size, size, 3), np.float32), training=False)["block_group4"].shape[1])


def test_minimum_image_size_is_the_built_encoders_stride():
    cifar = resnet.resnet(18, 0.125, cifar_stem=True)
    imagenet = resnet.resnet(18, 0.125, cifar_stem=False)
    # Measured total strides of the two stems, against the rule's constants.
    assert 32 // _final_map(cifar, 32) == validate.encoder_stride(ModelConfig(image_size=32)) == 8
    assert 64 // _final_map(imagenet, 64) == validate.encoder_stride(ModelConfig(image_size=64)) == 32
    for size in range(1, 33):  # Every size that selects the CIFAR stem.
        final = _final_map(cifar, size)
        assert final == -(-size // 8)  # Padding rounds up: never below 1x1, so that alone is no test.
        padded_up = size < 8  # The single final cell stands for more pixels than the image has.
        config = Config(model=dataclasses.replace(TINY, image_size=size))
        if padded_up:
            with pytest.raises(ValueError, match=r"--image_size=\d+ .* Use --image_size >= 8"):
                validate.check_config(config)
        else:
            validate.check_config(config)
    # The ImageNet stem starts at 33 px, already above its stride: 2x2 final maps, accepted.
    assert _final_map(imagenet, 33) == 2
    validate.check_config(Config(model=dataclasses.replace(TINY, image_size=33)))


def test_blur_below_20_pixels_is_the_identity_and_only_warned(tmp_path, unprepared_dir, caplog):
    import tensorflow as tf

    for size, blurs in ((19, False), (20, True)):
        image = tf.random.stateless_uniform([size, size, 3], seed=[1, 2])
        out = augment.random_blur(image, p=1.0)
        assert np.array_equal(out.numpy(), image.numpy()) is not blurs
    config = make_config(tmp_path, unprepared_dir, export_at_end=False)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, use_blur=True))
    with caplog.at_level(logging.WARNING, logger="tf_simclr"):
        validate.check_before_work(config, mode="train", num_replicas=1)
    assert any("--use_blur has no effect at --image_size=16" in r.message for r in caplog.records)
    assert not os.path.exists(config.train.model_dir)


# ------------------------------------------------------------------ replicas, steps, contradictions
def test_batch_must_split_evenly_over_replicas(tmp_path, unprepared_dir):
    config = make_config(tmp_path, unprepared_dir, train_batch_size=7)
    with pytest.raises(ValueError, match=r"--train_batch_size=7 must be a multiple of the 2 replicas; use 6 or 8") as e:
        validate.check_before_work(config, mode="train", num_replicas=2)
    suggested = [int(n) for n in re.findall(r"use (\d+) or (\d+)", str(e.value))[0]]
    assert all(n % 2 == 0 and abs(n - 7) == 1 for n in suggested)
    validate.check_before_work(config, mode="eval", num_replicas=2)  # Eval does not split the training batch.
    assert tree(tmp_path) == []


@pytest.mark.parametrize("num_examples", [100, 1000, 60000])
def test_steps_per_execution_rule_agrees_with_make_plan(num_examples, tmp_path):
    from tf_simclr import train

    for batch, epochs, steps, ckpt_steps, ckpt_epochs, spe in [
        (b, e, s, c, ce, x)
        for b in (64, 256) for e in (1, 3) for s in (0, 30, 40) for c in (0, 10, 20) for ce in (1, 2) for x in (1, 2, 4, 5)
    ]:
        config = make_config(tmp_path)
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, train_batch_size=batch, train_epochs=epochs, train_steps=steps,
            checkpoint_steps=ckpt_steps, checkpoint_epochs=ckpt_epochs, steps_per_execution=spe, warmup_epochs=0,
        ))
        try:
            train.make_plan(config, num_examples)
            plan_raises = False
        except ValueError:
            plan_raises = True
        assert (validate.steps_per_execution_problem(config, num_examples) is not None) == plan_raises
        known_early = validate.steps_per_execution_problem(config, None)  # Only with both step counts given.
        if known_early is not None:
            assert plan_raises


def test_deterministic_needs_a_seed(tmp_path):
    config = make_config(tmp_path, deterministic=True)
    with pytest.raises(ValueError, match="--deterministic needs --seed"):
        validate.check_config(config)
    validate.check_config(dataclasses.replace(config, train=dataclasses.replace(config.train, seed=0)))


def test_eval_of_a_pretraining_without_a_head_has_nothing_to_score(tmp_path):
    config = make_config(tmp_path, lineareval_while_pretraining=False)
    with pytest.raises(ValueError, match="--mode=eval has nothing to evaluate"):
        validate.check_before_work(config, mode="eval", num_replicas=1)
    validate.check_before_work(config, mode="eval", num_replicas=1, feature_eval=True)
    assert tree(tmp_path) == []


# ------------------------------------------------------------------ writable folders
def test_unwritable_or_file_paths_are_refused_and_nothing_is_created(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--model_dir=.*a_file is a file, not a folder"):
        validate.check_writable("--model_dir", str(a_file))
    with pytest.raises(ValueError, match=r"--export_dir=.*cannot be created: .*a_file is a file"):
        validate.check_writable("--export_dir", str(a_file / "sub" / "dir"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # Root ignores permission bits, so deny through os.access itself.
    monkeypatch.setattr(os, "access", lambda p, m: False if os.path.abspath(p) == str(locked) else real_access(p, m))
    with pytest.raises(ValueError, match=r"--model_dir=.*not writable \(its parent .*locked denies write access\)"):
        validate.check_writable("--model_dir", str(locked / "a" / "b"))
    validate.check_writable("--model_dir", str(tmp_path / "new" / "deeper"))
    assert tree(tmp_path) == [str(a_file), str(locked)]


def test_export_dir_is_checked_only_when_something_is_exported(tmp_path, unprepared_dir):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    config = make_config(tmp_path, unprepared_dir, export_dir=str(a_file))
    with pytest.raises(ValueError, match="--export_dir="):
        validate.check_before_work(config, mode="train", num_replicas=1)
    no_export = dataclasses.replace(config, train=dataclasses.replace(config.train, export_at_end=False))
    validate.check_before_work(no_export, mode="train", num_replicas=1)
    assert tree(tmp_path) == [str(a_file)]


# ------------------------------------------------------------------ checkpoints of another architecture
def _save_tiny_checkpoint(directory, model_config, step=3):
    from tf_simclr import model as model_lib

    model = model_lib.build_model(model_config)
    config = Config(model=model_config)
    return ckpt_lib.save_checkpoint(str(directory), step, model, meta={"config": config.to_dict()})


def test_checkpoint_of_another_width_lists_the_same_variables_restore_would_refuse(tmp_path, unprepared_dir):
    from tf_simclr import model as model_lib

    folder = _save_tiny_checkpoint(tmp_path / "pretrained", TINY)
    wider = dataclasses.replace(TINY, width_multiplier=0.25)
    config = make_config(tmp_path, unprepared_dir, model=wider, train_mode="finetune", checkpoint=str(tmp_path / "pretrained"))
    with pytest.raises(ValueError) as e:
        validate.check_before_work(config, mode="train", num_replicas=1)
    message = str(e.value)
    assert message.startswith(f"--checkpoint={tmp_path / 'pretrained'}") and "\n" not in message
    assert "--width_multiplier=0.125 (here 0.25)" in message
    # Second code path: the real restore, which loads the arrays.
    target = model_lib.build_model(wider)
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as restore_error:
        ckpt_lib.restore_checkpoint(folder, target, None, exclude_parts=("supervised_head",))
    restore_count = int(re.search(r"\((\d+) variables differ\)", str(restore_error.value)).group(1))
    assert f"{restore_count} variables do not match" in message
    assert restore_count == len(validate.checkpoint_mismatches(folder, target, ("supervised_head",))) > 0
    # The same flags as the checkpoint pass, and restore agrees.
    same = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=folder)
    validate.check_before_work(same, mode="train", num_replicas=1)
    assert validate.checkpoint_mismatches(folder, model_lib.build_model(TINY)) == []
    assert not os.path.exists(config.train.model_dir)


def test_stored_shapes_read_from_headers_equal_the_arrays(tmp_path):
    folder = _save_tiny_checkpoint(tmp_path, TINY)
    with np.load(os.path.join(folder, ckpt_lib.VARIABLES_FILE)) as arrays:
        assert validate.stored_shapes(folder) == {k: arrays[k].shape for k in arrays.files}


def test_resuming_a_model_dir_of_another_depth_is_refused(tmp_path, unprepared_dir):
    model_dir = tmp_path / "run"
    _save_tiny_checkpoint(model_dir, dataclasses.replace(TINY, resnet_depth=34))
    before = tree(tmp_path)
    config = make_config(tmp_path, unprepared_dir, lineareval_while_pretraining=False)
    with pytest.raises(ValueError, match=r"--model_dir=.*ckpt-3, written by a different architecture: \d+ variables .*--resnet_depth=34 \(here 18\)"):
        validate.check_before_work(config, mode="train", num_replicas=1)
    assert tree(tmp_path) == before


def test_missing_or_empty_checkpoint_paths(tmp_path, unprepared_dir):
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"--checkpoint=.*nope does not exist"):
        validate.check_before_work(config, mode="train", num_replicas=1)
    with pytest.raises(ValueError, match=r"--checkpoint=.*nope does not exist"):  # --mode=export reads it too.
        validate.check_before_work(config, mode="export", num_replicas=1)
    validate.check_before_work(config, mode="eval", num_replicas=1)  # Eval follows model_dir, not --checkpoint.
    (tmp_path / "empty").mkdir()
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"--checkpoint=.*empty holds no tf_simclr checkpoint"):
        validate.check_before_work(config, mode="train", num_replicas=1)
    # An existing but empty model_dir is no checkpoint either (check_config lets it through).
    (tmp_path / "run").mkdir()
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune")
    validate.check_config(config)
    with pytest.raises(ValueError, match=r"--train_mode=finetune needs --checkpoint: --model_dir=.* holds no checkpoint"):
        validate.check_before_work(config, mode="train", num_replicas=1)


def test_export_of_another_architecture_is_refused_from_its_metadata(tmp_path, unprepared_dir):
    from tf_simclr import export

    module = tmp_path / "exported" / "7"
    module.mkdir(parents=True)
    (module / "saved_model.pb").write_bytes(b"")  # Only the metadata is read for this check.
    stored = Config(model=dataclasses.replace(TINY, proj_head_mode="linear", num_proj_layers=5))
    (module / export.EXPORT_META_FILE).write_text(json.dumps({"config": stored.to_dict()}))
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "exported"))
    with pytest.raises(ValueError, match=r"is an export of a different architecture: .*--proj_head_mode=linear \(here nonlinear\)"):
        validate.check_before_work(config, mode="train", num_replicas=1)
    # Same head mode: num_proj_layers does not shape a linear head, so it is not a difference.
    linear = make_config(tmp_path, unprepared_dir, model=dataclasses.replace(TINY, proj_head_mode="linear"),
                         train_mode="finetune", checkpoint=str(tmp_path / "exported"))
    validate.check_before_work(linear, mode="train", num_replicas=1)


def test_device_augmentation_is_for_pretraining_only(tmp_path):
    config = make_config(tmp_path, train_mode="finetune", checkpoint=str(tmp_path))
    device = dataclasses.replace(config, data=dataclasses.replace(config.data, augment_on="device"))
    validate.check_config(config)
    with pytest.raises(ValueError, match="--augment_on=device applies to pretraining only"):
        validate.check_config(device)
    pretrain = dataclasses.replace(device, train=dataclasses.replace(device.train, train_mode="pretrain", checkpoint=None))
    validate.check_config(pretrain)
