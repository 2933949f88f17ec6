"""The model factory (models.factory): build_model, model_from_config, which runs get a head, and what fine-tuning freezes."""

import dataclasses

import keras
import numpy as np
import pytest

import helpers
from tf_simclr.config import Config, TrainConfig
from tf_simclr.losses import NTXent
from tf_simclr.models import factory
from tf_simclr.models.factory import build_model, check_fine_tune_after_block, has_supervised_head, model_from_config

TINY = helpers.tiny_model_config()


def _config(model=None, **train):
    return Config(model=helpers.tiny_model_config(**(model or {})), train=TrainConfig(model_dir="/unused", **train))


def _images(n=2, seed=0):
    return np.random.default_rng(seed).random((n, 16, 16, 3), dtype=np.float32)


# ----------------------------------------------------------------------------- build_model


def test_build_model_defaults_to_nt_xent_and_is_built():
    model = build_model(TINY)
    assert isinstance(model.objective, NTXent)
    assert model.objective.temperature == 0.1 and model.objective.hidden_norm
    assert model.supervised_head is None and model.train_mode == "pretrain"
    assert model.built and all(layer.built for layer in model.layers)
    assert model.projection_head.mode == TINY.proj_head_mode and len(model.projection_head.dense_layers) == 2
    custom = NTXent(temperature=0.5, hidden_norm=False)
    assert build_model(TINY, objective=custom).objective is custom


def test_build_model_supervised_head_and_zero_init():
    model = build_model(TINY, num_classes=4, zero_init_logits_layer=True)
    assert model.supervised_head.num_classes == 4
    np.testing.assert_array_equal(model(_images())["logits_sup"], 0.0)
    assert np.any(build_model(TINY, num_classes=4).supervised_head.linear_layer.kernel.numpy())
    finetune = build_model(TINY, num_classes=4, train_mode="finetune")
    assert finetune.objective is None
    with pytest.raises(ValueError, match="supervised_head"):
        build_model(TINY, train_mode="finetune")


def test_build_model_with_global_bn_synchronizes_every_batch_norm():
    model = build_model(helpers.tiny_model_config(global_bn=True))
    bns = [l for l in model.encoder.layers if isinstance(l, keras.layers.BatchNormalization)]
    bns += model.projection_head.bn_layers
    assert bns and all(l.synchronized for l in bns)


# ----------------------------------------------------------------------------- has_supervised_head / model_from_config


@pytest.mark.parametrize(
    "train_mode, linear_eval, classes, expected",
    [("finetune", False, 10, True), ("finetune", True, 10, True), ("pretrain", True, 10, True),
     ("pretrain", False, 10, False), ("pretrain", True, 0, False), ("pretrain", True, None, False),
     ("finetune", False, None, False)],
)
def test_has_supervised_head(train_mode, linear_eval, classes, expected):
    config = _config(train_mode=train_mode, lineareval_while_pretraining=linear_eval)
    assert has_supervised_head(config, classes) is expected


def test_model_from_config_pretrain_uses_the_configured_loss_and_head_rule():
    config = _config(temperature=0.3, hidden_norm=False, lineareval_while_pretraining=True, zero_init_logits_layer=True,
                     skip_nonfinite_steps=True)
    model = model_from_config(config, 5)
    assert isinstance(model.objective, NTXent)
    assert model.objective.temperature == pytest.approx(0.3) and not model.objective.hidden_norm
    assert model.supervised_head.num_classes == 5 and model.skip_nonfinite
    np.testing.assert_array_equal(model.supervised_head.linear_layer.kernel.numpy(), 0.0)
    assert model.device_augment is None
    assert model_from_config(config, 0).supervised_head is None  # No labels, no head.
    no_eval = model_from_config(config.replace(train={"lineareval_while_pretraining": False}), 5)
    assert no_eval.supervised_head is None
    assert all(v.trainable for v in model.weights if "moving" not in v.path)  # Pretraining freezes nothing.


def test_model_from_config_plain_batch_norm_keeps_the_variables():
    config = _config(model={"global_bn": True})
    synced = model_from_config(config, None)
    plain = model_from_config(config, None, plain_batch_norm=True)
    assert [v.path for v in synced.weights] == [v.path for v in plain.weights]
    assert all(l.synchronized for l in synced.projection_head.bn_layers)
    assert not any(l.synchronized for l in plain.encoder.layers if isinstance(l, keras.layers.BatchNormalization))


def test_model_from_config_adds_device_augment_only_when_pretraining():
    config = _config(seed=3)
    augmented = model_from_config(config, None, device_augment=True)
    assert augmented.device_augment is not None and "device_augment" in augmented.checkpoint_parts()
    views = augmented.views(np.random.default_rng(0).integers(0, 256, (2, 20, 20, 3), dtype=np.uint8))
    assert tuple(views.shape) == (4, 16, 16, 3)
    finetune = model_from_config(_config(train_mode="finetune"), 3, device_augment=True)
    assert finetune.device_augment is None


