"""Exports trained SimCLR models as TF2 SavedModels that are reusable TF-Hub modules.

One export is one folder, written atomically:

    <export_dir>/saved_model.pb, variables/, assets/   the TF-Hub module / TF Serving model
    <export_dir>/export_meta.json                       input contract, outputs, config, step
    <export_dir>/encoder.keras                          the same network as a native Keras 3 model

The SavedModel is built from an *export copy* of the model: the same layers with
plain batch norm (`synchronized=False`) and float32 weights copied from the live
model. The reference exported its training model as is, so modules trained with
`--global_bn` carried cross-replica batch-norm ops and could not be fine-tuned with
`hub.KerasLayer(trainable=True)` outside a distribution strategy
(google-research/simclr issues #108, #116, #195). The copy is also built away from
any `tf.distribute` strategy scope, so exporting from a callback of a distributed
run traces plain variables, not mirrored ones.

The SavedModel serves every loader a downstream app may pick: `tf.saved_model.load`,
`hub.load`, `hub.KerasLayer` (tf_keras), `keras.layers.TFSMLayer` (Keras 3) and TF
Serving (`serving_default`). `load_encoder` returns a trainable Keras 3 model.

Command line: `python -m tf_simclr.export --checkpoint runs/x [--out exported_models/x]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_simclr import checkpoint as ckpt_lib
from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig

log = logging.getLogger("tf_simclr")

FORMAT = "tf_simclr-hub-1"
EXPORT_META_FILE = "export_meta.json"
ENCODER_FILE = "encoder.keras"
DEFAULT_EXPORT_ROOT = "exported_models"
DEFAULT_OUTPUT = "final_avg_pool"  # What `default` aliases: the representation used downstream.
INFERENCE_ENDPOINT = "serve"  # TFSMLayer's default call_endpoint name.
TRAINING_ENDPOINT = "call_training"
SERVING_SIGNATURE = "serving_default"

_ENCODER_KEYS = (
    "initial_conv", "initial_max_pool", "block_group1", "block_group2", "block_group3", "block_group4", "final_avg_pool",
)
# Keys the export computes itself; a caller's meta cannot override them.
_RESERVED_META_KEYS = frozenset(
    {"format", "step", "input", "outputs", "output_keys", "default_output", "endpoints", "batch_norm", "versions", "created"}
)
_STEP_DIR_RE = re.compile(r"^\d+$")
_IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


# ------------------------------------------------------------------ Export copy
def _plain_layer_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh layer like `layer`, but with per-replica batch norm and float32 compute.

    `synchronized` (Keras batch norm) and `global_bn` (tf_simclr layers that own
    batch norms) are switched off: at export time there is one replica, so the
    statistics are identical, and the graph no longer needs a strategy. Layers
    frozen in training (`--fine_tune_after_block`) are trainable again: what to
    fine-tune is the downstream app's choice.
    """
    config = layer.get_config()
    config["trainable"] = True
    if "synchronized" in config:
        config["synchronized"] = False
    if "global_bn" in config:
        config["global_bn"] = False
    if "dtype" in config:
        config["dtype"] = "float32"  # The module's contract is float32 whatever the training policy.
    return layer.__class__.from_config(config)


def _copy_weights(source: keras.layers.Layer, target: keras.layers.Layer, part: str) -> None:
    """Assigns `source`'s weights to `target` by position (the copy has the same architecture)."""
    src, dst = list(source.weights), list(target.weights)
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise ValueError(
            f"The export copy of {part!r} does not match the model: {len(src)} vs {len(dst)} weights, "
            f"shapes {[tuple(v.shape) for v in src][:5]}... vs {[tuple(v.shape) for v in dst][:5]}..."
        )
    for a, b in zip(src, dst):
        b.assign(np.asarray(a.numpy(), dtype=np.float32))


def export_network(model: keras.Model) -> keras.Model:
    """Builds the export copy: a functional Keras model `images -> dict of outputs`.

    The outputs are the encoder's (`initial_conv` ... `final_avg_pool`), the
    projection head's input and output and, when the model has one, `logits_sup`
    (computed without the pretraining stop-gradient, since downstream users may
    fine-tune through it). Batch norm is never synchronized in the copy.

    Args:
        model: A built `SimCLRModel` (anything with `encoder`, `projection_head`,
            `supervised_head` and `ft_proj_selector`).

    Returns:
        A functional model whose weights equal `model`'s.
    """
    for attribute in ("encoder", "projection_head"):
        if not hasattr(model, attribute):
            raise TypeError(
                f"export expects a tf_simclr SimCLRModel (with .encoder and .projection_head). "
                f"Received: {type(model).__name__}"
            )
    # Layers built inside the copies (blocks' convolutions) take the global policy: float32 while copying,
    # whatever --precision the run trained with.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        return _build_export_network(model)
    finally:
        keras.config.set_dtype_policy(policy)


