"""Exports: every loader reproduces the live model, fine-tuning works through each, writes are atomic.

The reference point is always the live Keras model in inference mode; each loader
(tf.saved_model, hub.load, the serving signature, Keras 3 TFSMLayer, load_encoder,
and hub.KerasLayer under tf_keras in a subprocess) is a second code path to it.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr import keras_internals
from tf_simclr.config import Config, ModelConfig, TrainConfig, config_from_dict
from tf_simclr.export import exports_dir, hub_module, load, network
from tf_simclr.models import build_model
from tf_simclr.storage import checkpoint as ckpt_lib

SIZE = 16
NUM_CLASSES = 5
ALL_KEYS = {
    "initial_conv", "initial_max_pool", "block_group1", "block_group2", "block_group3", "block_group4",
    "final_avg_pool", "proj_head_input", "proj_head_output", "logits_sup", "default",
}
TRAIN_BATCH = 8  # Even: oneDNN in TF 2.21 has crashed this ResNet's training step on odd batches.


def tiny_config(global_bn=False, model_dir="runs/tiny_run"):
    model = helpers.tiny_model_config(global_bn=global_bn, num_proj_layers=3)
    return Config(model=model, train=TrainConfig(model_dir=model_dir))


def images(batch, seed=0, size=SIZE):
    return np.random.default_rng(seed).uniform(size=(batch, size, size, 3)).astype("float32")


def perturb(model, seed=1):
    """Random weights and batch-norm statistics, so inference is not the fresh model's near-identity."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = np.asarray(v.numpy())
        if v.path.endswith("moving_variance") or v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, value.shape).astype("float32"))
        else:
            v.assign((value + rng.normal(0, 0.05, value.shape)).astype("float32"))


def live_outputs(model, x):
    out = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    out["default"] = out["final_avg_pool"]
    return out


