"""Checkpoints laid out as google-research/simclr's tf2 model writes them, for architectures the fixture lacks.

Written from the reference's `tf2/resnet.py` and `tf2/model.py` (which list holds
which layer at which position, which layers hold variables and of what shape),
independently of tf_simclr's importer, so the importer's inference and mapping are
checked against the reference's layout rather than against themselves.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BASE = (64, 128, 256, 512)


def reference_shapes(depth=50, width=1, sk_ratio=0.0, se_ratio=0.0, cifar_stem=False, proj_layers=3, proj_out=128,
                     num_classes=10) -> dict:
    """{attribute path under `model/`: shape} of the reference's `Model(num_classes)` with these flags."""
    shapes = {}

    def conv(path, size, cin, cout):
        shapes[f"{path}/conv2d/kernel"] = (size, size, cin, cout)

    def bn(path, channels, center=True):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            if center or name != "beta":
                shapes[f"{path}/bn/{name}"] = (channels,)

    stem = "resnet_model/initial_conv_relu_max_pool"
    c64 = int(64 * width)
    if cifar_stem:  # Conv, Identity, BatchNormRelu, Identity.
        conv(f"{stem}/0", 3, 3, c64)
        bn(f"{stem}/2", c64)
    elif sk_ratio > 0:  # Conv, BN, Conv, BN, Conv, Identity, BN, MaxPool, Identity.
        conv(f"{stem}/0", 3, 3, c64 // 2)
        bn(f"{stem}/1", c64 // 2)
        conv(f"{stem}/2", 3, c64 // 2, c64 // 2)
        bn(f"{stem}/3", c64 // 2)
        conv(f"{stem}/4", 3, c64 // 2, c64)
        bn(f"{stem}/6", c64)
    else:  # Conv, Identity, BN, MaxPool, Identity.
        conv(f"{stem}/0", 7, 3, c64)
        bn(f"{stem}/2", c64)

    bottleneck = depth >= 50
    cin = c64
    for g, blocks in enumerate(BLOCKS[depth]):
        filters = int(BASE[g] * width)
        strides = 1 if g == 0 else 2
        for b in range(blocks):
            block = f"resnet_model/block_groups/{g}/layers/{b}"
            out = 4 * filters if bottleneck else filters
            if b == 0:  # Projection: [FixedPadding], AveragePooling, Conv, BN with ResNet-D; else Conv, BN.
                shortcut = f"{block}/{'projection_layers' if bottleneck else 'shortcut_layers'}"
                first = (2 if strides > 1 else 1) if sk_ratio > 0 else 0
                conv(f"{shortcut}/{first}", 1, cin, out)
                bn(f"{shortcut}/{first + 1}", out)
            if bottleneck:  # Conv, BN, DropBlock, SK | (Conv, BN), DropBlock, Conv, BN, DropBlock, [SE].
                main = f"{block}/conv_relu_dropblock_layers"
                conv(f"{main}/0", 1, cin, filters)
                bn(f"{main}/1", filters)
                if sk_ratio > 0:
                    sk = f"{main}/3"
                    mid = max(int(filters * sk_ratio), 32)
                    shapes[f"{sk}/conv2d_fixed_padding/conv2d/kernel"] = (3, 3, filters, 2 * filters)
                    bn(f"{sk}/batch_norm_relu", 2 * filters)
                    shapes[f"{sk}/conv2d_0/kernel"] = (1, 1, filters, mid)
                    bn(f"{sk}/batch_norm_relu_1", mid)
                    shapes[f"{sk}/conv2d_1/kernel"] = (1, 1, mid, 2 * filters)
                    last = 5
                else:
                    conv(f"{main}/3", 3, filters, filters)
                    bn(f"{main}/4", filters)
                    last = 6
                conv(f"{main}/{last}", 1, filters, out)
                bn(f"{main}/{last + 1}", out)
                se = f"{main}/{last + 3}"
            else:  # Conv, BN, Conv, BN; SE is the block's `se_layer` attribute.
                main = f"{block}/conv2d_bn_layers"
                conv(f"{main}/0", 3, cin, filters)
                bn(f"{main}/1", filters)
                conv(f"{main}/2", 3, filters, filters)
                bn(f"{main}/3", filters)
                se = f"{block}/se_layer"
            if se_ratio > 0:
                reduced = max(1, int(filters * se_ratio))
                shapes.update({f"{se}/se_reduce/kernel": (1, 1, out, reduced), f"{se}/se_reduce/bias": (reduced,),
                               f"{se}/se_expand/kernel": (1, 1, reduced, out), f"{se}/se_expand/bias": (out,)})
            cin = out
    features = cin
    width_in = features
    for j in range(proj_layers):  # LinearLayer: Dense without bias, BN (center only on the middle layers).
        units = features if j < proj_layers - 1 else proj_out
        shapes[f"_projection_head/linear_layers/{j}/dense/kernel"] = (width_in, units)
        bn(f"_projection_head/linear_layers/{j}/bn_relu", units, center=j < proj_layers - 1)
        width_in = units
    if num_classes:
        shapes["supervised_head/linear_layer/dense/kernel"] = (features, num_classes)
        shapes["supervised_head/linear_layer/dense/bias"] = (num_classes,)
    return shapes


class _Node(tf.Module):
    """One object of the reference's graph (a layer, or a list of layers) while writing."""


def write_reference_checkpoint(prefix: str, shapes: dict, seed: int = 0) -> dict:
    """Writes `tf.train.Checkpoint(model=...)` with random values at the attribute paths; returns the values."""
    rng = np.random.default_rng(seed)
    root = _Node()
    values = {}
    for path, shape in shapes.items():
        *parents, leaf = f"model/{path}".split("/")
        node = root
        for name in parents:
            if not hasattr(node, name):
                setattr(node, name, _Node())
            node = getattr(node, name)
        values[path] = rng.normal(size=shape).astype(np.float32)
        setattr(node, leaf, tf.Variable(values[path]))
    tf.train.Checkpoint(model=root.model, global_step=tf.Variable(7, dtype=tf.int64)).write(prefix)
    return values
