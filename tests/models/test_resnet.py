"""The ResNet backbone (models.backbones.resnet): shapes, parameter counts, padding, init, names, stages, IO."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.models.backbones import resnet as resnet_lib
from tf_simclr.models.backbones.resnet import (
    BLOCKS_PER_DEPTH,
    ENCODER_OUTPUT_KEYS,
    conv2d_fixed_padding,
    output_dim,
    resnet,
    stages,
)

# Architecture table written out independently of the module (He et al. 2016, Table 1).
PAPER_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}
BASE = [64, 128, 256, 512]


def _channels(base, w):
    return max(1, int(round(base * w)))


def expected_trainable_params(depth, w, cifar=False, sk=0.0, se=0.0):
    """Closed-form count of conv kernels + BN gamma/beta (+ SE biases)."""
    bn = lambda ch: 2 * ch  # noqa: E731
    stem = _channels(64, w)
    if cifar:
        total = 9 * 3 * stem + bn(stem)
    elif sk:
        half = _channels(32, w)
        total = 9 * 3 * half + bn(half) + 9 * half * half + bn(half) + 9 * half * stem + bn(stem)
    else:
        total = 49 * 3 * stem + bn(stem)
    in_ch, bottleneck = stem, depth >= 50
    for g, n in enumerate(PAPER_BLOCKS[depth]):
        f = _channels(BASE[g], w)
        out = 4 * f if bottleneck else f
        for i in range(n):
            if i == 0:  # Projection shortcut: 1x1 conv + BN (also with ResNet-D avg pool).
                total += in_ch * out + bn(out)
            if bottleneck:
                total += in_ch * f + bn(f) + f * out + bn(out)
                if sk:
                    mid = max(int(f * sk), 32)
                    total += 9 * f * 2 * f + bn(2 * f) + f * mid + bn(mid) + mid * 2 * f
                else:
                    total += 9 * f * f + bn(f)
            else:
                total += 9 * in_ch * f + bn(f) + 9 * f * f + bn(f)
            if se:
                r = max(1, int(f * se))
                total += out * r + r + r * out + out
            in_ch = out
    return total




def _tiny_resnet(**overrides) -> keras.Model:
    """ResNet-18 at width 1/8 with the CIFAR stem (the old package's `_tiny_resnet`)."""
    values = dict(depth=18, width_multiplier=0.125, cifar_stem=True, name="resnet_tiny")
    values.update(overrides)
    return resnet(**values)


def _np(x):
    """Tensor or variable to numpy (np.asarray on a keras Variable warns under numpy 2)."""
    return x.numpy() if isinstance(x, keras.Variable) else keras.ops.convert_to_numpy(x)


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def _fixed_conv_size(size, kernel, stride):
    return (size + kernel - 1 - kernel) // stride + 1


def _expected_spatial(size, cifar):
    """Spatial sizes of every output, derived from the padding rules."""
    if cifar:
        conv = pool = size
    else:
        conv = _fixed_conv_size(size, 7, 2)
        pool = -(-conv // 2)  # 'SAME' max pool, stride 2.
    sizes = {"initial_conv": conv, "initial_max_pool": pool, "block_group1": pool}
    s = pool
    for g in (2, 3, 4):
        s = _fixed_conv_size(s, 3, 2)
        sizes[f"block_group{g}"] = s
    return sizes


def _numpy_conv(x, kernel, stride, pad):
    """Direct NHWC convolution with explicit (before, after) zero padding."""
    x = np.pad(x, [(0, 0), pad, pad, (0, 0)])
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


# ----------------------------------------------------------------------------
# Shapes and channels
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth,width,cifar,size",
    [(18, 0.125, True, 16), (34, 0.25, False, 33), (50, 0.125, False, 32), (18, 0.25, False, 20)],
)
def test_output_shapes_and_channels(depth, width, cifar, size):
    model = resnet(depth, width, cifar_stem=cifar)
    out = model(_images(2, size), training=False)
    assert tuple(out) == ENCODER_OUTPUT_KEYS
    expansion = 4 if depth >= 50 else 1
    channels = {
        "initial_conv": _channels(64, width),
        "initial_max_pool": _channels(64, width),
        **{f"block_group{g}": expansion * _channels(BASE[g - 1], width) for g in range(1, 5)},
    }
    for key, s in _expected_spatial(size, cifar).items():
        assert tuple(out[key].shape) == (2, s, s, channels[key]), key
    assert tuple(out["final_avg_pool"].shape) == (2, output_dim(depth, width))
    assert output_dim(depth, width) == channels["block_group4"]
    np.testing.assert_allclose(out["final_avg_pool"], np.mean(out["block_group4"], axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_cifar_max_pool_is_bn_relu_of_initial_conv():
    model = _tiny_resnet()
    out = model(_images(2, 8), training=False)
    bn = model.get_layer("initial_bn")
    gamma, beta, mean, var = (_np(w) for w in bn.weights)
    expected = np.maximum((np.asarray(out["initial_conv"]) - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0)
    np.testing.assert_allclose(out["initial_max_pool"], expected, rtol=1e-5, atol=1e-6)
    assert [l.name for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)] == []


def test_output_dim_and_width_rule():
    assert output_dim(18, 1) == 512 and output_dim(34, 2) == 1024
    assert output_dim(50, 1) == 2048 and output_dim(152, 3) == 6144
    assert output_dim(50, 0.125) == 256 and output_dim(18, 0.25) == 128
    # Integer multipliers give exactly the reference's channel counts.
    for w in (1, 2, 3, 4):
        assert [resnet_lib.scaled_channels(b, w) for b in BASE] == [b * w for b in BASE]
    assert resnet_lib.scaled_channels(64, 0.01) == 1


def test_invalid_arguments_raise_with_the_bad_value():
    with pytest.raises(ValueError, match="depth=42"):
        resnet(42)
    with pytest.raises(ValueError, match="width_multiplier=0"):
        resnet(18, 0)
    # The old `stage_layers(encoder, 5)` error is now `--fine_tune_after_block`'s range check
    # (tests/models/test_factory.py); `stages` always returns the five stages.
    assert len(stages(_tiny_resnet())) == 5


# ----------------------------------------------------------------------------
# Parameter counts and block counts
# ----------------------------------------------------------------------------


def test_resnet50_trunk_parameter_count():
    model = resnet(50, 1.0)
    assert expected_trainable_params(50, 1.0) == 23_508_032
    assert _trainable(model) == 23_508_032
    # Non-trainable: BN moving mean and variance, as many as gamma + beta.
    bn_params = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    gammas_betas = sum(int(np.prod(v.shape)) for v in model.trainable_weights if v.path.endswith(("gamma", "beta")))
    assert bn_params == gammas_betas


def test_resnet18_width1_parameter_count():
    assert _trainable(resnet(18, 1.0)) == expected_trainable_params(18, 1.0)


@pytest.mark.parametrize("depth", [34, 101, 152, 200])
def test_deep_variants_block_counts_and_parameters(depth):
    model = resnet(depth, 0.125)
    for g, n in enumerate(PAPER_BLOCKS[depth], start=1):
        outs = [l.name for l in model.layers if l.name.startswith(f"block_group{g}_") and l.name.endswith("_out")]
        assert len(outs) == n
    assert _trainable(model) == expected_trainable_params(depth, 0.125)
    assert BLOCKS_PER_DEPTH[depth] == tuple(PAPER_BLOCKS[depth])


@pytest.mark.parametrize(
    "depth,sk,se,cifar",
    [(50, 0.0625, 0.0, False), (50, 0.0, 0.25, False), (50, 0.0625, 0.25, False), (18, 0.0625, 0.25, False), (34, 0.0, 0.25, True)],
)
def test_sk_and_se_variants_build_run_and_count(depth, sk, se, cifar):
    model = resnet(depth, 0.125, cifar_stem=cifar, sk_ratio=sk, se_ratio=se)
    assert _trainable(model) == expected_trainable_params(depth, 0.125, cifar=cifar, sk=sk, se=se)
    out = model(_images(2, 32), training=True)
    assert tuple(out["final_avg_pool"].shape) == (2, output_dim(depth, 0.125))
    assert np.all(np.isfinite(out["final_avg_pool"]))
    has_sk = any(isinstance(l, resnet_lib.SelectiveKernelConv) for l in model.layers)
    has_se = any(isinstance(l, resnet_lib.SqueezeExcite) for l in model.layers)
    assert has_sk == (sk > 0 and depth >= 50)
    assert has_se == (se > 0)


def test_selective_kernel_mixes_the_two_streams_with_a_softmax():
    layer = resnet_lib.SelectiveKernelConv(4, strides=2, sk_ratio=0.5, min_dim=3, name="sk")
    x = _images(2, 7, seed=3)
    y = np.asarray(layer(x, training=False))
    # Independent recomputation in numpy from the layer's own weights.
    k = _np(layer.conv.kernel)
    z = _numpy_conv(x, k, 2, (1, 1))
    g, b, m, v = (_np(w) for w in layer.bn.weights)
    z = np.maximum((z - m) / np.sqrt(v + 1e-5) * g + b, 0)
    s0, s1 = z[..., :4], z[..., 4:]
    pooled = (s0 + s1).mean(axis=(1, 2))
    h = pooled @ _np(layer.mix_conv0.kernel)[0, 0]
    g, b, m, v = (_np(w) for w in layer.mix_bn.weights)
    h = np.maximum((h - m) / np.sqrt(v + 1e-5) * g + b, 0)
    logits = h @ _np(layer.mix_conv1.kernel)[0, 0]
    a0 = 1 / (1 + np.exp(logits[:, 4:] - logits[:, :4]))
    expected = s0 * a0[:, None, None] + s1 * (1 - a0[:, None, None])
    assert layer.mix_conv0.filters == 3  # max(int(4 * 0.5), min_dim=3)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Padding and initialisation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_fixed_padding_matches_numpy_conv(size, kernel_size):
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, conv2d_fixed_padding(inputs, 2, kernel_size, 2, name="c"))
    x = _images(1, size, seed=1)
    total = kernel_size - 1
    expected = _numpy_conv(x, _np(model.get_layer("c").kernel), 2, (total // 2, total - total // 2))
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)
    if size % 2 == 0 and kernel_size == 3:  # 'SAME' would pad (0, 1) here: a real difference.
        same = _numpy_conv(x, _np(model.get_layer("c").kernel), 2, (0, 1))
        assert not np.allclose(same, expected, atol=1e-3)


@pytest.mark.parametrize("size", [9, 10])
def test_encoder_initial_conv_uses_fixed_padding(size):
    model = resnet(18, 0.125)
    x = _images(1, size, seed=2)
    out = model(x, training=False)
    expected = _numpy_conv(x, _np(model.get_layer("initial_conv").kernel), 2, (3, 3))
    np.testing.assert_allclose(out["initial_conv"], expected, rtol=1e-4, atol=1e-5)


def test_resnet_d_shortcut_pads_then_averages():
    model = resnet(50, 0.125, sk_ratio=0.0625)
    probe = keras.Model(model.input, [model.get_layer("block_group1_block2_out").output, model.get_layer("block_group2_block0_proj_pool").output])
    before, pooled = (np.asarray(t) for t in probe(_images(1, 20), training=False))
    assert before.shape[1] == 5  # Odd: the zero padding enters the last average.
    padded = np.pad(before, [(0, 0), (0, 1), (0, 1), (0, 0)])
    expected = np.stack([np.stack([padded[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2)) for j in range(3)], 1) for i in range(3)], 1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("depth,sk,se", [(18, 0.0, 0.0), (50, 0.0625, 0.25)])
def test_fresh_blocks_output_relu_of_shortcut(depth, sk, se):
    model = resnet(depth, 0.125, sk_ratio=sk, se_ratio=se)
    names = [l.name for l in model.layers if l.name.endswith("_out")]
    probes = {}
    for name in names:
        prefix = name[: -len("_out")]
        probes[name] = model.get_layer(name).output
        probes[prefix + "_in"] = model.get_layer(prefix + "_add").input[1]  # The shortcut.
        probes[prefix + "_branch"] = model.get_layer(prefix + "_add").input[0]
    values = keras.Model(model.input, probes)(_images(2, 32, seed=4), training=True)
    for name in names:
        prefix = name[: -len("_out")]
        np.testing.assert_array_equal(values[prefix + "_branch"], 0.0)
        np.testing.assert_allclose(values[name], np.maximum(values[prefix + "_in"], 0), atol=1e-6)
    last_bns = [l for l in model.layers if l.name.endswith("_bn2" if depth < 50 else "_bn3")]
    assert len(last_bns) == sum(PAPER_BLOCKS[depth])
    assert all(np.all(_np(l.gamma) == 0) for l in last_bns)
    assert np.all(_np(model.get_layer("initial_bn").gamma) == 1)


def test_batch_norm_settings():
    model = resnet(18, 0.125, batch_norm_decay=0.97)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == pytest.approx(0.97) and l.epsilon == 1e-5 and not l.synchronized for l in bns)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(not l.use_bias and isinstance(l.kernel_initializer, keras.initializers.VarianceScaling) for l in convs)


# ----------------------------------------------------------------------------
# Names, stages, serialization
# ----------------------------------------------------------------------------


def test_variable_paths_are_stable_across_builds():
    first = resnet(50, 0.125, sk_ratio=0.0625, se_ratio=0.25, name="first")
    keras.layers.Dense(3)(keras.Input((2,)))  # Unrelated auto-named layers in between.
    keras.layers.Conv2D(3, 1)(keras.Input((4, 4, 2)))
    second = resnet(50, 0.125, sk_ratio=0.0625, se_ratio=0.25, name="second")

    def paths(model):
        return [v.path.removeprefix(model.name + "/") for v in model.weights]

    assert paths(first) == paths(second)
    assert len(set(paths(first))) == len(first.weights)
    assert "block_group2_block0_conv1/kernel" in paths(first)
    assert "block_group2_block0_sk_conv2/mix_bn/gamma" in paths(first)
    assert "block_group4_block2_se/se_expand/bias" in paths(first)
    assert not any(auto in p for p in paths(first) for auto in ("conv2d", "batch_normalization", "dense"))


def test_stages_partition_the_weights():
    model = resnet(18, 0.125, sk_ratio=0.0625)
    by_stage = stages(model)
    assert len(by_stage) == 5
    assert "initial_conv" in [l.name for l in by_stage[0]]
    assert all(l.name.startswith("block_group3_") for l in by_stage[3])
    for k in range(1, 5):  # Every block-group layer is in its own group's stage.
        assert {l.name for l in by_stage[k]} == {l.name for l in model.layers if l.name.startswith(f"block_group{k}_")}
    staged = [l.name for s in by_stage for l in s]
    assert len(staged) == len(set(staged))
    unstaged = {l.name for l in model.layers} - set(staged)
    assert unstaged == {"images", "final_avg_pool"}
    stage_weights = sum(len(l.weights) for s in by_stage for l in s)
    assert stage_weights == len(model.weights)


def test_freezing_a_stage_freezes_its_weights_and_batch_norm():
    model = resnet(18, 0.125, cifar_stem=True)
    by_stage = stages(model)
    for s in range(3):
        for layer in by_stage[s]:
            layer.trainable = False
    frozen = {v.path for s in range(3) for l in by_stage[s] for v in l.weights}
    assert frozen and not frozen & {v.path for v in model.trainable_weights}
    bn = model.get_layer("block_group2_block0_bn1")
    before = _np(bn.moving_mean).copy()
    model(_images(2, 8), training=True)
    np.testing.assert_array_equal(_np(bn.moving_mean), before)
    assert not np.allclose(_np(model.get_layer("block_group3_block0_bn1").moving_mean), 0)


# Keras's own save/get_weights path converts variables with np.array(copy=False).
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_serialization_round_trips(tmp_path):
    model = resnet(50, 0.125, sk_ratio=0.0625, se_ratio=0.25, name="enc")
    x = _images(2, 16, seed=5)
    model(x, training=True)  # Move BN statistics away from their initial values.
    expected = model(x, training=False)

    path = str(tmp_path / "enc.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    for other in (loaded, clone, rebuilt):
        assert [v.path for v in other.weights] == [v.path for v in model.weights]
        got = other(x, training=False)
        assert tuple(got) == ENCODER_OUTPUT_KEYS
        for key in ENCODER_OUTPUT_KEYS:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)
    sk = loaded.get_layer("block_group2_block0_sk_conv2")
    assert isinstance(sk, resnet_lib.SelectiveKernelConv) and sk.strides == 2 and sk.sk_ratio == 0.0625


# ----------------------------------------------------------------------------
# Cross-replica batch norm
# ----------------------------------------------------------------------------


def test_global_bn_aggregates_statistics_across_replicas(two_cpu_strategy):
    strategy = two_cpu_strategy
    with strategy.scope():
        model = _tiny_resnet(global_bn=True, batch_norm_decay=0.5)
    assert model.get_layer("initial_bn").synchronized
    shards = [_images(2, 8, seed=6), _images(2, 8, seed=7) * 3.0 + 1.0]
    convs = [np.asarray(model(s, training=False)["initial_conv"]) for s in shards]

    @tf.function
    def step(x):
        return model(x, training=True)["final_avg_pool"]

    inputs = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(shards[ctx.replica_id_in_sync_group]))
    outputs = strategy.experimental_local_results(strategy.run(step, args=(inputs,)))
    assert [tuple(o.shape) for o in outputs] == [(2, 64), (2, 64)]

    global_var = np.concatenate(convs).var(axis=(0, 1, 2))
    local_var = np.mean([c.var(axis=(0, 1, 2)) for c in convs], axis=0)
    assert not np.allclose(global_var, local_var, rtol=0.05)  # The data make the test decisive.
    moving_var = model.get_layer("initial_bn").moving_variance
    for replica_value in strategy.experimental_local_results(moving_var.value):
        np.testing.assert_allclose(replica_value, 0.5 + 0.5 * global_var, rtol=1e-3)


# ----------------------------------------------------------------------------
# The `resnet` backbone entry: build from a ModelConfig, flag checks, stride
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("image_size, cifar", [(16, True), (32, True), (33, False)])
def test_build_follows_the_model_config(image_size, cifar):
    config = helpers.tiny_model_config(image_size=image_size, batch_norm_decay=0.8)
    model = resnet_lib.build(config)
    assert _trainable(model) == expected_trainable_params(18, 0.125, cifar=cifar)
    kernel = tuple(model.get_layer("initial_conv").kernel.shape)
    assert kernel == ((3, 3, 3, 8) if cifar else (7, 7, 3, 8))
    assert all(l.momentum == pytest.approx(0.8) for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    assert tuple(model(_images(1, image_size))["final_avg_pool"].shape) == (1, 64)


@pytest.mark.parametrize(
    "overrides, flag",
    [(dict(resnet_depth=42), "--resnet_depth"), (dict(width_multiplier=0.0), "--width_multiplier"),
     (dict(sk_ratio=-0.1), "--sk_ratio"), (dict(se_ratio=-1.0), "--se_ratio")],
)
def test_check_config_names_the_bad_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        resnet_lib.check_config(helpers.tiny_model_config(**overrides))
    resnet_lib.check_config(helpers.tiny_model_config())  # The tiny config itself is fine.


@pytest.mark.parametrize("image_size, stem_stride, stride", [(32, 1, 8), (32, 2, 16), (64, 1, 32)])
def test_total_stride_is_what_the_encoder_downsamples(image_size, stem_stride, stride):
    config = helpers.tiny_model_config(image_size=image_size, cifar_stem_stride=stem_stride)
    final_map = resnet_lib.build(config)(_images(1, image_size))["block_group4"].shape[1]
    assert image_size // final_map == stride
    assert resnet_lib.total_stride(config) == stride
    base = resnet_lib.CIFAR_STEM_STRIDE if config.cifar_stem else resnet_lib.IMAGENET_STEM_STRIDE
    assert stride == base * stem_stride


def test_stride_2_cifar_stem_is_the_stride_1_stem_subsampled_with_the_same_weights():
    """Same variables (a checkpoint fits either), and the stem conv at stride 2 is the stride-1 map at even pixels."""
    one = resnet(18, 0.125, cifar_stem=True)
    two = resnet(18, 0.125, cifar_stem=True, cifar_stem_stride=2)
    assert [(v.path, tuple(v.shape)) for v in one.weights] == [(v.path, tuple(v.shape)) for v in two.weights]
    two.set_weights(one.get_weights())
    images = _images(2, 28)
    conv_one = keras.ops.convert_to_numpy(one(images, training=False)["initial_conv"])
    conv_two = keras.ops.convert_to_numpy(two(images, training=False)["initial_conv"])
    # Fixed padding pads (k-1)//2 = 1 before and 1 after: the stride-2 conv's output i is centred on input 2i.
    np.testing.assert_allclose(conv_two, conv_one[:, ::2, ::2], rtol=1e-5, atol=1e-5)
    assert two(images, training=False)["block_group1"].shape[1:3] == (14, 14)


@pytest.mark.parametrize("overrides, message", [
    (dict(cifar_stem_stride=3), r"--cifar_stem_stride must be one of \(1, 2\)"),
    (dict(cifar_stem_stride=2, image_size=64), r"--cifar_stem_stride=2 sets the CIFAR stem's stride, but --image_size=64"),
])
def test_cifar_stem_stride_is_checked_against_the_stem_it_sets(overrides, message):
    with pytest.raises(ValueError, match=message):
        resnet_lib.check_config(helpers.tiny_model_config(**overrides))
    with pytest.raises(ValueError, match="cifar_stem_stride"):
        resnet(18, 0.125, cifar_stem=overrides.get("image_size", 32) <= 32, cifar_stem_stride=overrides["cifar_stem_stride"])


def test_strided_1x1_conv_on_few_channels_subsamples_first_with_the_same_math():
    """The oneDNN-safe form (1x1 average pool with the stride, then a stride-1 conv) equals x[:, ::2, ::2] @ W."""
    import tensorflow as tf

    from tf_simclr.models.backbones import resnet as resnet_module

    inputs = keras.Input((14, 14, 8))
    outputs = resnet_module.conv2d_fixed_padding(inputs, 16, 1, 2, "shortcut")
    layer_model = keras.Model(inputs, outputs)
    names = [layer.name for layer in layer_model.layers]
    assert "shortcut_subsample" in names and layer_model.get_layer("shortcut").strides == (1, 1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 14, 14, 8)).astype("float32")
    g = rng.normal(size=(3, 7, 7, 16)).astype("float32")
    kernel = layer_model.get_layer("shortcut").kernel
    with tf.GradientTape() as tape:
        y = layer_model(x)
        loss = tf.reduce_sum(y * g)
    (grad,) = tape.gradient(loss, [kernel.value])
    sub = x[:, ::2, ::2, :]
    np.testing.assert_allclose(y.numpy(), sub @ kernel.numpy()[0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad.numpy()[0, 0], np.einsum("bhwc,bhwo->co", sub, g), rtol=1e-4, atol=1e-4)
    # At 16 channels and more the convolution keeps its stride (oneDNN's kernel is safe there).
    wide = keras.Input((14, 14, 16))
    assert "wide_subsample" not in [l.name for l in keras.Model(wide, resnet_module.conv2d_fixed_padding(
        wide, 32, 1, 2, "wide")).layers]
