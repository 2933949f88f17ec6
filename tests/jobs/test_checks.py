"""jobs.checks: each bad flag is refused before work, by the same rule the code it protects applies later."""

import dataclasses
import json
import logging
import os
import re

import numpy as np
import pytest

import helpers
from tf_simclr.augment import host
from tf_simclr.augment.spec import AugmentSpec
from tf_simclr.config import Config, ModelConfig
from tf_simclr.data import sources
from tf_simclr.export import exports_dir
from tf_simclr.jobs import checks
from tf_simclr.models import backbones, factory
from tf_simclr.models.backbones import resnet
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.optim.plan import make_plan

TINY = helpers.tiny_model_config()


@pytest.fixture(scope="module")
def unprepared_dir(tmp_path_factory):
    """A TFDS data_dir without fashion_mnist prepared: metadata (classes) only, sizes unknown."""
    return str(tmp_path_factory.mktemp("tfds_unprepared"))


def make_config(tmp_path, data_dir=None, model=TINY, mode="train", feature_eval=False, **train):
    train = {"model_dir": str(tmp_path / "run"), "train_batch_size": 8, "train_steps": 4, **train}
    config = helpers.tiny_config("fashion_mnist", train.pop("model_dir"), data={"data_dir": data_dir},
                                 run={"mode": mode, "feature_eval": feature_eval}, **train)
    return config.replace(model=dataclasses.asdict(model))


def check(config, num_replicas=1):
    """`check_before_work` with the dataset opened as `jobs.prepare` opens it: metadata only."""
    source = sources.load_source(config.data.dataset, config.data.data_dir, prepare=False)
    checks.check_before_work(config, num_replicas=num_replicas, source=source)


def tree(path):
    return sorted(os.path.join(d, f) for d, dirs, files in os.walk(path) for f in dirs + files)


# ------------------------------------------------------------------ image size vs the encoder
def _final_map(encoder, size):
    return int(encoder(np.zeros((1, size, size, 3), np.float32), training=False)["block_group4"].shape[1])