def _build_export_network(model: keras.Model) -> keras.Model:
    encoder = keras.models.clone_model(model.encoder, clone_function=_plain_layer_copy)
    projection_head = _plain_layer_copy(model.projection_head)
    supervised = getattr(model, "supervised_head", None)
    supervised_head = _plain_layer_copy(supervised) if supervised is not None else None

    images = keras.Input((None, None, 3), name="images")
    features = encoder(images)
    outputs = {key: features[key] for key in _ENCODER_KEYS}
    hiddens = projection_head(outputs["final_avg_pool"])
    outputs["proj_head_input"] = hiddens[0]
    outputs["proj_head_output"] = hiddens[-1]
    if supervised_head is not None:
        outputs["logits_sup"] = supervised_head(hiddens[int(getattr(model, "ft_proj_selector", 0))])
    network = keras.Model(images, outputs, name="simclr_export")

    _copy_weights(model.encoder, encoder, "encoder")
    _copy_weights(model.projection_head, projection_head, "projection_head")
    if supervised_head is not None:
        _copy_weights(supervised, supervised_head, "supervised_head")
    return network


def _module_outputs(network: keras.Model, images, training: bool) -> dict:
    outputs = {key: tf.cast(value, tf.float32) for key, value in network(images, training=training).items()}
    outputs["default"] = tf.identity(outputs[DEFAULT_OUTPUT], name="default")
    return outputs


class _Untracked:
    """Holds an object where `tf.train.Checkpoint` does not track (and so not save) it."""

    def __init__(self, value):
        self.value = value


class HubModule(tf.train.Checkpoint):
    """The object saved as the SavedModel: the reusable TF-Hub SavedModel interface.

    A `tf.train.Checkpoint` rather than a `tf.Module`, because TF-Hub's interface
    needs plain attributes named `variables` and `trainable_variables`, which are
    read-only properties on `tf.Module`. The Keras network itself is deliberately
    not tracked: the SavedModel then holds only the variables and the traced
    functions (saving the Keras object graph, ~900 objects for a ResNet-18, made
    saving and loading several times slower for nothing: `encoder.keras` is the
    Keras form).

    Attributes:
        variables: Every `tf.Variable`, batch-norm moving statistics included.
        trainable_variables: Those a fine-tuner should train (all but the moving statistics).
        regularization_losses: Empty: SimCLR's weight decay belongs to its optimizer
            (LARS), so a downstream app chooses its own regularization.
    """

    def __init__(self, network: keras.Model):
        super().__init__()
        self._network = _Untracked(network)
        self.variables = [v.value for v in network.variables]
        self.trainable_variables = [v.value for v in network.trainable_variables]
        self.regularization_losses = []

    @property
    def network(self) -> keras.Model:
        """The export copy whose variables the module holds."""
        return self._network.value

    @tf.function
    def __call__(self, images, training=False):
        """`images` float32 RGB in [0, 1], [B, H, W, 3] -> dict of float32 outputs."""
        return _module_outputs(self.network, images, bool(training))

    @tf.function(input_signature=[_IMAGE_SPEC])
    def serve(self, images):
        """Inference (batch norm uses moving statistics): the TF Serving signature."""
        return self.__call__(images, training=False)  # Reuses the traced graph.

    @tf.function(input_signature=[_IMAGE_SPEC])
    def call_training(self, images):
        """Training mode (batch statistics, moving averages updated), for `TFSMLayer`."""
        return self.__call__(images, training=True)

    def trace(self) -> None:
        """Traces `__call__` for both values of `training`, as TF-Hub fine-tuning needs."""
        for training in (False, True):
            self.__call__.get_concrete_function(_IMAGE_SPEC, training=training)


