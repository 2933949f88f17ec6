"""`tf_simclr convert`: a reference model becomes a tf_simclr checkpoint and TF-Hub export.

Each loader of the converted files is compared with the outputs the reference's own SavedModel recorded on the
fixture's images (`outputs.npz`): the tf_simclr checkpoint, `tf.saved_model.load`, `keras.layers.TFSMLayer`,
`load_encoder`, `hub.KerasLayer` under tf_keras and Keras 3 on JAX (the last two in subprocesses: the backend and
tf_keras are chosen once per process). The converted export fine-tunes through `hub.KerasLayer(trainable=True)`;
the reference's SavedModel, whose `__call__` takes `trainable` where Keras passes `training`, does not.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tests.reference import fixture_files
from tf_simclr.config import config_from_dict
from tf_simclr.export import exports_dir, hub_module, load
from tf_simclr.storage import checkpoint as ckpt_lib

pytestmark = pytest.mark.slow


def _images():
    return fixture_files.recorded()["images"]


# ------------------------------------------------------------------ What convert writes and prints
def test_convert_prints_the_architecture_it_inferred_and_verifies(converted):
    printed = converted["stdout"]
    assert ("ResNet-50 width 0.125, selective kernels (sk_ratio 0.0625), ResNet-D stem (--image_size > 32); "
            "3-layer projection head to 128; 10-class supervised head") in printed
    assert ("--resnet_depth=50 --width_multiplier=0.125 --sk_ratio=0.0625 --se_ratio=0 --proj_head_mode=nonlinear "
            "--num_proj_layers=3 --proj_out_dim=128") in printed
    # --verify ran the reference SavedModel and the export on the same random images.
    line = next(l for l in printed.splitlines() if l.startswith("Largest difference"))
    differences = {k: float(v) for k, v in (item.split("=") for item in line.split(": ", 1)[1].split())}
    assert set(differences) >= {"final_avg_pool", "block_group4", "proj_head_output", "logits_sup"}
    assert max(differences.values()) < fixture_files.TOLERANCE, differences


def test_converted_checkpoint_records_the_architecture(converted):
    meta = ckpt_lib.read_meta(converted["checkpoint"])
    config = config_from_dict(meta["config"])
    flags = fixture_files.reference_flags()
    for name in fixture_files.ARCHITECTURE_FLAGS:
        assert getattr(config.model, name) == flags[name], name
    assert meta["num_classes"] == flags["num_classes"] and meta["step"] == 0
    assert meta["converted_from"] == os.path.abspath(fixture_files.SAVED_MODEL)
    export_meta = exports_dir.read_export_meta(converted["export"])
    assert export_meta["step"] == 0 and export_meta["converted_from"] == meta["converted_from"]


# ------------------------------------------------------------------ Equal outputs, in every loader
def test_converted_checkpoint_computes_the_reference_outputs(converted):
    model, _ = hub_module.model_from_checkpoint(converted["model_dir"])
    fixture_files.assert_outputs_equal_recorded(model(_images(), training=False))


def test_converted_export_computes_the_reference_outputs_in_every_loader(converted):
    export, images = converted["export"], _images()
    recorded = fixture_files.recorded()
    loaded = tf.saved_model.load(export)
    fixture_files.assert_outputs_equal_recorded({k: v.numpy() for k, v in loaded(images, training=False).items()})
    tfsm = keras.layers.TFSMLayer(export, call_endpoint="serve")
    fixture_files.assert_outputs_equal_recorded({k: np.asarray(v) for k, v in tfsm(images).items()})
    for key, want in (("default", "final_avg_pool"), ("block_group3", "block_group3"),
                      ("proj_head_output", "proj_head_output")):
        encoder = load.load_encoder(export, output_key=key)
        assert fixture_files.relative_error(np.asarray(encoder(images)), recorded[want]) < fixture_files.TOLERANCE
    saved_model_encoder = load.load_encoder(export, from_saved_model=True)
    assert fixture_files.relative_error(np.asarray(saved_model_encoder(images)),
                                        recorded["final_avg_pool"]) < fixture_files.TOLERANCE


def test_load_encoder_fine_tunes_the_converted_export(converted):
    keras.utils.set_random_seed(0)  # The new head's initial weights: whole-network steps on 8 images are noisy.
    encoder = load.load_encoder(converted["export"], trainable=True)
    before = [np.asarray(v).copy() for v in encoder.trainable_weights]
    classifier = keras.Sequential([encoder, keras.layers.Dense(2)])
    classifier.compile(optimizer=keras.optimizers.SGD(0.005),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.concatenate([_images(), _images()[:, ::-1]])
    losses = classifier.fit(x, np.arange(8) % 2, batch_size=8, epochs=5, verbose=0).history["loss"]
    moved = [float(np.abs(np.asarray(v) - b).max()) for v, b in zip(encoder.trainable_weights, before)]
    assert len(moved) > 0 and min(moved) > 0, [v.path for v, m in zip(encoder.trainable_weights, moved) if not m]
    assert losses[-1] < losses[0], losses


# ------------------------------------------------------------------ hub.KerasLayer under tf_keras
_HUB_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # Must precede the TensorFlow import.
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    converted, original, probe, out = sys.argv[1:5]
    images = np.load(probe)["images"]
    size = images.shape[1]
    result = {}
    np.save(out, hub.KerasLayer(converted, output_key="default")(images).numpy())

    def fine_tune(path):
        tf_keras.utils.set_random_seed(0)
        layer = hub.KerasLayer(path, trainable=True, output_key="default")
        model = tf_keras.Sequential([tf_keras.Input((size, size, 3)), layer, tf_keras.layers.Dense(2)])
        model.compile(optimizer=tf_keras.optimizers.SGD(0.005),
                      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.concatenate([images, images[:, ::-1]])
        before = [v.numpy().copy() for v in layer.trainable_weights]
        losses = model.fit(x, np.arange(8) % 2, batch_size=8, epochs=5, verbose=0).history["loss"]
        changes = [float(np.abs(v.numpy() - b).max()) for v, b in zip(layer.trainable_weights, before)]
        return {"losses": losses, "changes": changes, "names": [v.name for v in layer.trainable_weights]}

    result["converted"] = fine_tune(converted)
    try:
        fine_tune(original)
        result["original"] = "fine-tuned"
    except Exception as e:  # What the reference's users meet.
        result["original"] = f"{type(e).__name__}: {e}"
    print("RESULT" + json.dumps(result))
    """
)