# ----------------------------------------------------------------------------- Freezing (fine-tuning)


def _stage_of(layer_name):
    """Which stage a ResNet layer belongs to, from its name alone (-1: none)."""
    if layer_name.startswith("initial_"):
        return 0
    for k in range(1, 5):
        if layer_name.startswith(f"block_group{k}_"):
            return k
    return -1


@pytest.mark.parametrize("block", [-1, 0, 2, 4])
def test_freeze_up_to_block_freezes_exactly_those_stages(block):
    config = _config(train_mode="finetune", fine_tune_after_block=block)
    model = model_from_config(config, 3)  # Applies factory.freeze.
    for layer in model.encoder.layers:
        if not layer.weights:
            continue
        assert layer.trainable == (_stage_of(layer.name) > block), layer.name
    frozen = [v for l in model.encoder.layers if _stage_of(l.name) <= block for v in l.weights]
    trainable_ids = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in trainable_ids for v in frozen)
    assert model.supervised_head.trainable_weights  # The head always trains.
    if block == 4:
        assert model.encoder.trainable_weights == []  # Linear evaluation.


def test_frozen_batch_norm_statistics_do_not_drift():
    model = model_from_config(_config(train_mode="finetune", fine_tune_after_block=1), 3)
    frozen_bn = model.encoder.get_layer("block_group1_block0_bn1")
    trained_bn = model.encoder.get_layer("block_group2_block0_bn1")
    frozen_before, trained_before = frozen_bn.moving_mean.numpy().copy(), trained_bn.moving_mean.numpy().copy()
    model(_images(4, seed=1), training=True)
    np.testing.assert_array_equal(frozen_bn.moving_mean.numpy(), frozen_before)
    assert not np.allclose(trained_bn.moving_mean.numpy(), trained_before)


@pytest.mark.parametrize("selector, trained", [(0, 0), (1, 1), (-1, 2), (2, 2)])
def test_projection_layers_after_the_selected_one_are_frozen(selector, trained):
    config = _config(model={"ft_proj_selector": selector}, train_mode="finetune", fine_tune_after_block=4)
    model = model_from_config(config, 10)
    head = model.projection_head
    assert len(head.dense_layers) == 2
    expected = [v.path for layer in head.dense_layers[:trained] + head.bn_layers[:trained] for v in layer.trainable_weights]
    assert sorted(v.path for v in head.trainable_weights) == sorted(expected)
    assert (trained == 0) == (not expected)
    # Frozen head layers run batch norm in inference mode: their statistics stay.
    if trained < 2:
        bn = head.bn_layers[-1]
        before = bn.moving_mean.numpy().copy()
        model(_images(4, seed=2), training=True)
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


def test_freeze_applied_by_hand_equals_model_from_config():
    config = _config(model={"ft_proj_selector": 1}, train_mode="finetune", fine_tune_after_block=2)
    by_factory = model_from_config(config, 3)
    by_hand = build_model(config.model, num_classes=3, train_mode="finetune")
    factory.freeze(by_hand, config)
    assert [v.path for v in by_hand.trainable_variables] == [v.path for v in by_factory.trainable_variables]


# ----------------------------------------------------------------------------- check_fine_tune_after_block


def test_check_fine_tune_after_block_range_and_mode():
    for k in (-1, 0, 4):
        check_fine_tune_after_block(_config(train_mode="finetune", fine_tune_after_block=k))
    check_fine_tune_after_block(_config(train_mode="pretrain", fine_tune_after_block=-1))
    with pytest.raises(ValueError, match=r"must be in \[-1, 4\].*Received: 5"):  # Was stage_layers(encoder, 5).
        check_fine_tune_after_block(_config(train_mode="finetune", fine_tune_after_block=5))
    with pytest.raises(ValueError, match=r"must be in \[-1, 4\].*Received: -2"):
        check_fine_tune_after_block(_config(train_mode="finetune", fine_tune_after_block=-2))
    with pytest.raises(ValueError, match="only --train_mode=finetune"):
        check_fine_tune_after_block(_config(train_mode="pretrain", fine_tune_after_block=2))
    # A backbone with 3 stages: the last one is 2.
    check_fine_tune_after_block(_config(train_mode="finetune", fine_tune_after_block=2), num_stages=3)
    with pytest.raises(ValueError, match=r"must be in \[-1, 2\]"):
        check_fine_tune_after_block(_config(train_mode="finetune", fine_tune_after_block=3), num_stages=3)


def test_freeze_rejects_a_block_past_the_last_stage():
    config = _config(train_mode="finetune", fine_tune_after_block=4)
    model = build_model(config.model, num_classes=3, train_mode="finetune")
    with pytest.raises(ValueError, match="fine_tune_after_block"):
        factory.freeze(model, dataclasses.replace(config, train=dataclasses.replace(config.train, fine_tune_after_block=5)))