# ------------------------------------------------------------------ Metadata
def _known_image_size(model, meta: Optional[dict], image_size: Optional[int]) -> int:
    """The image size of the input contract: explicit, from meta's config, or the build shape."""
    if image_size:
        return int(image_size)
    config = (meta or {}).get("config") or {}
    size = (config.get("model") or {}).get("image_size") or (meta or {}).get("image_size")
    if size:
        return int(size)
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    for shape in shapes.values():
        if shape is not None and len(shape) == 4 and shape[1]:
            return int(shape[1])
    raise ValueError(
        "Cannot tell the model's image size for the export's input contract: pass "
        "meta={'config': config.to_dict()} or image_size=..."
    )


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def build_export_meta(network: keras.Model, step: int, image_size: int, meta: Optional[dict] = None) -> dict:
    """The contents of `export_meta.json` (see `exported_models/README.md`).

    Args:
        network: The export copy (its output shapes are measured on a probe batch).
        step: Global training step of the weights.
        image_size: Side of the square images the model was trained on.
        meta: Extra JSON-serializable facts (the trainer passes `config`,
            `dataset`, `num_classes`); keys the export computes are ignored.

    Returns:
        A JSON-serializable dict.
    """
    probe = np.zeros((1, image_size, image_size, 3), np.float32)
    shapes = {key: [None, *list(np.shape(value))[1:]] for key, value in network(probe, training=False).items()}
    shapes["default"] = shapes[DEFAULT_OUTPUT]
    keys = [*network.output, "default"]  # The network's outputs are a dict.
    extra = dict(meta or {})
    clashing = sorted(_RESERVED_META_KEYS & set(extra))
    if clashing:
        log.info("Export meta keys %s are computed by the export; ignoring the given values.", clashing)
    info = {k: v for k, v in extra.items() if k not in _RESERVED_META_KEYS}
    info.update(
        format=FORMAT,
        step=int(step),
        input={
            "name": "images",
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "color_space": "RGB",
            "layout": "channels_last",
            "shape": [None, image_size, image_size, 3],
            "image_size": image_size,
            "channels": 3,
            "note": "Trained on image_size x image_size; other sizes run (the encoder is fully convolutional).",
        },
        outputs={key: {"shape": shapes[key], "dtype": "float32"} for key in keys},
        output_keys=keys,
        default_output=DEFAULT_OUTPUT,
        endpoints={
            "__call__": "module(images, training=False) -> dict of outputs (traced for training=True and False)",
            INFERENCE_ENDPOINT: "images -> dict, inference mode",
            TRAINING_ENDPOINT: "images -> dict, training mode (batch statistics)",
            SERVING_SIGNATURE: "signature: images -> dict, inference mode",
        },
        batch_norm="synchronized=False in the export (cross-replica statistics only matter while training)",
        versions={"tensorflow": tf.__version__, "keras": keras.__version__},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return _json_ready(info)


def read_export_meta(path: str) -> dict:
    """Reads `export_meta.json` of an export (or of the newest export under a base folder)."""
    with open(os.path.join(resolve_export(path), EXPORT_META_FILE)) as f:
        return json.load(f)


def config_from_dict(values: dict) -> Config:
    """Rebuilds a `Config` from `Config.to_dict()` output, ignoring unknown (newer) fields."""

    def build(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    return Config(
        model=build(ModelConfig, values.get("model")),
        data=build(DataConfig, values.get("data")),
        train=build(TrainConfig, values.get("train")),
    )


# ------------------------------------------------------------------ Writing
def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _recover_interrupted(parent: str, name: str) -> None:
    """Cleans up after exports killed mid-way (a crash cannot run `finally`).

    Leftover temporary folders of any step are deleted (a resumed run exports other
    steps than the one that crashed). If the process died between moving the
    previous module of `name` aside and moving the new one in, that one is put back.
    """
    final = os.path.join(parent, name)
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if entry.startswith(f".tmp-{name}-") or (entry.startswith(".tmp-") and entry[len(".tmp-"):].split("-")[0].isdigit()):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.startswith(f".old-{name}-"):
            if not os.path.exists(final) and os.path.exists(os.path.join(path, "saved_model.pb")):
                os.rename(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _publish(tmp: str, final: str) -> None:
    """Moves the finished `tmp` to `final`; an older module there is removed only afterwards."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    parent, name = os.path.split(final)
    old = os.path.join(parent, f".old-{name}-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_export(model, final: str, step: int, meta: Optional[dict], image_size: Optional[int]) -> None:
    parent, name = os.path.split(final)
    size = _known_image_size(model, meta, image_size)
    network = export_network(model)
    module = HubModule(network)
    module.trace()
    info = build_export_meta(network, step, size, meta)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures={SERVING_SIGNATURE: module.serve})
        network.save(os.path.join(tmp, ENCODER_FILE))
        with open(os.path.join(tmp, EXPORT_META_FILE), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        _fsync_tree(tmp)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_saved_model(
    model: keras.Model,
    export_dir: str,
    *,
    step: int,
    meta: Optional[dict] = None,
    image_size: Optional[int] = None,
) -> str:
    """Atomically writes one TF-Hub module (SavedModel + encoder.keras + export_meta.json).

    The module is written to a temporary folder beside `export_dir` and renamed into
    place when complete, so a crash never leaves a partial module at `export_dir`,
    and an existing module there is replaced only once the new one is complete.
    Safe to call inside a `tf.distribute` strategy scope (e.g. from a training
    callback): the export copy is then built on a worker thread, outside the scope.

    Args:
        model: A built `SimCLRModel`, possibly trained with `global_bn=True`
            under a strategy.
        export_dir: The module's folder.
        step: Global step of the weights, recorded in the metadata.
        meta: Extra JSON facts for `export_meta.json`; pass the trainer's
            `{"config": config.to_dict(), "dataset": ..., "num_classes": ...}`.
        image_size: The training image size; by default read from
            `meta["config"]["model"]["image_size"]`.

    Returns:
        `export_dir`.
    """
    final = os.path.abspath(export_dir)
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    _recover_interrupted(parent, name)
    if tf.distribute.has_strategy():
        # Strategy scopes are thread-local: a worker thread builds plain variables.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(_write_export, model, final, int(step), meta, image_size).result()
    else:
        _write_export(model, final, int(step), meta, image_size)
    log.info("Exported step %d to %s", int(step), export_dir)
    return export_dir


def exported_steps(base_dir: str) -> list[int]:
    """Steps of the complete modules in `base_dir` (numeric sub-folders), oldest first."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(
        int(entry)
        for entry in os.listdir(base_dir)
        if _STEP_DIR_RE.match(entry) and os.path.exists(os.path.join(base_dir, entry, "saved_model.pb"))
    )


def prune_exports(base_dir: str, keep_max: int, keep: Sequence[int] = ()) -> list[int]:
    """Deletes all but the newest `keep_max` numeric module folders (0 or less keeps all).

    Args:
        base_dir: Folder of `<step>/` modules.
        keep_max: How many to keep (the reference's `--keep_hub_module_max`).
        keep: Steps never deleted (the module just written, even if older).

    Returns:
        The deleted steps.
    """
    if keep_max is None or keep_max <= 0 or not os.path.isdir(base_dir):
        return []
    steps = sorted(int(e) for e in os.listdir(base_dir) if _STEP_DIR_RE.match(e) and os.path.isdir(os.path.join(base_dir, e)))
    kept = set(steps[-keep_max:]) | {int(s) for s in keep}
    deleted = [s for s in steps if s not in kept]
    for step in deleted:
        shutil.rmtree(os.path.join(base_dir, str(step)), ignore_errors=True)
    return deleted


def export_to_hub_dir(
    model: keras.Model,
    base_dir: str,
    step: int,
    *,
    keep_max: int = 1,
    meta: Optional[dict] = None,
    image_size: Optional[int] = None,
) -> str:
    """Exports to `base_dir/<step>/` and keeps only the newest `keep_max` step folders.

    As the reference's `saved_model/<step>` folders and `--keep_hub_module_max`;
    the module just written is always kept.

    Returns:
        The module's path.
    """
    path = os.path.join(base_dir, str(int(step)))
    export_saved_model(model, path, step=step, meta=meta, image_size=image_size)
    deleted = prune_exports(base_dir, keep_max, keep=(int(step),))
    if deleted:
        log.info("Deleted old exports %s from %s", deleted, base_dir)
    return path


def default_export_dir(model_dir: str, root: str = DEFAULT_EXPORT_ROOT) -> str:
    """`exported_models/<run name>`, the run name being the model_dir's base name."""
    run_name = os.path.basename(os.path.normpath(model_dir))
    if not run_name or run_name in (".", ".."):
        raise ValueError(f"Cannot name the export after model_dir={model_dir!r}: pass an explicit export folder.")
    return os.path.join(root, run_name)


def _has_supervised_head(config: Config, num_classes: Optional[int]) -> bool:
    # The trainer's rule (train.create_model): a head in fine-tuning or linear eval.
    wanted = config.train.train_mode == "finetune" or config.train.lineareval_while_pretraining
    return bool(wanted and num_classes)


def model_from_checkpoint(checkpoint_path: str):
    """Rebuilds the model a checkpoint was written by (from its meta config) and restores it.

    Returns:
        `(model, meta)`: the model (plain batch norm, outside any strategy) and
        the checkpoint's meta.json contents.
    """
    folder = ckpt_lib.resolve_checkpoint(checkpoint_path)
    meta = ckpt_lib.read_meta(folder)
    if "config" not in meta:
        raise ValueError(
            f"Checkpoint {folder} has no 'config' in its meta.json, so its architecture is unknown. "
            "Export the live model with export_saved_model(model, ...) instead."
        )
    from tf_simclr import model as model_lib  # Keras model code; imported lazily for a light CLI.

    config = config_from_dict(meta["config"])
    num_classes = meta.get("num_classes")
    model = model_lib.build_model(
        dataclasses.replace(config.model, global_bn=False),
        num_classes=num_classes if _has_supervised_head(config, num_classes) else None,
        train_mode=config.train.train_mode,
        temperature=config.train.temperature,
        hidden_norm=config.train.hidden_norm,
    )
    ckpt_lib.restore_checkpoint(folder, model)
    return model, meta


def export_from_checkpoint(checkpoint_path: str, export_dir: Optional[str] = None, keep_max: int = 1) -> str:
    """Exports a tf_simclr checkpoint (for `run.py --mode=export` and the command line).

    Args:
        checkpoint_path: A `ckpt-<step>` folder or a model_dir (its newest checkpoint).
        export_dir: Base folder; the module goes to `<export_dir>/<step>/`.
            Defaults to `exported_models/<run name>` (run name = model_dir's base name).
        keep_max: Step folders kept in the base folder (0 keeps all).

    Returns:
        The module's path.
    """
    model, meta = model_from_checkpoint(checkpoint_path)
    folder = ckpt_lib.resolve_checkpoint(checkpoint_path)
    if export_dir is None:
        model_dir = (meta["config"].get("train") or {}).get("model_dir") or os.path.dirname(os.path.abspath(folder))
        export_dir = default_export_dir(model_dir)
    extra = {k: meta[k] for k in ("config", "dataset", "num_classes") if k in meta}
    extra["checkpoint"] = os.path.abspath(folder)
    return export_to_hub_dir(model, export_dir, int(meta["step"]), keep_max=keep_max, meta=extra)


# ------------------------------------------------------------------ Loading
def resolve_export(path: str) -> str:
    """Accepts a module folder or a base folder of `<step>/` modules; returns the module folder."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    steps = exported_steps(path)
    if not steps:
        raise FileNotFoundError(
            f"No exported module at {path!r}: expected a folder with saved_model.pb or numbered "
            "<step>/ sub-folders (written by tf_simclr.export)."
        )
    return os.path.join(path, str(steps[-1]))


class SavedModelEncoder(keras.layers.TFSMLayer):
    """`TFSMLayer` over a tf_simclr module that returns one output instead of the dict.

    Only a trainable layer gets the training endpoint: a frozen one always runs the
    inference graph, so its batch-norm statistics stay put, as Keras's own frozen
    batch norm does.
    """

    def __init__(self, filepath: str, output_key: str = "default", trainable: bool = False, **kwargs):
        kwargs.setdefault("call_endpoint", INFERENCE_ENDPOINT)
        kwargs.setdefault("call_training_endpoint", TRAINING_ENDPOINT if trainable else None)
        super().__init__(filepath, trainable=trainable, **kwargs)
        self.output_key = output_key

    def call(self, inputs, training=False):
        return super().call(inputs, training=bool(training) and self.trainable)[self.output_key]

    def get_config(self):
        return {**super().get_config(), "output_key": self.output_key}


def load_encoder(path: str, trainable: bool = False, output_key: str = "default", *, from_saved_model: bool = False) -> keras.Model:
    """A Keras 3 model `images [B, H, W, 3] float32 in [0, 1] -> output_key tensor`.

    By default it is rebuilt from the export's `encoder.keras`: real Keras layers,
    so `trainable=False` freezes batch norm in inference mode, single stages can
    be unfrozen, it saves as `.keras`, and it runs on any Keras backend. With
    `from_saved_model=True` (or when `encoder.keras` is absent) it wraps the
    SavedModel in `SavedModelEncoder` (TensorFlow only, an opaque graph).

    Args:
        path: A module folder, or a base folder (its newest `<step>/` module).
        trainable: Whether `fit` updates the encoder (fine-tuning) or not (linear probe).
        output_key: One of the export's output keys; "default" is `final_avg_pool`.
        from_saved_model: Use the SavedModel instead of `encoder.keras`.

    Returns:
        A `keras.Model` with one output.
    """
    folder = resolve_export(path)
    keys = read_export_meta(folder).get("output_keys") if os.path.exists(os.path.join(folder, EXPORT_META_FILE)) else None
    if keys is not None and output_key not in keys:
        raise ValueError(f"Unknown output_key; this export has {keys}. Received: output_key={output_key!r}")
    keras_file = os.path.join(folder, ENCODER_FILE)
    if from_saved_model or not os.path.exists(keras_file):
        images = keras.Input((None, None, 3), name="images")
        layer = SavedModelEncoder(folder, output_key=output_key, trainable=trainable, name="simclr_encoder")
        return keras.Model(images, layer(images), name=f"simclr_{output_key}")

    from tf_simclr import heads, resnet  # noqa: F401  Registers the custom layers for deserialization.

    network = keras.saving.load_model(keras_file, compile=False)
    key = DEFAULT_OUTPUT if output_key == "default" else output_key
    outputs = network.output
    if key not in outputs:
        raise ValueError(f"Unknown output_key; {keras_file} has {sorted(outputs)} and 'default'. Received: output_key={output_key!r}")
    encoder = keras.Model(network.input, outputs[key], name=f"simclr_{output_key}")
    encoder.trainable = trainable
    return encoder


# ------------------------------------------------------------------ Command line
def main(argv: Optional[Sequence[str]] = None) -> str:
    """`python -m tf_simclr.export --checkpoint PATH [--out BASE] [--keep_max N]`."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_simclr.export",
        description="Export a tf_simclr checkpoint as a TF-Hub module / SavedModel under <out>/<step>/.",
    )
    parser.add_argument("--checkpoint", required=True, help="A ckpt-<step> folder or a model_dir (newest checkpoint).")
    parser.add_argument("--out", default=None, help="Base folder (default: exported_models/<run name>).")
    parser.add_argument("--keep_max", type=int, default=1, help="Modules kept in the base folder (0 keeps all).")
    args = parser.parse_args(argv)
    path = export_from_checkpoint(args.checkpoint, args.out, keep_max=args.keep_max)
    print(path)
    return path


if __name__ == "__main__":
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)  # Our progress lines only; TensorFlow's INFO chatter stays off.
    main(sys.argv[1:])


