"""ResNet v1 encoders for SimCLR v1/v2 as functional Keras models.

The architecture follows the SimCLR reference (`tf2/resnet.py`): post-activation
ResNet v1 (He et al. 2016, arXiv:1512.03385) with "fixed" padding for strided
convolutions, zero-initialised last batch-norm scale in every block, optional
selective kernels (SimCLRv2, Li et al. 2019, arXiv:1903.06586, with the ResNet-D
stem and average-pool shortcut of He et al. 2019, arXiv:1812.01187) and optional
squeeze-and-excitation (Hu et al. 2018, arXiv:1709.01507).

Unlike the reference, nothing here reads flags: `resnet(...)` builds a
functional model from plain arguments, and every layer gets an explicit name so
variable paths (`block_group2_block0_conv1/kernel`) are the same every time the
model is built, which checkpoint restoring relies on.

Only `keras`, `keras.layers` and `keras.ops` are used, so the encoder also runs
under the JAX backend (where `global_bn` is ignored, see `batch_norm`).
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers
from keras import ops

from tf_simclr.models.layers import batch_norm


# Output dict keys; they are the tensor names of the reference, which exports use.
ENCODER_OUTPUT_KEYS = (
    "initial_conv", "initial_max_pool", "block_group1", "block_group2", "block_group3", "block_group4", "final_avg_pool",
)

# Residual blocks per block group, as the reference.
BLOCKS_PER_DEPTH = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3),  # Basic residual blocks.
    50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),  # Bottlenecks.
}
BOTTLENECK_DEPTHS = frozenset({50, 101, 152, 200})

_GROUP_BASE_FILTERS = (64, 128, 256, 512)
_GROUP_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4
_SK_MIN_DIM = 32
CIFAR_STEM_STRIDE = 8  # The CIFAR stem keeps the resolution; block groups 2-4 halve it.
IMAGENET_STEM_STRIDE = 32  # The ImageNet stem adds a stride-2 conv and a stride-2 max pool.
CIFAR_STEM_STRIDES = (1, 2)  # The CIFAR stem conv's stride: 1 as the reference, or 2 (`--cifar_stem_stride`).


def scaled_channels(base: int, width_multiplier: float) -> int:
    """Channels of a layer that has `base` channels at width 1.

    The rule is `max(1, int(round(base * width_multiplier)))`: integer
    multipliers give exactly the reference's `base * width_multiplier`, and
    fractional ones (0.125, 0.25 for tests and tiny runs) round to the nearest
    integer, never below one channel.
    """
    return max(1, int(round(base * width_multiplier)))


def output_dim(depth: int, width_multiplier: float) -> int:
    """Channels of `final_avg_pool`: 512*w for depths 18/34, 2048*w for bottlenecks.

    Computed with the same rounding as the model (`4 * scaled_channels(512, w)`
    for bottleneck depths), so it always matches the built encoder.
    """
    _check_depth(depth)
    channels = scaled_channels(_GROUP_BASE_FILTERS[-1], width_multiplier)
    if depth in BOTTLENECK_DEPTHS:
        channels *= _BOTTLENECK_EXPANSION
    return channels


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """Options shared by every block of one encoder (see `resnet` for their meaning)."""

    batch_norm_decay: float = 0.9
    global_bn: bool = False
    sk_ratio: float = 0.0
    se_ratio: float = 0.0


def _conv(filters: int, kernel_size: int, strides: int, padding: str, name: str):
    # VarianceScaling() defaults (fan_in, truncated normal) as tf.keras in the reference.
    initializer = keras.initializers.VarianceScaling()
    return layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, kernel_initializer=initializer, name=name
    )


def fixed_padding_amounts(kernel_size: int) -> tuple[int, int]:
    """(before, after) padding of the reference's FixedPadding.

    It pads by kernel_size - 1 in total independently of the input size, unlike
    'SAME', which pads less (and only at the end) for even inputs.
    """
    total = kernel_size - 1
    return total // 2, total - total // 2


# A 1x1 convolution with stride > 1 on fewer input channels than this runs as a 1x1 average
# pool with that stride (it selects the pixels x[:, ::s, ::s, :], bit for bit) followed by a
# stride-1 convolution: the same outputs, gradients and kernel variable. It keeps TensorFlow
# 2.21's oneDNN (v3.7.3) off its 1x1 strided backward-weights kernel (`jit_1x1:avx512_core`),
# which for channels-last inputs with fewer channels than its 16-channel block writes past the
# end of its scratchpad (uxlfoundation/oneDNN#6035): heap corruption, then a glibc abort or
# SIGSEGV. benchmarks/onednn_strided_1x1_crash.py reproduces it with one TensorFlow op.
MIN_CHANNELS_FOR_STRIDED_1X1 = 16


def conv2d_fixed_padding(x, filters: int, kernel_size: int, strides: int, name: str):
    """Convolution `name` without bias; strided ones pad (layer `{name}_pad`), then run VALID.

    Stride 1 uses 'SAME', which equals fixed padding for odd kernels. A strided 1x1
    convolution on fewer than `MIN_CHANNELS_FOR_STRIDED_1X1` channels subsamples first
    (layer `{name}_subsample`) and then runs at stride 1 (see above).
    """
    if strides > 1:
        before, after = fixed_padding_amounts(kernel_size)
        x = layers.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pad")(x)
        if kernel_size == 1 and x.shape[-1] is not None and x.shape[-1] < MIN_CHANNELS_FOR_STRIDED_1X1:
            x = layers.AveragePooling2D(pool_size=1, strides=strides, padding="valid", name=f"{name}_subsample")(x)
            return _conv(filters, 1, 1, "valid", name)(x)
        return _conv(filters, kernel_size, strides, "valid", name)(x)
    return _conv(filters, kernel_size, strides, "same", name)(x)


def _bn_relu(x, opts: BlockOptions, bn_name: str, relu_name: str | None, zero_init=False):
    x = batch_norm(bn_name, opts.batch_norm_decay, opts.global_bn, zero_init=zero_init)(x)
    if relu_name is not None:
        x = layers.ReLU(name=relu_name)(x)
    return x


@keras.saving.register_keras_serializable(package="tf_simclr")
class SelectiveKernelConv(layers.Layer):
    """Selective-kernel 3x3 convolution (Li et al. 2019, arXiv:1903.06586).

    As in SimCLRv2, both 3x3 streams come from one convolution with
    `2 * filters` outputs (then split), each followed by BN-ReLU; a softmax over
    the two streams, computed per channel from globally pooled features, mixes
    them. Strided convolutions use the reference's fixed padding.

    Args:
      filters: Output channels.
      strides: Convolution stride. Defaults to 1.
      sk_ratio: Width of the mixing bottleneck relative to `filters`.
      min_dim: Minimum width of the mixing bottleneck. Defaults to 32.
      batch_norm_decay: Batch-norm momentum. Defaults to 0.9.
      global_bn: Cross-replica batch norm. Defaults to False.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        sk_ratio: float = 0.0625,
        min_dim: int = _SK_MIN_DIM,
        batch_norm_decay: float = 0.9,
        global_bn: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if sk_ratio <= 0:
            raise ValueError(f"SelectiveKernelConv needs sk_ratio > 0. Received: sk_ratio={sk_ratio}")
        self.filters = int(filters)
        self.strides = int(strides)
        self.sk_ratio = float(sk_ratio)
        self.min_dim = int(min_dim)
        self.batch_norm_decay = float(batch_norm_decay)
        self.global_bn = bool(global_bn)
        mid_dim = max(int(self.filters * self.sk_ratio), self.min_dim)
        padding = "same" if self.strides == 1 else "valid"
        self.conv = _conv(2 * self.filters, 3, self.strides, padding, "conv")
        self.bn = batch_norm("bn", self.batch_norm_decay, self.global_bn)
        self.mix_conv0 = _conv(mid_dim, 1, 1, "valid", "mix_conv0")
        self.mix_bn = batch_norm("mix_bn", self.batch_norm_decay, self.global_bn)
        self.mix_conv1 = _conv(2 * self.filters, 1, 1, "valid", "mix_conv1")

    def build(self, input_shape):
        self.conv.build((None, None, None, input_shape[-1]))
        self.bn.build((None, None, None, 2 * self.filters))
        self.mix_conv0.build((None, 1, 1, self.filters))
        self.mix_bn.build((None, 1, 1, self.mix_conv0.filters))
        self.mix_conv1.build((None, 1, 1, self.mix_conv0.filters))

    def call(self, inputs, training=None):
        x = inputs
        if self.strides > 1:
            before, after = fixed_padding_amounts(3)
            x = ops.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])
        x = ops.relu(self.bn(self.conv(x), training=training))
        streams = ops.stack(ops.split(x, 2, axis=-1), axis=0)  # (2, B, H, W, filters)

        pooled = ops.mean(ops.sum(streams, axis=0), axis=(1, 2), keepdims=True)
        mix = ops.relu(self.mix_bn(self.mix_conv0(pooled), training=training))
        mix = ops.stack(ops.split(self.mix_conv1(mix), 2, axis=-1), axis=0)
        weights = ops.softmax(mix, axis=0)  # Per-channel choice between streams.
        return ops.sum(streams * weights, axis=0)

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            if self.strides == 1:
                return size
            return (size + 2 - 3) // self.strides + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            strides=self.strides,
            sk_ratio=self.sk_ratio,
            min_dim=self.min_dim,
            batch_norm_decay=self.batch_norm_decay,
            global_bn=self.global_bn,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_simclr")
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation channel gate (Hu et al. 2018, arXiv:1709.01507).

    The reduced width is `max(1, int(filters * se_ratio))` where `filters` is the
    block's (bottleneck) width, as the reference; the gate has as many channels as
    the input.

    Args:
      filters: Block width the reduction is relative to.
      se_ratio: Reduction ratio, > 0.
    """

    def __init__(self, filters: int, se_ratio: float, **kwargs):
        super().__init__(**kwargs)
        if se_ratio <= 0:
            raise ValueError(f"SqueezeExcite needs se_ratio > 0. Received: se_ratio={se_ratio}")
        self.filters = int(filters)
        self.se_ratio = float(se_ratio)
        self.se_reduce = self._conv1x1(max(1, int(self.filters * self.se_ratio)), "se_reduce")
        self.se_expand = None  # Its width is the input's, known in build().

    @staticmethod
    def _conv1x1(filters, name):
        initializer = keras.initializers.VarianceScaling()
        return layers.Conv2D(filters, 1, padding="same", use_bias=True, kernel_initializer=initializer, name=name)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.se_expand = self._conv1x1(channels, "se_expand")
        self.se_reduce.build((None, 1, 1, channels))
        self.se_expand.build((None, 1, 1, self.se_reduce.filters))

    def call(self, inputs):
        squeezed = ops.mean(inputs, axis=(1, 2), keepdims=True)
        gate = self.se_expand(ops.relu(self.se_reduce(squeezed)))
        return ops.sigmoid(gate) * inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, se_ratio=self.se_ratio)
        return config


def _projection_shortcut(x, filters: int, strides: int, opts: BlockOptions, name: str):
    """1x1 projection + BN; with selective kernels the ResNet-D avg-pool variant."""
    if opts.sk_ratio > 0:
        if strides > 1:
            before, after = fixed_padding_amounts(2)
            x = layers.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pool_pad")(x)
        padding = "same" if strides == 1 else "valid"  # Padded explicitly above when strided.
        x = layers.AveragePooling2D(pool_size=2, strides=strides, padding=padding, name=f"{name}_pool")(x)
        x = conv2d_fixed_padding(x, filters, 1, 1, f"{name}_conv")
    else:
        x = conv2d_fixed_padding(x, filters, 1, strides, f"{name}_conv")
    return _bn_relu(x, opts, f"{name}_bn", None)


def residual_block(x, filters: int, strides: int, use_projection: bool, opts: BlockOptions, name: str):
    """Basic block (two 3x3 convs) of ResNet-18/34.

    Args:
      x: Input tensor.
      filters: Channels of both convs and of the output.
      strides: Stride of the first conv and of the projection shortcut.
      use_projection: Project the shortcut (first block of every group).
      opts: Shared block options.
      name: Prefix of every layer name, e.g. "block_group1_block0".

    Returns:
      The block output, relu(branch + shortcut).
    """
    shortcut = x
    if use_projection:
        shortcut = _projection_shortcut(x, filters, strides, opts, f"{name}_proj")
    y = conv2d_fixed_padding(x, filters, 3, strides, f"{name}_conv1")
    y = _bn_relu(y, opts, f"{name}_bn1", f"{name}_relu1")
    y = conv2d_fixed_padding(y, filters, 3, 1, f"{name}_conv2")
    y = _bn_relu(y, opts, f"{name}_bn2", None, zero_init=True)
    if opts.se_ratio > 0:
        y = SqueezeExcite(filters, opts.se_ratio, name=f"{name}_se")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def bottleneck_block(x, filters: int, strides: int, use_projection: bool, opts: BlockOptions, name: str):
    """Bottleneck block (1x1, 3x3 or selective kernel, 1x1 to 4*filters).

    Args:
      x: Input tensor.
      filters: Bottleneck width; the output has 4 * filters channels.
      strides: Stride of the 3x3 conv and of the projection shortcut.
      use_projection: Project the shortcut (first block of every group).
      opts: Shared block options.
      name: Prefix of every layer name, e.g. "block_group1_block0".

    Returns:
      The block output, relu(branch + shortcut).
    """
    out_filters = _BOTTLENECK_EXPANSION * filters
    shortcut = x
    if use_projection:
        shortcut = _projection_shortcut(x, out_filters, strides, opts, f"{name}_proj")
    y = conv2d_fixed_padding(x, filters, 1, 1, f"{name}_conv1")
    y = _bn_relu(y, opts, f"{name}_bn1", f"{name}_relu1")
    if opts.sk_ratio > 0:
        y = SelectiveKernelConv(
            filters,
            strides,
            opts.sk_ratio,
            batch_norm_decay=opts.batch_norm_decay,
            global_bn=opts.global_bn,
            name=f"{name}_sk_conv2",
        )(y)
    else:
        y = conv2d_fixed_padding(y, filters, 3, strides, f"{name}_conv2")
        y = _bn_relu(y, opts, f"{name}_bn2", f"{name}_relu2")
    y = conv2d_fixed_padding(y, out_filters, 1, 1, f"{name}_conv3")
    y = _bn_relu(y, opts, f"{name}_bn3", None, zero_init=True)
    if opts.se_ratio > 0:
        y = SqueezeExcite(filters, opts.se_ratio, name=f"{name}_se")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def block_group(x, block_fn, filters: int, num_blocks: int, strides: int, opts: BlockOptions, name: str):
    """`num_blocks` blocks; the first strides and projects its shortcut."""
    for i in range(num_blocks):
        first = i == 0
        x = block_fn(x, filters, strides if first else 1, first, opts, f"{name}_block{i}")
    return x


def stem(x, width_multiplier: float, cifar_stem: bool, opts: BlockOptions, cifar_stem_stride: int = 1):
    """The layers before block_group1.

    Returns:
      (initial_conv, initial_max_pool): the last stem conv's output before BN
      (the reference's `initial_conv` tensor) and the stem output.
    """
    channels = scaled_channels(64, width_multiplier)
    if cifar_stem:
        conv = conv2d_fixed_padding(x, channels, 3, cifar_stem_stride, "initial_conv")
        y = _bn_relu(conv, opts, "initial_bn", "initial_relu")
        return conv, layers.Identity(name="initial_max_pool")(y)
    if opts.sk_ratio > 0:  # ResNet-D: three 3x3 convs instead of one 7x7.
        half = scaled_channels(32, width_multiplier)
        y = conv2d_fixed_padding(x, half, 3, 2, "initial_conv1")
        y = _bn_relu(y, opts, "initial_bn1", "initial_relu1")
        y = conv2d_fixed_padding(y, half, 3, 1, "initial_conv2")
        y = _bn_relu(y, opts, "initial_bn2", "initial_relu2")
        conv = conv2d_fixed_padding(y, channels, 3, 1, "initial_conv")
    else:
        conv = conv2d_fixed_padding(x, channels, 7, 2, "initial_conv")
    y = _bn_relu(conv, opts, "initial_bn", "initial_relu")
    y = layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name="initial_max_pool")(y)
    return conv, y


def _check_stem_stride(stride, cifar_stem: bool, name: str, other_stem: str) -> None:
    if stride not in CIFAR_STEM_STRIDES:
        raise ValueError(f"{name} must be one of {CIFAR_STEM_STRIDES}. Received: {name}={stride!r}")
    if stride != 1 and not cifar_stem:
        raise ValueError(f"{name}={stride} sets the CIFAR stem's stride, but {other_stem} selects the ImageNet stem; leave {name}=1 there.")


def _check_depth(depth):
    if depth not in BLOCKS_PER_DEPTH:
        raise ValueError(f"Unsupported ResNet depth; use one of {sorted(BLOCKS_PER_DEPTH)}. Received: depth={depth}")


def resnet(
    depth: int = 50,
    width_multiplier: float = 1.0,
    cifar_stem: bool = False,
    sk_ratio: float = 0.0,
    se_ratio: float = 0.0,
    batch_norm_decay: float = 0.9,
    global_bn: bool = False,
    name: str = "resnet",
    cifar_stem_stride: int = 1,
) -> keras.Model:
    """ResNet v1 encoder as the SimCLR reference, returning a dict of features.

    Args:
      depth: 18 or 34 (basic blocks), 50, 101, 152 or 200 (bottlenecks).
        Defaults to 50.
      width_multiplier: Channel multiplier; see `scaled_channels` for the
        rounding of fractional values. Defaults to 1.0.
      cifar_stem: 3x3 stride-1 stem without max pool (small images). Defaults to
        False.
      sk_ratio: Selective kernels with this ratio (SimCLRv2 uses 0.0625); also
        switches to the ResNet-D stem and shortcuts. 0 disables. Defaults to 0.
      se_ratio: Squeeze-excitation ratio; 0 disables. Defaults to 0.
      batch_norm_decay: Batch-norm momentum. Defaults to 0.9.
      global_bn: Cross-replica batch norm (TensorFlow backend). Defaults to False.
      name: Model name. Defaults to "resnet".
      cifar_stem_stride: The CIFAR stem conv's stride, 1 (the reference) or 2 (a quarter of the
        pixels for the block groups; same weight shapes). Defaults to 1.

    Returns:
      A functional `keras.Model` mapping images (B, H, W, 3) to a dict with
      the keys `ENCODER_OUTPUT_KEYS`; `final_avg_pool` is (B, output_dim(depth,
      width_multiplier)).
    """
    _check_depth(depth)
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0. Received: width_multiplier={width_multiplier}")
    if sk_ratio < 0 or se_ratio < 0:
        raise ValueError(f"sk_ratio and se_ratio must be >= 0 (0 disables). Received: sk_ratio={sk_ratio}, se_ratio={se_ratio}")
    if not 0.0 <= batch_norm_decay <= 1.0:
        raise ValueError(f"batch_norm_decay must be in [0, 1]. Received: batch_norm_decay={batch_norm_decay}")
    _check_stem_stride(cifar_stem_stride, cifar_stem, "cifar_stem_stride", "cifar_stem=False")

    opts = BlockOptions(float(batch_norm_decay), bool(global_bn), float(sk_ratio), float(se_ratio))
    block_fn = bottleneck_block if depth in BOTTLENECK_DEPTHS else residual_block

    images = keras.Input((None, None, 3), name="images")
    initial_conv, x = stem(images, width_multiplier, cifar_stem, opts, cifar_stem_stride)
    outputs = {"initial_conv": initial_conv, "initial_max_pool": x}
    for g, num_blocks in enumerate(BLOCKS_PER_DEPTH[depth], start=1):
        filters = scaled_channels(_GROUP_BASE_FILTERS[g - 1], width_multiplier)
        x = block_group(x, block_fn, filters, num_blocks, _GROUP_STRIDES[g - 1], opts, f"block_group{g}")
        outputs[f"block_group{g}"] = x
    outputs["final_avg_pool"] = layers.GlobalAveragePooling2D(name="final_avg_pool")(x)
    return keras.Model(images, outputs, name=name)


def stages(encoder: keras.Model) -> list[list[layers.Layer]]:
    """The encoder's layers by stage, for freezing "everything up to block k".

    Stage 0 is the stem (layers named `initial_*`), stages 1 to 4 are the block
    groups (`block_group{k}_*`). `final_avg_pool` has no weights and belongs to
    no stage. Setting `layer.trainable = False` on them also stops their
    batch-norm statistics updates (Keras 3 runs frozen BN in inference mode).
    """
    prefixes = ["initial_"] + [f"block_group{k}_" for k in range(1, 5)]
    return [[layer for layer in encoder.layers if layer.name.startswith(p)] for p in prefixes]


def check_config(config) -> None:
    """Flag values ResNet cannot build (ValueError naming the flag)."""
    if config.resnet_depth not in BLOCKS_PER_DEPTH:
        raise ValueError(f"--resnet_depth must be one of {tuple(sorted(BLOCKS_PER_DEPTH))}. Received: {config.resnet_depth}")
    if config.width_multiplier <= 0:
        raise ValueError(f"--width_multiplier must be > 0 (fractions like 0.125 are fine). Received: {config.width_multiplier}")
    if config.sk_ratio < 0 or config.se_ratio < 0:
        raise ValueError(f"--sk_ratio and --se_ratio must be >= 0 (0 disables). Received: {config.sk_ratio}, {config.se_ratio}")
    _check_stem_stride(config.cifar_stem_stride, config.cifar_stem, "--cifar_stem_stride", f"--image_size={config.image_size} (> 32)")


def total_stride(config) -> int:
    """How much the encoder downsamples: 8 (or 16 at stride 2) with the CIFAR stem (image_size <= 32), else 32.

    Padding rounds every stage up, so the final map is never below 1x1; under
    one stride's worth of pixels it is made of padding instead of image.
    """
    return CIFAR_STEM_STRIDE * config.cifar_stem_stride if config.cifar_stem else IMAGENET_STEM_STRIDE


def build(config) -> keras.Model:
    """The ResNet a `ModelConfig` describes (the `resnet` entry of `BACKBONES`)."""
    return resnet(
        depth=config.resnet_depth,
        width_multiplier=config.width_multiplier,
        cifar_stem=config.cifar_stem,
        cifar_stem_stride=config.cifar_stem_stride,
        sk_ratio=config.sk_ratio,
        se_ratio=config.se_ratio,
        batch_norm_decay=config.batch_norm_decay,
        global_bn=config.global_bn,
    )
