"""Projection and supervised heads of SimCLR (Chen et al. 2020, arXiv:2002.05709).

Same mathematics as the reference's `tf2/model.py` (`LinearLayer`,
`ProjectionHead`, `SupervisedHead`), but configured by plain arguments, and the
'linear' and 'none' projection modes work (the reference crashes on them).
Backend-neutral: only `keras`, `keras.layers` and `keras.ops`.
"""

from __future__ import annotations

import keras
from keras import layers
from keras import ops

from tf_simclr.models.layers import batch_norm

PROJECTION_HEAD_MODES = ("none", "linear", "nonlinear")


def _dense(units: int, use_bias: bool, name: str, zero_init: bool = False) -> layers.Dense:
    # The reference's LinearLayer draws kernels from N(0, 0.01^2).
    initializer = "zeros" if zero_init else keras.initializers.RandomNormal(stddev=0.01)
    return layers.Dense(units, use_bias=use_bias, kernel_initializer=initializer, name=name)


@keras.saving.register_keras_serializable(package="tf_simclr")
class ProjectionHead(layers.Layer):
    """SimCLR projection head g(.) returning every intermediate representation.

    Modes:
      - 'none': no layers; the output is the input.
      - 'linear': Dense(out_dim, no bias) + BN(center=False).
      - 'nonlinear': `num_layers` Dense + BN layers. Hidden layers keep the input
        width and are followed by ReLU; their bias is BN's beta (center=True)
        since a dense bias before BN would be cancelled. The last layer has
        `out_dim` units, no bias (center=False) and no ReLU.

    `call` returns a list `hiddens`: `hiddens[0]` is the input (the reference's
    `proj_head_input`), `hiddens[-1]` the output (`proj_head_output`), so
    `hiddens[ft_proj_selector]` picks the fine-tuning input as the reference.

    Args:
      mode: One of 'none', 'linear', 'nonlinear'. Defaults to 'nonlinear'.
      out_dim: Output width of 'linear' and 'nonlinear'. Defaults to 128.
      num_layers: Number of Dense+BN layers of 'nonlinear'. Defaults to 3.
      batch_norm_decay: Batch-norm momentum. Defaults to 0.9.
      global_bn: Cross-replica batch norm. Defaults to False.
    """

    def __init__(
        self,
        mode: str = "nonlinear",
        out_dim: int = 128,
        num_layers: int = 3,
        batch_norm_decay: float = 0.9,
        global_bn: bool = False,
        name: str = "projection_head",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if mode not in PROJECTION_HEAD_MODES:
            raise ValueError(f"Unknown projection head mode; use one of {PROJECTION_HEAD_MODES}. Received: mode={mode!r}")
        if mode != "none" and int(out_dim) < 1:
            raise ValueError(f"out_dim must be >= 1. Received: out_dim={out_dim}")
        if mode == "nonlinear" and int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1 for mode='nonlinear'. Received: num_layers={num_layers}")
        self.mode = mode
        self.out_dim = int(out_dim)
        self.num_layers = int(num_layers)
        self.batch_norm_decay = float(batch_norm_decay)
        self.global_bn = bool(global_bn)
        self.dense_layers = []
        self.bn_layers = []

    def _layer_specs(self, in_dim: int) -> list[tuple[str, int, bool]]:
        """(name prefix, units, BN center) of every Dense+BN layer."""
        if self.mode == "none":
            return []
        if self.mode == "linear":
            return [("l_0", self.out_dim, False)]
        specs = [(f"nl_{j}", in_dim, True) for j in range(self.num_layers - 1)]
        return specs + [(f"nl_{self.num_layers - 1}", self.out_dim, False)]

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"ProjectionHead expects (batch, features) inputs with known features. Received: input_shape={input_shape}")
        in_dim = int(input_shape[-1])
        self.dense_layers, self.bn_layers = [], []
        for prefix, units, center in self._layer_specs(in_dim):
            dense = _dense(units, use_bias=False, name=f"{prefix}_dense")
            bn = batch_norm(f"{prefix}_bn", self.batch_norm_decay, self.global_bn, center=center)
            dense.build((None, in_dim))
            bn.build((None, units))
            self.dense_layers.append(dense)
            self.bn_layers.append(bn)
            in_dim = units

    def call(self, inputs, training=None):
        hiddens = [inputs]
        last = len(self.dense_layers) - 1
        for j, (dense, bn) in enumerate(zip(self.dense_layers, self.bn_layers)):
            x = bn(dense(hiddens[-1]), training=training)
            if self.mode == "nonlinear" and j != last:
                x = ops.relu(x)
            hiddens.append(x)
        return hiddens

    def compute_output_shape(self, input_shape):
        batch, in_dim = input_shape
        shapes = [tuple(input_shape)]
        for _, units, _ in self._layer_specs(in_dim):
            shapes.append((batch, units))
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode,
            out_dim=self.out_dim,
            num_layers=self.num_layers,
            batch_norm_decay=self.batch_norm_decay,
            global_bn=self.global_bn,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_simclr")
class SupervisedHead(layers.Layer):
    """Linear classifier on top of the encoder or a projection hidden layer.

    Its output is the reference's `logits_sup`. The default name,
    'head_supervised', is the one the reference's weight-decay rules key on.

    Args:
      num_classes: Number of classes.
      zero_init: Start from a zero kernel (zero logits), which is common when
        fine-tuning. Defaults to False: N(0, 0.01^2) as the reference.
    """

    def __init__(self, num_classes: int, zero_init: bool = False, name: str = "head_supervised", **kwargs):
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.zero_init = bool(zero_init)
        self.linear_layer = _dense(self.num_classes, use_bias=True, name="linear_layer", zero_init=self.zero_init)

    def build(self, input_shape):
        self.linear_layer.build(input_shape)

    def call(self, inputs):
        return self.linear_layer(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, zero_init=self.zero_init)
        return config
