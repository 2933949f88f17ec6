"""The BACKBONES registry (models.backbones): lookup errors, registering, wrapping any image model, stages, stride."""

import re

import keras
import numpy as np
import pytest

import helpers
from tf_simclr.models import backbones
from tf_simclr.models.backbones import (
    BACKBONES,
    FEATURES_KEY,
    as_feature_encoder,
    build_encoder,
    encoder_stages,
    get_backbone,
    register_backbone,
    total_stride,
)
from tf_simclr.models.factory import build_model


@pytest.fixture
def registry():
    """Registers backbones for one test and removes them afterwards (the registry is process-wide)."""
    before = dict(BACKBONES)
    yield
    BACKBONES.clear()
    BACKBONES.update(before)


def _images(n=2, size=16, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _vector_model(size=16, dim=5, name="vector_net"):
    """conv -> ReLU -> global average pool -> Dense: images to [B, dim]."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(dim, name="dense")(x), name=name)


def _map_model(size=16, channels=6, name="map_net"):
    """A conv stack that returns a feature map [B, size/2, size/2, channels]."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="conv2")(x)
    return keras.Model(inputs, x, name=name)


# ----------------------------------------------------------------------------- Registry


def test_resnet_is_registered_and_unknown_names_list_the_registered_ones(registry):
    assert "resnet" in BACKBONES and get_backbone("resnet") is BACKBONES["resnet"]
    register_backbone("tiny_vector", lambda config: _vector_model(config.image_size))
    names = sorted(BACKBONES)  # Other tests' backbones may be registered too; ours are there.
    assert {"resnet", "tiny_vector"} <= set(names)
    with pytest.raises(ValueError, match=rf"backbone='nope'.*{re.escape(str(names))}.*register_backbone.*module:attr"):
        get_backbone("nope")
    with pytest.raises(ValueError, match="backbone='nope'"):
        build_encoder(helpers.tiny_model_config(backbone="nope"))


def test_a_module_attribute_name_imports_and_registers_a_backbone_or_a_build_function(registry, tmp_path,
                                                                                     monkeypatch):
    (tmp_path / "my_encoders_for_tests.py").write_text(
        "import sys\nsys.modules[__name__].imported = getattr(sys.modules[__name__], 'imported', 0) + 1\n"
        "import helpers\nMICRO = helpers.MICRO\nbuild = helpers.micro_convnet\nnot_callable = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "my_encoders_for_tests:MICRO"
    assert name not in BACKBONES
    imported = get_backbone(name)
    assert BACKBONES[name] is imported and imported == helpers.MICRO  # Every field, the stages included.
    assert get_backbone(name) is imported  # Registered on first use, not imported again.
    import my_encoders_for_tests

    assert my_encoders_for_tests.imported == 1
    model = build_model(helpers.tiny_model_config(backbone=name))
    assert model(_images(), training=False)["final_avg_pool"].shape == (2, 12)
    function = get_backbone("my_encoders_for_tests:build")  # A bare build function: default stages and stride.
    assert function.build is helpers.micro_convnet and function.stages is None and function.total_stride is None

    for bad, message in [
        ("no_such_module_for_tests:build", r"cannot import module 'no_such_module_for_tests'.*PYTHONPATH"),
        ("my_encoders_for_tests:missing", r"has no function or Backbone named 'missing'"),
        ("my_encoders_for_tests:not_callable", r"has no function or Backbone named 'not_callable'"),
        (":build", r"named module:attribute, e.g. my_encoders:mobilenet"),
    ]:
        with pytest.raises(ValueError, match=message):
            get_backbone(bad)
        assert bad not in BACKBONES


def test_register_backbone_refuses_duplicates_unless_overwritten(registry):
    first = register_backbone("tiny_vector", lambda config: _vector_model(config.image_size))
    with pytest.raises(ValueError, match="'tiny_vector' is already registered.*overwrite=True"):
        register_backbone("tiny_vector", lambda config: _map_model(config.image_size))
    assert BACKBONES["tiny_vector"] is first
    with pytest.raises(ValueError, match="'resnet' is already registered"):
        register_backbone("resnet", lambda config: _vector_model())
    second = register_backbone("tiny_vector", lambda config: _map_model(config.image_size), overwrite=True)
    assert BACKBONES["tiny_vector"] is second and second is not first
    for bad in ("", None):
        with pytest.raises(ValueError, match="non-empty name"):
            register_backbone(bad, lambda config: _vector_model())


def test_registered_check_runs_before_building(registry):
    built = []

    def check(config):
        if config.image_size != 16:
            raise ValueError(f"tiny_vector needs --image_size=16. Received: {config.image_size}")

    def build(config):
        built.append(config.image_size)
        return _vector_model(config.image_size)

    register_backbone("tiny_vector", build, check=check)
    with pytest.raises(ValueError, match="--image_size=16. Received: 20"):
        build_encoder(helpers.tiny_model_config(backbone="tiny_vector", image_size=20))
    assert built == []  # The check failed first: nothing was built.
    assert FEATURES_KEY in build_encoder(helpers.tiny_model_config(backbone="tiny_vector")).output
    assert built == [16]


def test_a_registered_backbone_builds_a_whole_simclr_model(registry):
    register_backbone("tiny_vector", lambda config: _vector_model(config.image_size, dim=7))
    model = build_model(helpers.tiny_model_config(backbone="tiny_vector"), num_classes=3)
    out = model(_images())
    assert tuple(out["final_avg_pool"].shape) == (2, 7)
    assert tuple(out["proj_head_output"].shape) == (2, 16) and tuple(out["logits_sup"].shape) == (2, 3)


# ----------------------------------------------------------------------------- as_feature_encoder


def test_vector_output_becomes_final_avg_pool():
    inner = _vector_model()
    encoder = as_feature_encoder(inner)
    assert encoder is not inner and encoder.name == "encoder"
    x = _images()
    out = encoder(x)
    assert set(out) == {FEATURES_KEY}
    np.testing.assert_allclose(out[FEATURES_KEY], inner(x), rtol=1e-6, atol=1e-7)
    assert [v.path for v in encoder.weights] == [v.path for v in inner.weights]  # Same variables, no copies.


def test_feature_map_output_is_average_pooled():
    inner = _map_model()
    encoder = as_feature_encoder(inner, name="wrapped")
    x = _images(seed=1)
    feature_map = keras.ops.convert_to_numpy(inner(x))
    assert feature_map.shape == (2, 8, 8, 6)
    got = keras.ops.convert_to_numpy(encoder(x)[FEATURES_KEY])
    np.testing.assert_allclose(got, feature_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert encoder.name == "wrapped"


def test_dict_models_are_kept_and_need_final_avg_pool():
    resnet_encoder = backbones.resnet.build(helpers.tiny_model_config())
    assert as_feature_encoder(resnet_encoder) is resnet_encoder
    inputs = keras.Input((16, 16, 3))
    no_features = keras.Model(inputs, {"other": keras.layers.GlobalAveragePooling2D()(inputs)})
    with pytest.raises(ValueError, match="'final_avg_pool'.*\\['other'\\]"):
        as_feature_encoder(no_features)


def test_outputs_of_other_ranks_are_rejected():
    inputs = keras.Input((16, 16, 3))
    sequence = keras.Model(inputs, keras.layers.Reshape((256, 3))(inputs), name="seq_net")
    with pytest.raises(ValueError, match=r"\[B, D\].*\(None, 256, 3\).*seq_net"):
        as_feature_encoder(sequence)


def test_list_outputs_use_the_last_one():
    inputs = keras.Input((16, 16, 3))
    early = keras.layers.Conv2D(2, 3, name="early")(inputs)
    late = keras.layers.Conv2D(3, 3, strides=2, name="late")(early)
    inner = keras.Model(inputs, [early, late])
    x = _images(seed=2)
    expected = keras.ops.convert_to_numpy(inner(x)[1]).mean(axis=(1, 2))
    np.testing.assert_allclose(as_feature_encoder(inner)(x)[FEATURES_KEY], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Stages and stride


def test_default_stages_are_one_per_weighted_layer_unwrapping_a_model_wrapped_whole(registry):
    register_backbone("tiny_map", lambda config: _map_model(config.image_size))
    config = helpers.tiny_model_config(backbone="tiny_map")
    encoder = build_encoder(config)
    # The wrapper holds the whole user model as one layer; the stages are that model's layers.
    assert [l.name for l in encoder.layers if l.weights] == ["map_net"]
    stages = encoder_stages(config, encoder)
    assert [[l.name for l in stage] for stage in stages] == [["conv1"], ["conv2"]]
    # Freezing by these stages works end to end (fine_tune_after_block=0 freezes conv1 only).
    model = build_model(config, num_classes=2, train_mode="finetune")
    from tf_simclr.config import Config, TrainConfig
    from tf_simclr.models.factory import freeze

    freeze(model, Config(model=config, train=TrainConfig(model_dir="/unused", train_mode="finetune", fine_tune_after_block=0)))
    trainable = {v.path for v in model.encoder.trainable_weights}
    assert trainable == {v.path for v in model.encoder.get_layer("map_net").get_layer("conv2").weights}


def test_default_stages_of_a_layered_model_are_its_weighted_layers(registry):
    def flat(config):  # Not wrapped whole: its dict output is kept, so its own layers are the stages.
        inputs = keras.Input((config.image_size, config.image_size, 3))
        x = keras.layers.Conv2D(3, 3, name="a")(inputs)
        x = keras.layers.ReLU(name="no_weights")(x)
        x = keras.layers.Conv2D(4, 3, name="b")(x)
        return keras.Model(inputs, {FEATURES_KEY: keras.layers.GlobalAveragePooling2D(name="pool")(x)})

    register_backbone("flat", flat)
    config = helpers.tiny_model_config(backbone="flat")
    assert [[l.name for l in stage] for stage in encoder_stages(config, build_encoder(config))] == [["a"], ["b"]]


def test_registered_stages_are_used(registry):
    register_backbone("tiny_map", lambda config: _map_model(config.image_size),
                      stages=lambda encoder: [[encoder.layers[-1]]])
    config = helpers.tiny_model_config(backbone="tiny_map")
    encoder = build_encoder(config)
    assert encoder_stages(config, encoder) == [[encoder.layers[-1]]]


def test_resnet_stages_are_the_stem_and_four_block_groups():
    config = helpers.tiny_model_config()
    stages = encoder_stages(config, build_encoder(config))
    assert len(stages) == 5
    assert all(l.name.startswith("initial_") for l in stages[0])
    for k in range(1, 5):
        assert stages[k] and all(l.name.startswith(f"block_group{k}_") for l in stages[k])


def test_total_stride(registry):
    assert total_stride(helpers.tiny_model_config(image_size=32)) == 8  # CIFAR stem.
    assert total_stride(helpers.tiny_model_config(image_size=64)) == 32
    register_backbone("tiny_map", lambda config: _map_model(config.image_size))
    assert total_stride(helpers.tiny_model_config(backbone="tiny_map")) == 1  # Not declared: 1.
    register_backbone("strided", lambda config: _map_model(config.image_size), total_stride=lambda config: 2)
    assert total_stride(helpers.tiny_model_config(backbone="strided")) == 2