def restore_from_export(model, path: str) -> dict:
    """Loads an export's encoder and projection head into `model` (fine-tuning from a TF-Hub module).

    Lets `--checkpoint` name an export as well as a training checkpoint. Every
    shape is checked before anything is assigned.

    Args:
        model: A built `SimCLRModel` of the export's architecture.
        path: A module folder or a base folder of `<step>/` modules.

    Returns:
        The export's metadata (`export_meta.json`).
    """
    from tf_simclr import checkpoint as ckpt
    from tf_simclr import heads

    folder = resolve_export(path)
    network = keras.saving.load_model(os.path.join(folder, ENCODER_FILE), compile=False)
    encoder = next(layer for layer in network.layers if isinstance(layer, keras.Model))
    projection_head = next(layer for layer in network.layers if isinstance(layer, heads.ProjectionHead))
    pairs = [(encoder, model.encoder, "encoder"), (projection_head, model.projection_head, "projection_head")]
    for source, target, part in pairs:
        src, dst = list(source.weights), list(target.weights)
        if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
            raise ckpt.CheckpointMismatchError(
                f"Export {folder} does not fit this model's {part} ({len(src)} vs {len(dst)} weights): was it "
                "exported with other --resnet_depth/--width_multiplier/--sk_ratio/--se_ratio/--proj_head_mode flags?"
            )
    for source, target, part in pairs:
        _copy_weights(source, target, part)
    return read_export_meta(folder)


def is_export(path: str) -> bool:
    """Whether `path` is an exported module or a base folder of them (and not a training checkpoint)."""
    return os.path.exists(os.path.join(path, "saved_model.pb")) or bool(exported_steps(path))
