"""`--microbatch_size` (gradient caching): the chunked step's loss and gradients against the unchunked ones.

With batch norm frozen the chunked gradient equals the full-batch gradient; with
batch norm training, a chunk of M images is one replica of a run without
--global_bn, so the chunked step equals such a run on 2 logical CPUs; the moving
statistics move once per chunk, as a second code path (the chunks run one after
the other) computes them.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr import jobs
from tf_simclr.models import build_model
from tf_simclr.optim.optimizers import build_optimizer
from tf_simclr.steps import gradient_cache, tf_step
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer

IMAGES, CHUNK, SIZE, CLASSES = 8, 2, 16, 3
TINY = helpers.micro_model_config(image_size=SIZE)  # Chunking is the subject, not the ResNet: a fast encoder.


def _batch(seed=0, images=IMAGES, unlabelled=True):
    """Views and labels; some labels -1 unless compared across replicas (each replica averages its own labelled)."""
    rng = np.random.default_rng(seed)
    views = rng.random((images, SIZE, SIZE, 6), dtype=np.float32)
    labels = rng.integers(-1 if unlabelled else 0, CLASSES, images).astype(np.int32)
    return tf.constant(views), tf.constant(labels)


def _model(microbatch, frozen_bn=False, model_config=TINY, seed=3, batch_norm="paired"):
    keras.utils.set_random_seed(seed)
    model = build_model(model_config, num_classes=CLASSES, microbatch_size=microbatch, microbatch_bn=batch_norm)
    if frozen_bn:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # Inference mode: no batch statistics.
    optimizer = build_optimizer("momentum", 0.1, momentum=0.9)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    return model


def _plain(model, views, labels):
    with tf.GradientTape() as tape:
        total, logs = model.compute_losses(views, labels, training=True)
    return total, logs, tape.gradient(total, model.trainable_variables)


def _chunk_rows(chunk, index, shift):
    """Rows of a chunk, counted here: view 1 of images [cM, (c+1)M), view 2 of those `shift` chunks on."""
    count = IMAGES // chunk
    second = (index + shift) % count
    return [index * chunk + i for i in range(chunk)] + [IMAGES + second * chunk + i for i in range(chunk)]


@pytest.mark.parametrize("shift", [0, 1])
def test_chunks_and_their_assembly_take_the_rows_counted_independently(shift):
    rows = np.arange(2 * IMAGES)
    chunks = [gradient_cache.chunk_of(rows, IMAGES, CHUNK, c, shift) for c in range(IMAGES // CHUNK)]
    for c, chunk in enumerate(chunks):
        np.testing.assert_array_equal(np.asarray(chunk), _chunk_rows(CHUNK, c, shift))
    np.testing.assert_array_equal(np.asarray(gradient_cache.assemble(chunks, CHUNK, shift)), rows)
    if shift:  # No chunk holds both views of one image.
        assert all(not set(r % IMAGES for r in c[:CHUNK]) & set(r % IMAGES for r in c[CHUNK:])
                   for c in map(np.asarray, chunks))


@pytest.mark.parametrize("chunk,batch_norm", [(2, "paired"), (4, "paired"), (2, "shifted")])
def test_chunked_gradients_equal_full_batch_gradients_with_frozen_batch_norm(chunk, batch_norm):
    views, labels = _batch()
    plain_model, chunked_model = _model(0, frozen_bn=True), _model(chunk, frozen_bn=True, batch_norm=batch_norm)
    total, logs, expected = tf.function(lambda: _plain(plain_model, views, labels))()
    got_total, got_logs, got = tf.function(
        lambda: tf_step.cached_gradients(chunked_model, views, labels, chunked_model.trainable_variables))()
    np.testing.assert_allclose(float(got_total), float(total), rtol=1e-5)
    for name in ("contrast_loss", "contrast_acc", "sup_loss", "sup_acc", "weight_decay"):
        np.testing.assert_allclose(float(got_logs[name]), float(logs[name]), rtol=1e-5, atol=1e-7, err_msg=name)
    assert float(got_logs["replay_error"]) == 0.0
    nonzero = 0
    for variable, g, e in zip(plain_model.trainable_variables, got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-6, err_msg=variable.path)
        nonzero += float(np.max(np.abs(e.numpy()))) > 0
    assert nonzero == len(expected) >= 6  # Both convolutions and the heads (frozen batch norm: no gamma or beta).


def _assert_same_training(single, mirrored, data, steps, strategy):
    """Fits `single` on `data` and `mirrored` on its halves (one per replica); weights agree to 2% of their movement."""
    start = {v.path: np.array(v.numpy()) for v in single.trainable_variables}
    single.fit(data, epochs=steps, steps_per_epoch=1, verbose=0)
    halves = strategy.distribute_datasets_from_function(
        lambda ctx: data.unbatch().batch(IMAGES // 2, drop_remainder=True))
    mirrored.fit(halves, epochs=steps, steps_per_epoch=1, verbose=0)
    for a, b in zip(single.trainable_variables, mirrored.trainable_variables):
        moved = np.max(np.abs(a.numpy() - start[a.path]))
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=0.02 * moved + 1e-7, err_msg=a.path)


def test_chunks_normalize_like_replicas_without_global_batch_norm(two_cpu_strategy, tmp_path):
    """One replica, chunks of 4 images == 2 replicas of 4 images with per-replica batch norm (2 steps)."""
    batches = [_batch(seed, unlabelled=False) for seed in (1, 2)]
    chunked = _model(IMAGES // 2)
    ckpt_lib.save_checkpoint(str(tmp_path / "init"), 0, chunked)
    with two_cpu_strategy.scope():
        replicas = _model(0)
    ckpt_lib.restore_checkpoint(str(tmp_path / "init"), replicas)
    data = tf.data.Dataset.from_tensor_slices((tf.stack([b[0] for b in batches]), tf.stack([b[1] for b in batches])))
    _assert_same_training(chunked, replicas, data, 2, two_cpu_strategy)


@pytest.mark.parametrize("batch_norm", ["paired", "shifted"])
def test_moving_statistics_move_once_per_chunk(batch_norm):
    """...and each chunk's statistics are those of the rows its layout names (counted here)."""
    views, labels = _batch(5)
    model, sequential = _model(CHUNK, batch_norm=batch_norm), _model(0)
    step = tf.function(lambda: tf_step.cached_gradients(model, views, labels, model.trainable_variables))
    _, logs, _ = step()
    assert float(logs["replay_error"]) == 0.0  # Pass 2 reproduced pass 1's embeddings exactly.
    both = sequential.views(views).numpy()
    shift = {"paired": 0, "shifted": 1}[batch_norm]
    for c in range(IMAGES // CHUNK):  # The second code path: each chunk once, in order.
        sequential(both[_chunk_rows(CHUNK, c, shift)], training=True)
    got, expected = model.batch_norm_statistics(), sequential.batch_norm_statistics()
    assert len(got) == 8  # Mean and variance of 4 layers: the encoder's 2 (Keras) and the projection head's 2 (ours).
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    untouched = _model(0).batch_norm_statistics()
    assert any(np.max(np.abs(a.numpy() - u.numpy())) > 1e-4 for a, u in zip(got, untouched))


def test_two_replicas_chunked_equal_one_replica_unchunked_with_frozen_batch_norm(two_cpu_strategy, tmp_path):
    views, labels = _batch(7, unlabelled=False)
    plain = _model(0, frozen_bn=True)
    ckpt_lib.save_checkpoint(str(tmp_path / "init"), 0, plain)
    with two_cpu_strategy.scope():
        chunked = _model(CHUNK, frozen_bn=True)
    ckpt_lib.restore_checkpoint(str(tmp_path / "init"), chunked)
    data = tf.data.Dataset.from_tensor_slices((views[None], labels[None]))
    _assert_same_training(plain, chunked, data, 1, two_cpu_strategy)


def test_a_chunk_that_does_not_divide_the_batch_fails_before_any_work(image_folder, tmp_path):
    config = helpers.tiny_config(f"folder:{image_folder}", str(tmp_path / "run"), microbatch_size=3)
    with pytest.raises(ValueError, match=r"--microbatch_size=3 must divide each replica's batch of 8"):
        jobs.prepare(config)
    with pytest.raises(ValueError, match=r"--microbatch_bn=shifted pairs view 1 of one chunk .* Use --microbatch_size=4"):
        jobs.prepare(config.replace(train={"microbatch_size": 8, "microbatch_bn": "shifted"}))
    with pytest.raises(ValueError, match="--microbatch_size chunks the contrastive loss of pretraining"):
        jobs.prepare(config.replace(train={"microbatch_size": 4, "train_mode": "finetune", "checkpoint": "x"}))
    assert not os.path.exists(tmp_path / "run")


class CrashAfter(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_a_chunked_run_resumes_bit_identically(image_folder, tmp_path, augment_on):
    def config(model_dir):
        return helpers.tiny_config(f"folder:{image_folder}", str(tmp_path / model_dir), train_steps=4,
                                   checkpoint_steps=2, microbatch_size=4, deterministic=True, seed=4,
                                   data={"augment_on": augment_on}, model=helpers.MICRO_MODEL)

    logs = helpers.StepLogs()
    trainer.train(config("whole"), callbacks=[logs])
    assert logs.series("replay_error") == [0.0] * 4  # The second pass saw pass 1's very views.
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config("resumed"), callbacks=[CrashAfter(3)])  # Dies after step 3; ckpt-2 is on disk.
    assert ckpt_lib.checkpoint_steps(str(tmp_path / "resumed")) == [2]
    trainer.train(config("resumed"))
    a = np.load(tmp_path / "whole" / "ckpt-4" / ckpt_lib.VARIABLES_FILE)
    b = np.load(tmp_path / "resumed" / "ckpt-4" / ckpt_lib.VARIABLES_FILE)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_under_jax_chunked_gradients_equal_full_batch_gradients(tmp_path):
    """The JAX step (`jax_step.cached_gradients`), in a KERAS_BACKEND=jax subprocess."""
    pytest.importorskip("jax")
    import json
    import subprocess
    import sys

    out = tmp_path / "jax.json"
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_microbatch_worker.py")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, worker, str(out)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert sorted(result["chunked"]) == ["paired scan", "shifted scan", "shifted unrolled"]
    for batch_norm, got in result["chunked"].items():
        np.testing.assert_allclose(got["total"], result["total"], rtol=1e-5, err_msg=batch_norm)
        for name in ("contrast_loss", "contrast_acc", "sup_loss", "weight_decay"):
            np.testing.assert_allclose(got["logs"][name], result["logs"][name], rtol=1e-5, atol=1e-7, err_msg=name)
        assert got["logs"]["replay_error"] == 0.0
        for diff, scale in zip(got["diffs"], result["scales"]):
            assert diff <= 1e-4 * scale + 1e-6, (batch_norm, diff, scale)
    assert len(result["scales"]) >= 6 and all(scale > 0 for scale in result["scales"])
    for batch_norm, moving in result["moving"].items():  # Moving statistics: once per chunk, in chunk order.
        assert moving["moved"] > 1e-4 and moving["diff"] <= 1e-5 * (1 + moving["moved"]), (batch_norm, moving)
    assert sorted(result["moving"]) == ["paired unrolled", "shifted scan"]
    fit_logs = result["fit_logs"]  # Batch norm training, through Keras's JAX trainer: pass 2 replays pass 1.
    assert len(fit_logs) == 2 and all(logs["replay_error"] == 0.0 for logs in fit_logs)


def test_jax_chunk_loop_choice_and_its_error(monkeypatch):
    pytest.importorskip("jax")
    from tf_simclr.steps import jax_step

    monkeypatch.setenv(jax_step.LOOP_VARIABLE, "scan")
    assert jax_step.chunk_loop() == "scan"
    monkeypatch.delenv(jax_step.LOOP_VARIABLE)
    import jax

    assert jax_step.chunk_loop() == ("unrolled" if jax.default_backend() == "cpu" else "scan")
    monkeypatch.setenv(jax_step.LOOP_VARIABLE, "fori")
    with pytest.raises(ValueError, match="TF_SIMCLR_JAX_CHUNK_LOOP must be 'scan' or 'unrolled'. Received: 'fori'"):
        jax_step.chunk_loop()
