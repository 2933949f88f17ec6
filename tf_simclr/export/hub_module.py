"""Exports trained SimCLR models as TF2 SavedModels that are reusable TF-Hub modules.

One export is one folder, written atomically (`storage.atomic`; `export_meta.json`
last, as its commit marker):

    <export_dir>/saved_model.pb, variables/, assets/   the TF-Hub module / TF Serving model
    <export_dir>/encoder.keras                          the same network as a native Keras 3 model
    <export_dir>/export_meta.json                       input contract, outputs, config, step

The SavedModel is built from the export copy (`network.export_network`: plain
batch norm, float32), built away from any `tf.distribute` strategy scope, so
exporting from a callback of a distributed run traces plain variables, not
mirrored ones. It serves every loader a downstream app may pick:
`tf.saved_model.load`, `hub.load`, `hub.KerasLayer` (tf_keras),
`keras.layers.TFSMLayer` (Keras 3) and TF Serving (`serving_default`);
`load.load_encoder` returns a trainable Keras 3 model.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_simclr.export import exports_dir
from tf_simclr.export.exports_dir import ENCODER_FILE, EXPORT_META_FILE
from tf_simclr.export.network import DEFAULT_OUTPUT, export_network
from tf_simclr.storage import atomic, fs

log = logging.getLogger("tf_simclr")

FORMAT = "tf_simclr-hub-1"
INFERENCE_ENDPOINT = "serve"  # TFSMLayer's default call_endpoint name.
TRAINING_ENDPOINT = "call_training"
SERVING_SIGNATURE = "serving_default"

# Keys the export computes itself; a caller's meta cannot override them.
_RESERVED_META_KEYS = frozenset(
    {"format", "step", "input", "outputs", "output_keys", "default_output", "endpoints", "batch_norm", "versions", "created"}
)
_IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


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
    """The image size of the input contract: explicit, from meta's config, or the encoder's input shape."""
    if image_size:
        return int(image_size)
    config = (meta or {}).get("config") or {}
    size = (config.get("model") or {}).get("image_size") or (meta or {}).get("image_size")
    if size:
        return int(size)
    shape = tuple(getattr(getattr(model, "encoder", None), "input_shape", ()) or ())
    if len(shape) == 4 and shape[1]:
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


# ------------------------------------------------------------------ Writing
def _write_export(model, final: str, step: int, meta: Optional[dict], image_size: Optional[int]) -> None:
    size = _known_image_size(model, meta, image_size)
    network = export_network(model)
    module = HubModule(network)
    module.trace()
    info = build_export_meta(network, step, size, meta)
    with atomic.publishing(final, EXPORT_META_FILE) as folder:
        tf.saved_model.save(module, folder, signatures={SERVING_SIGNATURE: module.serve})
        if fs.is_url(folder):  # Keras saves .keras files to local paths only.
            import tempfile

            with tempfile.TemporaryDirectory() as local:
                network.save(fs.join(local, ENCODER_FILE))
                with open(fs.join(local, ENCODER_FILE), "rb") as f:
                    atomic.write_bytes(fs.join(folder, ENCODER_FILE), f.read())
        else:
            network.save(fs.join(folder, ENCODER_FILE))
        with fs.open_file(fs.join(folder, EXPORT_META_FILE), "w") as f:  # The commit marker: last.
            f.write(json.dumps(info, indent=1, sort_keys=True))


def export_saved_model(
    model: keras.Model,
    export_dir: str,
    *,
    step: int,
    meta: Optional[dict] = None,
    image_size: Optional[int] = None,
) -> str:
    """Atomically writes one TF-Hub module (SavedModel + encoder.keras + export_meta.json).

    A crash never leaves a partial module at `export_dir`, and an existing module
    there is replaced only once the new one is complete (on a local disk; on an
    object store the folder is incomplete until its `export_meta.json` exists).
    Safe to call inside a `tf.distribute` strategy scope (e.g. from a training
    callback): the export copy is then built on a worker thread, outside the scope.

    Args:
        model: A built `SimCLRModel`, possibly trained with `global_bn=True` under a strategy.
        export_dir: The module's folder (any tf.io.gfile path).
        step: Global step of the weights, recorded in the metadata.
        meta: Extra JSON facts for `export_meta.json`; pass the trainer's
            `{"config": config.to_dict(), "dataset": ..., "num_classes": ...}`.
        image_size: The training image size; by default read from
            `meta["config"]["model"]["image_size"]`.

    Returns:
        `export_dir`.
    """
    final = fs.absolute(export_dir)
    parent = fs.parent(final)
    fs.makedirs(parent)
    exports_dir.recover_interrupted(parent, fs.basename(final))  # Step folders, and leftovers of this name.
    if tf.distribute.has_strategy():
        # Strategy scopes are thread-local: a worker thread builds plain variables.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(_write_export, model, final, int(step), meta, image_size).result()
    else:
        _write_export(model, final, int(step), meta, image_size)
    log.info("Exported step %d to %s", int(step), export_dir)
    return export_dir


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
    path = fs.join(base_dir, str(int(step)))
    export_saved_model(model, path, step=step, meta=meta, image_size=image_size)
    deleted = exports_dir.prune_exports(base_dir, keep_max, keep=(int(step),))
    if deleted:
        log.info("Deleted old exports %s from %s", deleted, base_dir)
    return path


# ------------------------------------------------------------------ From a checkpoint
def model_from_checkpoint(checkpoint_path: str):
    """Rebuilds the model a checkpoint was written by (from its meta config) and restores it.

    Returns:
        `(model, meta)`: the model (plain batch norm, outside any strategy) and
        the checkpoint's meta.json contents.
    """
    from tf_simclr.config import config_from_dict
    from tf_simclr.models import factory
    from tf_simclr.storage import checkpoint as ckpt_lib

    folder = ckpt_lib.resolve_checkpoint(checkpoint_path)
    meta = ckpt_lib.read_meta(folder)
    if "config" not in meta:
        raise ValueError(
            f"Checkpoint {folder} has no 'config' in its meta.json, so its architecture is unknown. "
            "Export the live model with export_saved_model(model, ...) instead."
        )
    config = config_from_dict(meta["config"])
    model = factory.model_from_config(config, meta.get("num_classes"), plain_batch_norm=True)
    ckpt_lib.restore_checkpoint(folder, model)
    return model, meta


def export_from_checkpoint(checkpoint_path: str, export_dir: Optional[str] = None, keep_max: int = 1) -> str:
    """Exports a tf_simclr checkpoint (for `--mode=export` and `tf_simclr export`).

    Args:
        checkpoint_path: A `ckpt-<step>` folder or a model_dir (its newest checkpoint).
        export_dir: Base folder; the module goes to `<export_dir>/<step>/`.
            Defaults to `exports_dir.default_export_dir` of the run's model_dir.
        keep_max: Step folders kept in the base folder (0 keeps all).

    Returns:
        The module's path.
    """
    from tf_simclr.storage import checkpoint as ckpt_lib

    model, meta = model_from_checkpoint(checkpoint_path)
    folder = ckpt_lib.resolve_checkpoint(checkpoint_path)
    if export_dir is None:
        model_dir = (meta["config"].get("train") or {}).get("model_dir") or fs.parent(folder)
        export_dir = exports_dir.default_export_dir(model_dir)
    extra = {k: meta[k] for k in ("config", "dataset", "num_classes") if k in meta}
    extra["checkpoint"] = fs.absolute(folder)
    return export_to_hub_dir(model, export_dir, int(meta["step"]), keep_max=keep_max, meta=extra)
