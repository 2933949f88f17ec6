"""The export copy of a trained model: the same network as a functional Keras model, fit to ship.

Built from the live model's layers with plain batch norm (`synchronized=False`)
and float32 weights. The reference exported its training model as is, so modules
trained with `--global_bn` carried cross-replica batch-norm ops and could not be
fine-tuned with `hub.KerasLayer(trainable=True)` outside a distribution strategy
(google-research/simclr issues #108, #116, #195).
"""

from __future__ import annotations

import keras
import numpy as np

DEFAULT_OUTPUT = "final_avg_pool"  # What `default` aliases: the representation used downstream.


def plain_layer_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh layer like `layer`, but with per-replica batch norm and float32 compute.

    `synchronized` (Keras batch norm) and `global_bn` (tf_simclr layers that own
    batch norms) are switched off: at export time there is one replica, so the
    statistics are identical, and the graph no longer needs a strategy. Layers
    frozen in training (`--fine_tune_after_block`) are trainable again: what to
    fine-tune is the downstream app's choice.
    """
    if isinstance(layer, keras.Model):  # A user backbone nested in the encoder: copy its layers too.
        return keras.models.clone_model(layer, clone_function=plain_layer_copy)
    config = layer.get_config()
    config["trainable"] = True
    if "synchronized" in config:
        config["synchronized"] = False
    if "global_bn" in config:
        config["global_bn"] = False
    if "dtype" in config:
        config["dtype"] = "float32"  # The module's contract is float32 whatever the training policy.
    return layer.__class__.from_config(config)


def copy_weights(source: keras.layers.Layer, target: keras.layers.Layer, part: str) -> None:
    """Assigns `source`'s weights to `target` by position (the copy has the same architecture)."""
    src, dst = list(source.weights), list(target.weights)
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise ValueError(
            f"The export copy of {part!r} does not match the model: {len(src)} vs {len(dst)} weights, "
            f"shapes {[tuple(v.shape) for v in src][:5]}... vs {[tuple(v.shape) for v in dst][:5]}..."
        )
    for a, b in zip(src, dst):
        b.assign(np.asarray(keras.ops.convert_to_numpy(a.value), dtype=np.float32))


def export_network(model: keras.Model) -> keras.Model:
    """Builds the export copy: a functional Keras model `images -> dict of outputs`.

    The outputs are the encoder's (`final_avg_pool`, and for ResNet `initial_conv`
    ... `block_group4`), the projection head's input and output and, when the
    model has one, `logits_sup` (computed without the pretraining stop-gradient,
    since downstream users may fine-tune through it). Batch norm is never
    synchronized in the copy.

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
    encoder = keras.models.clone_model(model.encoder, clone_function=plain_layer_copy)
    projection_head = plain_layer_copy(model.projection_head)
    supervised = getattr(model, "supervised_head", None)
    supervised_head = plain_layer_copy(supervised) if supervised is not None else None

    images = keras.Input(tuple(model.encoder.input_shape[1:]), name="images")
    outputs = dict(encoder(images))
    hiddens = projection_head(outputs[DEFAULT_OUTPUT])
    outputs["proj_head_input"] = hiddens[0]
    outputs["proj_head_output"] = hiddens[-1]
    if supervised_head is not None:
        outputs["logits_sup"] = supervised_head(hiddens[int(getattr(model, "ft_proj_selector", 0))])
    network = keras.Model(images, outputs, name="simclr_export")

    copy_weights(model.encoder, encoder, "encoder")
    copy_weights(model.projection_head, projection_head, "projection_head")
    if supervised_head is not None:
        copy_weights(supervised, supervised_head, "supervised_head")
    return network
