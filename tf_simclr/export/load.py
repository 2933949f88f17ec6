"""Loading tf_simclr exports back: a Keras 3 encoder for downstream apps, or weights for fine-tuning.

`load_encoder` is what a downstream Keras app calls; `restore_from_export` lets
`--checkpoint` name an export as well as a training checkpoint.
"""

from __future__ import annotations

import keras

from tf_simclr.export.exports_dir import ENCODER_FILE, EXPORT_META_FILE, read_export_meta, resolve_export
from tf_simclr.export.network import DEFAULT_OUTPUT, copy_weights
from tf_simclr.storage import fs

INFERENCE_ENDPOINT = "serve"  # The module's endpoints (hub_module.py writes them).
TRAINING_ENDPOINT = "call_training"


def _keras_file(folder: str) -> str:
    """A local path of the export's `encoder.keras` (copied from a remote filesystem first)."""
    path = fs.join(folder, ENCODER_FILE)
    if not fs.is_url(path):
        return path
    import tempfile

    local = fs.join(tempfile.mkdtemp(prefix="tf_simclr_encoder_"), ENCODER_FILE)
    with fs.open_file(path, "rb") as source, open(local, "wb") as target:
        target.write(source.read())
    return local


def load_network(folder: str) -> keras.Model:
    from tf_simclr.augment import device  # noqa: F401  Registers the custom layers for deserialization.
    from tf_simclr.models import heads  # noqa: F401
    from tf_simclr.models.backbones import resnet  # noqa: F401

    return keras.saving.load_model(_keras_file(folder), compile=False)


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


def load_encoder(path: str, trainable: bool = False, output_key: str = "default", *,
                 from_saved_model: bool = False) -> keras.Model:
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
    keys = read_export_meta(folder).get("output_keys") if fs.exists(fs.join(folder, EXPORT_META_FILE)) else None
    if keys is not None and output_key not in keys:
        raise ValueError(f"Unknown output_key; this export has {keys}. Received: output_key={output_key!r}")
    if from_saved_model or not fs.exists(fs.join(folder, ENCODER_FILE)):
        images = keras.Input((None, None, 3), name="images")
        layer = SavedModelEncoder(folder, output_key=output_key, trainable=trainable, name="simclr_encoder")
        return keras.Model(images, layer(images), name=f"simclr_{output_key}")
    network = load_network(folder)
    key = DEFAULT_OUTPUT if output_key == "default" else output_key
    outputs = network.output
    if key not in outputs:
        raise ValueError(f"Unknown output_key; {folder} has {sorted(outputs)} and 'default'. Received: output_key={output_key!r}")
    encoder = keras.Model(network.input, outputs[key], name=f"simclr_{output_key}")
    encoder.trainable = trainable
    return encoder


def restore_from_export(model, path: str) -> dict:
    """Loads an export's encoder and projection head into `model` (fine-tuning from a TF-Hub module).

    Every shape is checked before anything is assigned.

    Args:
        model: A built `SimCLRModel` of the export's architecture.
        path: A module folder or a base folder of `<step>/` modules.

    Returns:
        The export's metadata (`export_meta.json`).
    """
    from tf_simclr.models.heads import ProjectionHead
    from tf_simclr.storage.checkpoint import CheckpointMismatchError

    folder = resolve_export(path)
    network = load_network(folder)
    encoder = next(layer for layer in network.layers if isinstance(layer, keras.Model))
    projection_head = next(layer for layer in network.layers if isinstance(layer, ProjectionHead))
    pairs = [(encoder, model.encoder, "encoder"), (projection_head, model.projection_head, "projection_head")]
    for source, target, part in pairs:
        src, dst = list(source.weights), list(target.weights)
        if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
            raise CheckpointMismatchError(
                f"Export {folder} does not fit this model's {part} ({len(src)} vs {len(dst)} weights): was it "
                "exported with other --backbone/--resnet_depth/--width_multiplier/--sk_ratio/--se_ratio/"
                "--proj_head_mode flags?"
            )
    for source, target, part in pairs:
        copy_weights(source, target, part)
    return read_export_meta(folder)