def test_minimum_image_size_is_the_built_encoders_stride():
    cifar = resnet.resnet(18, 0.125, cifar_stem=True)
    imagenet = resnet.resnet(18, 0.125, cifar_stem=False)
    # Measured total strides of the two stems, against the rule's constants.
    assert 32 // _final_map(cifar, 32) == backbones.total_stride(ModelConfig(image_size=32)) == 8
    assert 64 // _final_map(imagenet, 64) == backbones.total_stride(ModelConfig(image_size=64)) == 32
    for size in range(1, 33):  # Every size that selects the CIFAR stem.
        final = _final_map(cifar, size)
        assert final == -(-size // 8)  # Padding rounds up: never below 1x1, so that alone is no test.
        padded_up = size < 8  # The single final cell stands for more pixels than the image has.
        config = Config(model=dataclasses.replace(TINY, image_size=size))
        if padded_up:
            with pytest.raises(ValueError, match=r"--image_size=\d+ .* Use --image_size >= 8"):
                checks.check_config(config)
        else:
            checks.check_config(config)
    # The ImageNet stem starts at 33 px, already above its stride: 2x2 final maps, accepted.
    assert _final_map(imagenet, 33) == 2
    checks.check_config(Config(model=dataclasses.replace(TINY, image_size=33)))


def test_blur_below_20_pixels_is_the_identity_and_only_warned(tmp_path, unprepared_dir, caplog):
    import tensorflow as tf

    for size, blurs in ((19, False), (20, True)):
        image = tf.random.stateless_uniform([size, size, 3], seed=[1, 2])
        out = host.random_blur(image, AugmentSpec(size, blur_probability=1.0), seed=[3, 4])
        assert np.array_equal(out.numpy(), image.numpy()) is not blurs
    config = make_config(tmp_path, unprepared_dir, export_at_end=False).replace(data={"use_blur": True})
    with caplog.at_level(logging.WARNING, logger="tf_simclr"):
        check(config)
    assert any("--use_blur has no effect at --image_size=16" in r.message for r in caplog.records)
    assert not os.path.exists(config.train.model_dir)


# ------------------------------------------------------------------ replicas, steps, contradictions
def test_batch_must_split_evenly_over_replicas(tmp_path, unprepared_dir):
    config = make_config(tmp_path, unprepared_dir, train_batch_size=7)
    with pytest.raises(ValueError, match=r"--train_batch_size=7 must be a positive multiple of the number of "
                                         r"replicas \(2\).* Nearest valid sizes: 6 or 8") as e:
        check(config, num_replicas=2)
    suggested = [int(n) for n in re.findall(r"sizes: (\d+) or (\d+)", str(e.value))[0]]
    assert all(n % 2 == 0 and abs(n - 7) == 1 for n in suggested)
    check(config.replace(run={"mode": "eval"}), num_replicas=2)  # Eval does not split the training batch.
    assert tree(tmp_path) == []


class _SizedSource(sources.BaseSource):
    """Metadata of a labelled dataset of `n` training examples (nothing to read)."""

    name, num_classes, splits = "sized", 10, ("train", "validation")

    def __init__(self, n):
        self.n = n

    def num_examples(self, split):
        return self.n


@pytest.mark.parametrize("num_examples", [100, 1000, 60000])
def test_plan_is_checked_before_work_with_the_plans_own_rule(num_examples, tmp_path):
    """Every combination the plan refuses is refused before work, with the plan's message, and no other."""
    refused = 0
    for batch, epochs, steps, ckpt_steps, ckpt_epochs, spe in [
        (b, e, s, c, ce, x)
        for b in (64, 256) for e in (1, 3) for s in (0, 30, 40) for c in (0, 10, 20) for ce in (1, 2) for x in (1, 2, 4, 5)
    ]:
        config = make_config(tmp_path, export_at_end=False, train_batch_size=batch, train_epochs=epochs,
                             train_steps=steps, checkpoint_steps=ckpt_steps, checkpoint_epochs=ckpt_epochs,
                             steps_per_execution=spe, warmup_epochs=0)
        try:
            make_plan(config, num_examples)
            plan_error = None
        except ValueError as e:
            plan_error = str(e)
        try:
            checks.check_before_work(config, num_replicas=1, source=_SizedSource(num_examples))
            early_error = None
        except ValueError as e:
            early_error = str(e)
        assert early_error == plan_error, (batch, epochs, steps, ckpt_steps, ckpt_epochs, spe)
        refused += plan_error is not None
        # Without the dataset's size, only explicit step counts are judged, and never wrongly.
        try:
            checks.check_before_work(config, num_replicas=1, source=None)
        except ValueError as e:
            assert str(e) == plan_error
    assert refused > 0  # The rule fired for some combinations: the comparison is not vacuous.
    assert tree(tmp_path) == []


def test_deterministic_needs_a_seed(tmp_path):
    config = make_config(tmp_path, deterministic=True)
    with pytest.raises(ValueError, match="--deterministic needs --seed"):
        checks.check_config(config)
    checks.check_config(config.replace(train={"seed": 0}))


def test_eval_of_a_pretraining_without_a_head_has_nothing_to_score(tmp_path, unprepared_dir):
    config = make_config(tmp_path, unprepared_dir, mode="eval", lineareval_while_pretraining=False)
    with pytest.raises(ValueError, match="--mode=eval has nothing to evaluate"):
        check(config)
    check(config.replace(run={"feature_eval": True}))
    assert tree(tmp_path) == []


# ------------------------------------------------------------------ writable folders
def test_unwritable_or_file_paths_are_refused_and_nothing_is_created(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--model_dir=.*a_file is a file, not a folder"):
        checks.check_writable("--model_dir", str(a_file))
    with pytest.raises(ValueError, match=r"--export_dir=.*cannot be created: .*a_file is a file"):
        checks.check_writable("--export_dir", str(a_file / "sub" / "dir"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # Root ignores permission bits, so deny through os.access itself.
    monkeypatch.setattr(os, "access", lambda p, m: False if os.path.abspath(p) == str(locked) else real_access(p, m))
    with pytest.raises(ValueError, match=r"--model_dir=.*not writable \(its parent .*locked denies write access\)"):
        checks.check_writable("--model_dir", str(locked / "a" / "b"))
    checks.check_writable("--model_dir", str(tmp_path / "new" / "deeper"))
    assert tree(tmp_path) == [str(a_file), str(locked)]


def test_export_dir_is_checked_only_when_something_is_exported(tmp_path, unprepared_dir):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    config = make_config(tmp_path, unprepared_dir, export_dir=str(a_file), export_at_end=True)
    with pytest.raises(ValueError, match="--export_dir="):
        check(config)
    check(config.replace(train={"export_at_end": False}))
    assert tree(tmp_path) == [str(a_file)]


# ------------------------------------------------------------------ checkpoints of another architecture
def _save_tiny_checkpoint(directory, model_config, step=3):
    model = factory.build_model(model_config)
    config = Config(model=model_config)
    return ckpt_lib.save_checkpoint(str(directory), step, model, meta={"config": config.to_dict()})


def test_checkpoint_of_another_width_lists_the_same_variables_restore_would_refuse(tmp_path, unprepared_dir):
    folder = _save_tiny_checkpoint(tmp_path / "pretrained", TINY)
    wider = dataclasses.replace(TINY, width_multiplier=0.25)
    config = make_config(tmp_path, unprepared_dir, model=wider, train_mode="finetune", checkpoint=str(tmp_path / "pretrained"))
    with pytest.raises(ValueError) as e:
        check(config)
    message = str(e.value)
    assert message.startswith(f"--checkpoint={tmp_path / 'pretrained'}") and "\n" not in message
    assert "--width_multiplier=0.125 (here 0.25)" in message
    # Second code path: the real restore, which loads the arrays.
    target = factory.build_model(wider)
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as restore_error:
        ckpt_lib.restore_checkpoint(folder, target, None, exclude_parts=("supervised_head",))
    restore_count = int(re.search(r"\((\d+) variables differ\)", str(restore_error.value)).group(1))
    assert f"{restore_count} variables do not match" in message
    assert restore_count == len(checks.checkpoint_mismatches(folder, target, ("supervised_head",))) > 0
    # The same flags as the checkpoint pass, and restore agrees.
    same = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=folder)
    check(same)
    assert checks.checkpoint_mismatches(folder, factory.build_model(TINY)) == []
    assert not os.path.exists(config.train.model_dir)


def test_stored_shapes_read_from_headers_equal_the_arrays(tmp_path):
    folder = _save_tiny_checkpoint(tmp_path, TINY)
    with np.load(os.path.join(folder, ckpt_lib.VARIABLES_FILE)) as arrays:
        assert ckpt_lib.stored_shapes(folder) == {k: arrays[k].shape for k in arrays.files}


def test_resuming_a_model_dir_of_another_depth_is_refused(tmp_path, unprepared_dir):
    model_dir = tmp_path / "run"
    _save_tiny_checkpoint(model_dir, dataclasses.replace(TINY, resnet_depth=34))
    before = tree(tmp_path)
    config = make_config(tmp_path, unprepared_dir, lineareval_while_pretraining=False)
    with pytest.raises(ValueError, match=r"--model_dir=.*ckpt-3, written by a different architecture: \d+ variables .*--resnet_depth=34 \(here 18\)"):
        check(config)
    assert tree(tmp_path) == before


def test_missing_or_empty_checkpoint_paths(tmp_path, unprepared_dir):
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"--checkpoint=.*nope does not exist"):
        check(config)
    with pytest.raises(ValueError, match=r"--checkpoint=.*nope does not exist"):  # --mode=export reads it too.
        check(config.replace(run={"mode": "export"}))
    check(config.replace(run={"mode": "eval"}))  # Eval follows model_dir, not --checkpoint.
    (tmp_path / "empty").mkdir()
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"--checkpoint=.*empty holds no tf_simclr checkpoint"):
        check(config)
    # An existing but empty model_dir is no checkpoint either (check_config lets it through).
    (tmp_path / "run").mkdir()
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune")
    checks.check_config(config)
    with pytest.raises(ValueError, match=r"--train_mode=finetune needs --checkpoint: --model_dir=.* holds no checkpoint"):
        check(config)


def test_export_of_another_architecture_is_refused_from_its_metadata(tmp_path, unprepared_dir):
    module = tmp_path / "exported" / "7"
    module.mkdir(parents=True)
    (module / "saved_model.pb").write_bytes(b"")  # Only the metadata is read for this check.
    stored = Config(model=dataclasses.replace(TINY, proj_head_mode="linear", num_proj_layers=5))
    (module / exports_dir.EXPORT_META_FILE).write_text(json.dumps({"config": stored.to_dict()}))
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "exported"))
    with pytest.raises(ValueError, match=r"is an export of a different architecture: .*--proj_head_mode=linear \(here nonlinear\)"):
        check(config)
    # Same head mode: num_proj_layers does not shape a linear head, so it is not a difference.
    linear = make_config(tmp_path, unprepared_dir, model=dataclasses.replace(TINY, proj_head_mode="linear"),
                         train_mode="finetune", checkpoint=str(tmp_path / "exported"))
    check(linear)