def close(actual, expected, rtol=1e-5):
    """Within 1e-5, relative to the output's scale (graph and eager sum in different orders)."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=rtol * max(1.0, float(np.abs(expected).max())))


def collective_ops(module_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(module_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = {node.op for fn in proto.meta_graphs[0].graph_def.library.function for node in fn.node_def}
    return sorted(op for op in ops if any(s in op for s in ("Collective", "Nccl", "AllReduce", "CrossReplica")))


@pytest.fixture(scope="module")
def live():
    config = tiny_config()
    model = build_model(config.model, num_classes=NUM_CLASSES)
    perturb(model)
    return model, config


@pytest.fixture(scope="module")
def exported(live, tmp_path_factory):
    model, config = live
    path = str(tmp_path_factory.mktemp("export") / "module")
    meta = {"config": config.to_dict(), "dataset": "synthetic", "num_classes": NUM_CLASSES, "note": [1, "two"]}
    assert hub_module.export_saved_model(model, path, step=3, meta=meta) == path
    return path


@pytest.fixture(scope="module")
def global_bn_export(tmp_path_factory, two_cpu_strategy):
    """A model trained with synchronized batch norm under MirroredStrategy, exported inside its scope."""
    strategy = two_cpu_strategy
    config = tiny_config(global_bn=True)
    with strategy.scope():
        model = build_model(config.model, num_classes=NUM_CLASSES)
        model.compile(optimizer=keras.optimizers.SGD(1e-3))
    x = np.concatenate([images(8, 5), images(8, 6)], axis=-1)  # Two views on the channel axis.
    batch = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % NUM_CLASSES)).batch(8)
    views, labels = next(iter(strategy.experimental_distribute_dataset(batch)))
    # The model's own train_step, run eagerly on both replicas (fit would trace it: 4x slower).
    strategy.run(lambda v, l: model.train_step((v, l)), args=(views, labels))
    assert int(np.asarray(model.optimizer.iterations)) == 1
    path = str(tmp_path_factory.mktemp("gbn") / "module")
    with strategy.scope():  # As a checkpoint callback of a distributed run would.
        hub_module.export_saved_model(model, path, step=1, meta={"config": config.to_dict()})
    return model, path


def _first_stage_kernels(names):
    """Indices of the stem's and block_group1's convolution kernels among variable names (`initial_conv/kernel:0`,
    or `initial_conv_kernel:0` as TFSMLayer names them): what must move when the whole encoder trains."""
    found = [i for i, n in enumerate(names) if n.startswith(("initial_conv", "block_group1_")) and "kernel" in n]
    assert found, names[:5]
    return found


# ------------------------------------------------------------------ Loaders equal the live model
def test_every_loader_matches_the_live_model(live, exported):
    import tensorflow_hub as hub

    model, _ = live
    loaded = tf.saved_model.load(exported)
    hub_loaded = hub.load(exported)
    serving = loaded.signatures["serving_default"]
    tfsm = keras.layers.TFSMLayer(exported, call_endpoint="serve")
    encoder = load.load_encoder(exported)
    block2 = load.load_encoder(exported, output_key="block_group2")
    sm_encoder = load.load_encoder(exported, output_key="proj_head_output", from_saved_model=True)
    for batch in (2, 5):
        x = images(batch, seed=batch)
        want = live_outputs(model, x)
        for name, got in (
            ("tf.saved_model.load", loaded(x)),
            ("training=False", loaded(x, training=False)),
            ("hub.load", hub_loaded(x)),
            ("serving_default", serving(images=tf.constant(x))),
            ("TFSMLayer", tfsm(x)),
        ):
            assert set(got) == ALL_KEYS, name
            for key in ALL_KEYS:
                close(got[key], want[key])
        close(encoder(x), want["final_avg_pool"])
        close(block2(x), want["block_group2"])
        close(sm_encoder(x), want["proj_head_output"])
    # training=True was traced too and uses batch statistics: a different function.
    x = images(4)
    assert not np.allclose(loaded(x, training=True)["default"], live_outputs(model, x)["default"], atol=1e-3)


def test_module_exposes_the_hub_interface(live, exported):
    model, _ = live
    loaded = tf.saved_model.load(exported)
    assert len(loaded.variables) == len(model.encoder.weights) + len(model.projection_head.weights) + len(model.supervised_head.weights)
    assert len(loaded.trainable_variables) == len(model.trainable_weights)
    assert all(v.trainable for v in loaded.trainable_variables)
    assert list(loaded.regularization_losses) == []
    assert {exports_dir.ENCODER_FILE, exports_dir.EXPORT_META_FILE, "saved_model.pb", "variables"} <= set(os.listdir(exported))
    assert collective_ops(exported) == []


# ------------------------------------------------------------------ Fine-tuning
def _fit_classifier(encoder_layer, steps=6):
    """A linear head over `encoder_layer` (a Keras 3 layer -> features), trained on one fixed batch."""
    inputs = keras.Input((SIZE, SIZE, 3))
    logits = keras.layers.Dense(NUM_CLASSES)(encoder_layer(inputs))
    classifier = keras.Model(inputs, logits)
    classifier.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = images(TRAIN_BATCH, seed=11), np.arange(TRAIN_BATCH) % NUM_CLASSES
    return classifier.fit(x, y, batch_size=TRAIN_BATCH, epochs=steps, verbose=0).history["loss"]


def _max_change(before, variables):
    return max(float(np.abs(a - v.numpy()).max()) for a, v in zip(before, variables))


def test_tfsm_layer_fine_tunes_in_keras3_fit(exported):
    layer = keras.layers.TFSMLayer(exported, call_endpoint="serve", call_training_endpoint="call_training", trainable=True)
    trainable = layer.trainable_weights
    assert len(trainable) > 0
    before = [v.numpy().copy() for v in trainable]
    losses = _fit_classifier(lambda x: layer(x)["default"])
    assert _max_change(before, trainable) > 1e-6
    # Not only the last layers learnt: every stem and block_group1 kernel moved too.
    for i in _first_stage_kernels([v.name for v in trainable]):
        assert float(np.abs(trainable[i].numpy() - before[i]).max()) > 0, trainable[i].name
    assert losses[-1] < losses[0]


def test_load_encoder_fine_tunes_or_stays_frozen(live, exported):
    encoder = load.load_encoder(exported, trainable=True)
    kernel = encoder.get_layer("resnet").get_layer("block_group1_block0_conv1").kernel  # Deep in the encoder.
    kernel_before = kernel.numpy().copy()
    before = [v.numpy().copy() for v in encoder.trainable_weights]
    assert len(before) == len(live[0].encoder.trainable_weights)
    losses = _fit_classifier(encoder)
    assert _max_change(before, encoder.trainable_weights) > 1e-6
    assert float(np.abs(kernel.numpy() - kernel_before).max()) > 0
    assert losses[-1] < losses[0]

    frozen = load.load_encoder(exported, trainable=False)
    assert frozen.trainable_weights == []
    everything = [v.numpy().copy() for v in frozen.weights]  # Batch-norm statistics included.
    _fit_classifier(frozen, steps=2)
    assert _max_change(everything, frozen.weights) == 0.0


def test_global_bn_model_exports_without_sync_ops(global_bn_export):
    model, path = global_bn_export
    assert any(getattr(l, "synchronized", False) for l in model.encoder.layers)  # It really trained sync-BN.
    assert collective_ops(path) == []
    encoder = load.load_encoder(path, trainable=True)
    bns = [l for l in encoder.get_layer("resnet").layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.synchronized for l in bns)
    x = images(4, seed=3)
    want = live_outputs(model, x)
    got = tf.saved_model.load(path)(x)
    for key in ALL_KEYS:
        close(got[key], want[key])
    # Fine-tuning it through hub.KerasLayer(trainable=True), issues #108/#116/#195: see the tf_keras test.


@pytest.mark.parametrize(
    "overrides",
    [
        dict(proj_head_mode="none"),
        dict(resnet_depth=50, sk_ratio=0.0625, se_ratio=0.25, proj_head_mode="linear", ft_proj_selector=-1),
    ],
)
def test_export_copy_of_other_architectures(overrides, tmp_path):
    """Selective kernels, squeeze-excite and other heads: same outputs, no synchronized batch norm."""
    config = dict(resnet_depth=18, width_multiplier=0.125, image_size=16, proj_out_dim=8, global_bn=True)
    model = build_model(ModelConfig(**{**config, **overrides}), num_classes=3)
    perturb(model, seed=2)
    model.encoder.get_layer("initial_bn").trainable = False  # As --fine_tune_after_block freezes.
    net = network.export_network(model)
    assert all(layer.trainable for layer in [net, *keras_internals.sublayers(net)])  # Downstream decides what trains.
    x = images(2, seed=8)
    want = live_outputs(model, x)
    got = net(x, training=False)
    assert set(got) | {"default"} == ALL_KEYS
    for key in got:
        close(got[key], want[key])
    assert any(getattr(l, "synchronized", False) for l in keras_internals.sublayers(model))
    assert not any(getattr(l, "synchronized", False) for l in keras_internals.sublayers(net))
    net.save(str(tmp_path / "net.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "net.keras"))
    close(reloaded(x)["final_avg_pool"], want["final_avg_pool"])


_HUB_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # Must precede the TensorFlow import.
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
    results = []
    for path, size, probe in json.loads(sys.argv[1]):
        x = np.load(probe)
        inference = hub.KerasLayer(path, output_key="block_group3")(x).numpy()
        layer = hub.KerasLayer(path, trainable=True, output_key="default")
        model = tf_keras.Sequential([tf_keras.Input((size, size, 3)), layer, tf_keras.layers.Dense(5)])
        model.compile(optimizer=tf_keras.optimizers.SGD(0.1),
                      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        xt = rng.uniform(size=(8, size, size, 3)).astype("float32")
        before = [v.numpy().copy() for v in layer.trainable_weights]
        losses = model.fit(xt, np.arange(8) % 5, batch_size=8, epochs=4, verbose=0).history["loss"]
        changes = [float(np.abs(v.numpy() - b).max()) for v, b in zip(layer.trainable_weights, before)]
        np.save(probe + ".out.npy", inference)
        results.append({"trainable": len(layer.trainable_weights), "changes": changes,
                        "names": [v.name for v in layer.trainable_weights], "losses": losses})
    print("RESULTS" + json.dumps(results))
    """
)


