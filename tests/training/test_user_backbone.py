"""A backbone registered from user code pretrains, fine-tunes by its own stages, exports and reloads.

The encoder is a small Keras model (`helpers.micro_convnet`, no ResNet anywhere), registered
here with `tf_simclr.register_backbone`; it then goes through the normal paths:
`tf_simclr.train` (pretraining), fine-tuning with `--fine_tune_after_block`
freezing by the backbone's stage list, the TF-Hub export, `load_encoder`, and
`hub.KerasLayer(trainable=True)` under tf_keras in a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import helpers
import tf_simclr
from tf_simclr.export import exports_dir
from tf_simclr.export import load as load_lib
from tf_simclr.models import BACKBONES
from tf_simclr.storage import checkpoint as ckpt_lib

pytestmark = pytest.mark.slow
NAME = "tiny_convnet_for_tests"
SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def registered():
    tf_simclr.register_backbone(NAME, helpers.micro_convnet, stages=helpers.micro_stages,
                                total_stride=helpers.MICRO.total_stride, overwrite=True)
    yield
    BACKBONES.pop(NAME, None)


def config_for(image_folder, tmp_path, **train):
    return helpers.tiny_config(
        f"folder:{image_folder}", str(tmp_path / "run"),
        model={"backbone": NAME, "image_size": SIZE, "proj_out_dim": 8},
        export_at_end=True, export_dir=str(tmp_path / "export"), train_steps=4, checkpoint_steps=2, **train,
    )


def kernel(model, name):
    layer = next(l for l in keras_layers(model.encoder) if l.name == name)
    return np.array(layer.kernel.numpy())


def keras_layers(model):
    found = []
    for layer in model.layers:
        found += keras_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def test_pretrain_finetune_export_and_reload_a_user_backbone(image_folder, tmp_path):
    config = config_for(image_folder, tmp_path)
    keras.utils.set_random_seed(0)
    initial = tf_simclr.build_model(config.model)
    start = kernel(initial, "block1_conv")
    model = tf_simclr.train(config)
    assert kernel(model, "block1_conv").shape == start.shape == (3, 3, 3, 8)
    assert ckpt_lib.checkpoint_steps(config.train.model_dir) == [2, 4]

    # The export holds the user encoder's feature vector as `default`, with the same values as the live model.
    export = exports_dir.resolve_export(config.train.export_dir)
    x = np.random.default_rng(1).uniform(size=(3, SIZE, SIZE, 3)).astype("float32")
    live = keras.ops.convert_to_numpy(model(x, training=False)["final_avg_pool"])
    reloaded = load_lib.load_encoder(export)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), live, rtol=1e-5, atol=1e-6)
    assert live.shape == (3, 12)

    # Fine-tuning freezes the backbone's own stage 0 and trains stage 1 and the head.
    finetune = config.replace(train={"train_mode": "finetune", "checkpoint": config.train.model_dir,
                                     "fine_tune_after_block": 0, "model_dir": str(tmp_path / "ft"),
                                     "export_at_end": False, "zero_init_logits_layer": False})
    pretrained_stage0 = kernel(model, "block1_conv")
    pretrained_stage1 = kernel(model, "block2_conv")
    tuned = tf_simclr.train(finetune)
    np.testing.assert_array_equal(kernel(tuned, "block1_conv"), pretrained_stage0)
    assert np.abs(kernel(tuned, "block2_conv") - pretrained_stage1).max() > 1e-6

    # hub.KerasLayer(trainable=True) under tf_keras fine-tunes the exported user encoder, first stage included.
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, tensorflow as tf, tensorflow_hub as hub, tf_keras
        path, size = sys.argv[1], int(sys.argv[2])
        layer = hub.KerasLayer(path, trainable=True, output_key="default")
        model = tf_keras.Sequential([tf_keras.Input((size, size, 3)), layer, tf_keras.layers.Dense(2)])
        model.compile(optimizer=tf_keras.optimizers.SGD(0.5),
                      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.random.default_rng(0).uniform(size=(8, size, size, 3)).astype("float32")
        first = [v for v in layer.trainable_weights if "block1_conv" in v.name][0]
        before = first.numpy().copy()
        model.fit(x, np.arange(8) % 2, batch_size=8, epochs=3, verbose=0)
        print("RESULT" + json.dumps({"first_stage_change": float(np.abs(first.numpy() - before).max())}))
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script, export, str(SIZE)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT")[-1])
    assert result["first_stage_change"] > 1e-6
