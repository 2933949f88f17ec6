"""Encoders by name: `--backbone=resnet`, or any Keras model you register.

A backbone is a function `ModelConfig -> keras.Model` mapping images
`[B, H, W, 3]` (float32 in [0, 1]) to a feature vector `[B, D]` (a feature map
`[B, h, w, D]` is average-pooled; a dict with `final_avg_pool` is kept as it
is). Bring your own encoder in one call:

    import keras, tf_simclr

    def mobilenet(config):  # Anything from keras.applications, keras-hub, or your own.
        return keras.applications.MobileNetV3Small(
            input_shape=(config.image_size, config.image_size, 3), include_top=False,
            weights=None, pooling="avg", include_preprocessing=False)

    tf_simclr.register_backbone("mobilenet_v3_small", mobilenet)
    # then ModelConfig(backbone="mobilenet_v3_small"): pretrains, fine-tunes, exports, reloads.

From the command line, name the function (or a `Backbone`) as `module:attribute`:
`python run.py --backbone=my_encoders:mobilenet ...` imports `my_encoders` (on PYTHONPATH)
and registers it under that name, which checkpoints record, so later exports,
evaluations and fine-tuning import it again by themselves.

`stages` cuts the encoder into the groups `--fine_tune_after_block=k` freezes
(stages 0..k); by default each top-level layer with weights is a stage.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from tf_simclr.models.backbones import resnet

FEATURES_KEY = "final_avg_pool"  # The representation every backbone provides (the reference's name).


@dataclasses.dataclass(frozen=True)
class Backbone:
    """How to build one kind of encoder, and what the rest of tf_simclr may ask of it.

    Attributes:
        build: `ModelConfig -> keras.Model` (see the module docstring).
        stages: `encoder -> [[layers of stage 0], [stage 1], ...]` for freezing;
            None: each layer with weights of the built model is one stage.
        check: `ModelConfig -> None`, raising ValueError for flag values the
            backbone cannot build (run before any work); None: no check.
        total_stride: `ModelConfig -> int`, the downsampling factor (the
            smallest useful image size); None: 1.
    """

    build: Callable
    stages: Optional[Callable] = None
    check: Optional[Callable] = None
    total_stride: Optional[Callable] = None


BACKBONES: dict[str, Backbone] = {
    "resnet": Backbone(build=resnet.build, stages=resnet.stages, check=resnet.check_config,
                       total_stride=resnet.total_stride),
}


def register_backbone(name: str, build: Callable, *, stages: Optional[Callable] = None,
                      check: Optional[Callable] = None, total_stride: Optional[Callable] = None,
                      overwrite: bool = False) -> Backbone:
    """Makes `ModelConfig(backbone=name)` (and `--backbone=name`) build encoders with `build`.

    Register before building models, in every process that builds one (a
    pretraining run, and later the export or fine-tuning of its checkpoints).

    Returns:
        The registered `Backbone`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A backbone needs a non-empty name. Received: {name!r}")
    if name in BACKBONES and not overwrite:
        raise ValueError(f"A backbone named {name!r} is already registered; pass overwrite=True to replace it.")
    BACKBONES[name] = Backbone(build=build, stages=stages, check=check, total_stride=total_stride)
    return BACKBONES[name]


def get_backbone(name: str) -> Backbone:
    """The registered backbone `name`, or the one a `module:attribute` name imports (registered on first use)."""
    if name not in BACKBONES and ":" in name:
        return register_backbone(name, **_import_backbone(name))
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone. Received: backbone={name!r}; registered: {sorted(BACKBONES)} "
            "(add one with tf_simclr.register_backbone, or name one as module:attribute, e.g. "
            "--backbone=my_encoders:mobilenet)."
        )
    return BACKBONES[name]


def _import_backbone(name: str) -> dict:
    """`register_backbone`'s arguments from `module:attribute`: a `Backbone`, or a build function.

    The name is what checkpoints record, so exporting, evaluating or fine-tuning the run later imports the same
    encoder without any code: the module must be importable there too (installed, or on PYTHONPATH).
    """
    import importlib

    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--backbone={name!r}: a backbone to import is named module:attribute, "
                         "e.g. my_encoders:mobilenet.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--backbone={name}: cannot import module {module_name!r} ({e}). Put it on PYTHONPATH or "
                         "install it.") from e
    found = getattr(module, attribute, None)
    if isinstance(found, Backbone):
        return {field.name: getattr(found, field.name) for field in dataclasses.fields(found)}
    if not callable(found):
        raise ValueError(f"--backbone={name}: module {module_name!r} has no function or Backbone named "
                         f"{attribute!r}.")
    return {"build": found}


def as_feature_encoder(model: keras.Model, name: str = "encoder") -> keras.Model:
    """A functional model `images -> dict` with `final_avg_pool` `[B, D]`, from any image model.

    Models returning a dict with `final_avg_pool` (the ResNet) are returned as
    they are; a vector output becomes `final_avg_pool`; a feature map is
    average-pooled first.
    """
    outputs = model.output if hasattr(model, "output") else None
    if isinstance(outputs, dict):
        if FEATURES_KEY not in outputs:
            raise ValueError(f"A backbone returning a dict must have {FEATURES_KEY!r}. Received keys: {sorted(outputs)}")
        return model
    shape = tuple(model.input_shape[1:]) if getattr(model, "input_shape", None) else (None, None, 3)
    images = keras.Input(shape, name="images")
    features = model(images)
    if isinstance(features, (list, tuple)):
        features = features[-1]
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name=FEATURES_KEY)(features)
    elif len(features.shape) != 2:
        raise ValueError(
            f"A backbone must map images to [B, D] features (or a [B, h, w, D] map). Received an output of "
            f"shape {tuple(features.shape)} from {model.name}."
        )
    return keras.Model(images, {FEATURES_KEY: features}, name=name)


def build_encoder(config) -> keras.Model:
    """The encoder `config.backbone` names, as a functional model `images -> dict` (see `as_feature_encoder`)."""
    backbone = get_backbone(config.backbone)
    if backbone.check is not None:
        backbone.check(config)
    return as_feature_encoder(backbone.build(config))


def encoder_stages(config, encoder: keras.Model) -> list[list]:
    """The encoder's freezing stages (`Backbone.stages`, or one per layer with weights)."""
    backbone = get_backbone(config.backbone)
    if backbone.stages is not None:
        return backbone.stages(encoder)
    return [[layer] for layer in _weighted_layers(encoder)]


def _weighted_layers(model: keras.Model) -> list:
    """Top-level layers with weights, in order; a model wrapped whole (`as_feature_encoder`) by its own."""
    weighted = [layer for layer in model.layers if layer.weights]
    if len(weighted) == 1 and isinstance(weighted[0], keras.Model):
        return _weighted_layers(weighted[0])
    return weighted


def total_stride(config) -> int:
    backbone = get_backbone(config.backbone)
    return backbone.total_stride(config) if backbone.total_stride is not None else 1