def test_cifar_stem_stride_differences_are_refused_though_every_shape_matches(tmp_path, unprepared_dir):
    strided = dataclasses.replace(TINY, cifar_stem_stride=2)
    folder = _save_tiny_checkpoint(tmp_path / "pretrained", strided)
    assert checks.checkpoint_mismatches(folder, factory.build_model(TINY)) == []  # Shapes cannot tell them apart.
    config = make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "pretrained"))
    with pytest.raises(ValueError, match=r"--checkpoint=.* was trained with --cifar_stem_stride=2 \(here 1\)"):
        check(config)
    check(make_config(tmp_path, unprepared_dir, model=strided, train_mode="finetune", checkpoint=folder))
    # Resuming a model_dir, and an export's metadata.
    _save_tiny_checkpoint(tmp_path / "run", strided)
    with pytest.raises(ValueError, match=r"--model_dir=.*ckpt-3, which was trained with --cifar_stem_stride=2"):
        check(make_config(tmp_path, unprepared_dir, lineareval_while_pretraining=False))
    module = tmp_path / "exported" / "7"
    module.mkdir(parents=True)
    (module / "saved_model.pb").write_bytes(b"")
    (module / exports_dir.EXPORT_META_FILE).write_text(json.dumps({"config": Config(model=TINY).to_dict()}))
    exported = make_config(tmp_path, unprepared_dir, model=strided, train_mode="finetune",
                           checkpoint=str(tmp_path / "exported"), model_dir=str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"export of a different architecture: .*--cifar_stem_stride=1 \(here 2\)"):
        check(exported)
    # Metadata written before the flag existed means stride 1.
    old_meta = Config(model=TINY).to_dict()
    del old_meta["model"]["cifar_stem_stride"]
    (module / exports_dir.EXPORT_META_FILE).write_text(json.dumps({"config": old_meta}))
    with pytest.raises(ValueError, match=r"--cifar_stem_stride=1 \(here 2\)"):
        check(exported)
    check(make_config(tmp_path, unprepared_dir, train_mode="finetune", checkpoint=str(tmp_path / "exported"),
                      model_dir=str(tmp_path / "other")))


def test_device_augmentation_is_for_pretraining_only(tmp_path):
    config = make_config(tmp_path, train_mode="finetune", checkpoint=str(tmp_path))
    device = config.replace(data={"augment_on": "device"})
    checks.check_config(config)
    with pytest.raises(ValueError, match="--augment_on=device applies to pretraining only"):
        checks.check_config(device)
    checks.check_config(device.replace(train={"train_mode": "pretrain", "checkpoint": None}))