def test_hub_keras_layer_fine_tunes_the_converted_export_but_not_the_original(converted, tmp_path):
    out = str(tmp_path / "default.npy")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, converted["export"], fixture_files.SAVED_MODEL,
                           fixture_files.OUTPUTS_FILE, out], capture_output=True, text=True, env=env, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT"):])
    recorded = fixture_files.recorded()["final_avg_pool"]
    assert fixture_files.relative_error(np.load(out), recorded) < fixture_files.TOLERANCE
    tuned = result["converted"]
    assert tuned["losses"][-1] < tuned["losses"][0], tuned["losses"]
    # Every encoder variable learnt (the heads are not on the path to "default", so they get no gradient).
    encoder = [(n, c) for n, c in zip(tuned["names"], tuned["changes"])
               if not n.startswith(("projection_head", "head_supervised"))]
    assert len(encoder) > 100 and all(c > 0 for _, c in encoder), [n for n, c in encoder if not c][:5]
    assert "trainable" in result["original"] and result["original"] != "fine-tuned", result["original"]


# ------------------------------------------------------------------ Keras 3 on JAX
_JAX_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import numpy as np

    from tf_simclr.export import hub_module, load

    assert keras.backend.backend() == "jax"
    export, checkpoint, probe, out = sys.argv[1:5]
    images = np.load(probe)["images"]
    results = {"encoder_keras": np.asarray(load.load_encoder(export)(images))}
    model, _ = hub_module.model_from_checkpoint(checkpoint)
    results.update({f"checkpoint/{k}": np.asarray(v) for k, v in model(images, training=False).items()})
    keras.utils.set_random_seed(0)
    encoder = load.load_encoder(export, trainable=True)
    before = [np.asarray(v).copy() for v in encoder.trainable_weights]
    classifier = keras.Sequential([encoder, keras.layers.Dense(2)])
    classifier.compile(optimizer=keras.optimizers.SGD(0.005),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.concatenate([images, images[:, ::-1]])
    results["losses"] = np.asarray(classifier.fit(x, np.arange(8) % 2, batch_size=8, epochs=5, verbose=0)
                                   .history["loss"])
    results["changes"] = np.asarray([np.abs(np.asarray(v) - b).max() for v, b in zip(encoder.trainable_weights,
                                                                                      before)])
    np.savez(out, **results)
    """
)


def test_jax_loads_and_fine_tunes_the_converted_export_and_checkpoint(converted, tmp_path):
    pytest.importorskip("jax")
    out = str(tmp_path / "jax.npz")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, converted["export"], converted["checkpoint"],
                           fixture_files.OUTPUTS_FILE, out], capture_output=True, text=True, env=env,
                          timeout=600, cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(out))
    recorded = fixture_files.recorded()
    assert fixture_files.relative_error(got["encoder_keras"], recorded["final_avg_pool"]) < fixture_files.TOLERANCE
    fixture_files.assert_outputs_equal_recorded({k.split("/", 1)[1]: v for k, v in got.items()
                                                 if k.startswith("checkpoint/")})
    assert got["losses"][-1] < got["losses"][0] and got["changes"].min() > 0


# ------------------------------------------------------------------ The checkpoint form; what is refused
def test_reference_checkpoint_converts_with_its_step(tmp_path):
    model_dir = str(tmp_path / "from_ckpt")
    assert helpers.run_cli("convert", fixture_files.MODEL_DIR, f"--model_dir={model_dir}",
                           f"--export_dir={tmp_path / 'exports'}", "--image_size=64") == 0
    step = fixture_files.CHECKPOINT_STEP
    assert ckpt_lib.checkpoint_steps(model_dir) == [step]
    model, meta = hub_module.model_from_checkpoint(model_dir)
    assert meta["step"] == step and meta["reference_form"] == "checkpoint"
    fixture_files.assert_outputs_equal_recorded(model(_images(), training=False))
    loaded = tf.saved_model.load(str(tmp_path / "exports" / str(step)))
    fixture_files.assert_outputs_equal_recorded({k: v.numpy() for k, v in loaded(_images(), training=False).items()})


@pytest.mark.parametrize("case", ["not_a_reference_model", "used_model_dir", "no_model_dir",
                                  "verify_without_saved_model", "selector_of_other_width"])
def test_convert_refuses_in_one_line(case, converted, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    new_dir = f"--model_dir={tmp_path / 'new'}"
    args, expected = {
        "not_a_reference_model": ([str(empty), new_dir], "holds no model written by google-research/simclr"),
        "used_model_dir": ([fixture_files.SAVED_MODEL, f"--model_dir={converted['model_dir']}"],
                           "already holds tf_simclr checkpoints"),
        "no_model_dir": ([fixture_files.SAVED_MODEL], "--model_dir"),
        "verify_without_saved_model": ([fixture_files.MODEL_DIR, new_dir, "--verify", "--image_size=64",
                                        f"--export_dir={tmp_path / 'exports'}"], "--verify compares with"),
        "selector_of_other_width": ([fixture_files.SAVED_MODEL, new_dir, "--ft_proj_selector=-1"],
                                    "--ft_proj_selector=-1 feeds the supervised head 128 features"),
    }[case]
    capsys.readouterr()
    assert helpers.run_cli("convert", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tf_simclr convert: error: ") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)
    if case != "verify_without_saved_model":
        assert not os.path.exists(tmp_path / "new")