def test_hub_keras_layer_fine_tunes_under_tf_keras(global_bn_export, tmp_path):
    """hub.KerasLayer(trainable=True) needs tf_keras, chosen before TF is imported: a subprocess.

    The module is the one trained with synchronized batch norm, the case the
    reference's exports failed (issues #108/#116/#195).
    """
    model, path = global_bn_export
    x = images(3, seed=SIZE)
    probe = str(tmp_path / f"probe{SIZE}.npy")
    np.save(probe, x)
    block3 = live_outputs(model, x)["block_group3"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, json.dumps([(path, SIZE, probe)])], capture_output=True, text=True,
        env=env, timeout=300,
    )
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULTS")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    (result,) = json.loads(lines[0][len("RESULTS"):])
    close(np.load(probe + ".out.npy"), block3)
    assert result["trainable"] == len(model.trainable_weights)
    assert max(result["changes"]) > 1e-6
    # Every first-stage kernel (stem and block_group1) learnt, not only the layers next to the new head.
    first_stage = _first_stage_kernels(result["names"])
    assert all(result["changes"][i] > 0 for i in first_stage), [result["names"][i] for i in first_stage]
    assert result["losses"][-1] < result["losses"][0]


# ------------------------------------------------------------------ Atomic writes and pruning
def test_crash_mid_export_leaves_previous_module(live, exported, tmp_path, monkeypatch):
    model, config = live
    previous = str(tmp_path / "module")
    shutil.copytree(exported, previous)
    os.makedirs(tmp_path / ".tmp-module-stale")  # Left by an export killed earlier.

    def crash(obj, export_dir, *args, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    for target in (previous, str(tmp_path / "fresh")):
        with pytest.raises(OSError, match="disk full"):
            hub_module.export_saved_model(model, target, step=9, meta={"config": config.to_dict()})
    assert sorted(os.listdir(tmp_path)) == ["module"]  # No partial module, no temporary folders.
    assert exports_dir.read_export_meta(previous)["step"] == 3
    for name in ("saved_model.pb", exports_dir.ENCODER_FILE, os.path.join("variables", "variables.index")):
        with open(os.path.join(previous, name), "rb") as a, open(os.path.join(exported, name), "rb") as b:
            assert a.read() == b.read(), name


def test_interrupted_replacement_is_rolled_back(tmp_path):
    old = tmp_path / ".old-7-abc"  # A complete module (its commit marker written), moved aside...
    old.mkdir()
    (old / "saved_model.pb").write_bytes(b"previous")
    (old / exports_dir.EXPORT_META_FILE).write_text('{"step": 7}')
    (tmp_path / ".tmp-7-def").mkdir()  # ...and its replacement, never finished.
    assert sorted(exports_dir.recover_interrupted(str(tmp_path))) == [".old-7-abc", ".tmp-7-def"]
    assert sorted(os.listdir(tmp_path)) == ["7"]
    assert (tmp_path / "7" / "saved_model.pb").read_bytes() == b"previous"


def _fake_module(folder, step):
    os.makedirs(folder / str(step))
    (folder / str(step) / "saved_model.pb").write_bytes(b"fake")
    (folder / str(step) / exports_dir.EXPORT_META_FILE).write_text(json.dumps({"step": step}))


def test_export_to_hub_dir_replaces_and_keeps_newest(live, tmp_path):
    model, config = live
    base = tmp_path / "hub"
    for step in (1, 2, 5):
        _fake_module(base, step)
    (base / "notes").mkdir()
    path = hub_module.export_to_hub_dir(model, str(base), 5, keep_max=2, meta={"config": config.to_dict()})
    assert path == str(base / "5")
    assert sorted(os.listdir(base)) == ["2", "5", "notes"]
    assert exports_dir.read_export_meta(str(base))["step"] == 5  # The fake step 5 was replaced.
    assert (base / "5" / "saved_model.pb").read_bytes() != b"fake"
    assert exports_dir.exported_steps(str(base)) == [2, 5]
    assert exports_dir.resolve_export(str(base)) == str(base / "5")


def test_prune_exports_rules(tmp_path):
    for step in (3, 10, 20, 100):
        _fake_module(tmp_path, step)
    assert exports_dir.prune_exports(str(tmp_path), 0) == []  # 0 keeps all, as the reference.
    assert exports_dir.prune_exports(str(tmp_path), 1, keep=(3,)) == [10, 20]  # Numeric order, not text order.
    assert exports_dir.exported_steps(str(tmp_path)) == [3, 100]


# ------------------------------------------------------------------ Metadata and checkpoints
def test_metadata_round_trips(live, exported):
    model, config = live
    meta = exports_dir.read_export_meta(exported)
    assert meta["step"] == 3 and meta["format"] == hub_module.FORMAT
    assert meta["dataset"] == "synthetic" and meta["num_classes"] == NUM_CLASSES and meta["note"] == [1, "two"]
    assert config_from_dict(meta["config"]) == config
    assert meta["input"]["dtype"] == "float32" and meta["input"]["value_range"] == [0.0, 1.0]
    assert meta["input"]["shape"] == [None, SIZE, SIZE, 3] and meta["input"]["layout"] == "channels_last"
    assert set(meta["output_keys"]) == ALL_KEYS
    want = live_outputs(model, images(1))
    for key in ALL_KEYS:
        assert meta["outputs"][key]["shape"] == [None, *want[key].shape[1:]], key
    assert json.loads(json.dumps(meta)) == meta


def test_export_command_from_a_checkpoint_matches_live_model(live, tmp_path, monkeypatch, capsys):
    from tf_simclr import cli

    model, _ = live
    config = tiny_config(model_dir=str(tmp_path / "runs" / "my_run"))
    ckpt_lib.save_checkpoint(config.train.model_dir, 7, model, meta={"config": config.to_dict(), "num_classes": NUM_CLASSES})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["tf_simclr", "export", f"--checkpoint={config.train.model_dir}"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == os.path.join("exported_models", "my_run", "7")  # Default: exported_models/<run name>/<step>.
    loaded = tf.saved_model.load(path)
    x = images(3, seed=4)
    want = live_outputs(model, x)
    got = loaded(x)
    for key in ALL_KEYS:
        close(got[key], want[key])
    meta = exports_dir.read_export_meta(path)
    assert meta["step"] == 7 and config_from_dict(meta["config"]) == config
    assert meta["checkpoint"] == os.path.join(config.train.model_dir, "ckpt-7")


def test_export_needs_a_known_image_size(tmp_path):
    model = build_model(tiny_config().model)  # Its encoder takes any size: (None, None, 3).
    with pytest.raises(ValueError, match="image_size"):
        hub_module.export_saved_model(model, str(tmp_path / "m"), step=0)
    assert not os.path.exists(tmp_path / "m")


def test_fine_tuning_can_start_from_an_export(live, exported):
    """`--checkpoint` may name an export: its encoder and projection head load into a fresh model."""
    model, config = live
    fresh = build_model(config.model, num_classes=NUM_CLASSES)
    assert exports_dir.is_export(exported) and not exports_dir.is_export(os.path.dirname(exported) + "/missing")
    load.restore_from_export(fresh, exported)
    for part in ("encoder", "projection_head"):
        for a, b in zip(getattr(model, part).weights, getattr(fresh, part).weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = images(2)
    close(fresh(x, training=False)["proj_head_output"], model(x, training=False)["proj_head_output"])

    wider = build_model(ModelConfig(**{**config.model.__dict__, "width_multiplier": 0.25}))
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="does not fit"):
        load.restore_from_export(wider, exported)
