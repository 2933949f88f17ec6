"""Checkpoints (storage.checkpoint): round trip of weights and optimizer slots, atomicity, pruning, mismatch errors."""

import os

import keras
import numpy as np
import pytest

from tf_simclr.storage import checkpoint as ckpt


def tiny_model(units=3):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="d1"), keras.layers.BatchNormalization(name="bn")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def train_a_bit(model, steps=3):
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 4)), rng.normal(size=(8, model.output_shape[-1])), batch_size=4, epochs=steps, verbose=0)


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    a = tiny_model()
    train_a_bit(a)
    path = ckpt.save_checkpoint(str(tmp_path), 6, a, a.optimizer, meta={"note": "x"})
    b = tiny_model()
    b.optimizer.build(b.trainable_variables)
    # Not trivially equal: the fresh model differs from the trained one before the restore.
    assert any(not np.array_equal(np.asarray(va), np.asarray(vb)) for va, vb in zip(a.variables, b.variables))
    meta = ckpt.restore_checkpoint(str(tmp_path), b, b.optimizer)
    assert meta["step"] == 6 and meta["note"] == "x" and os.path.basename(path) == "ckpt-6"
    for va, vb in zip(a.variables + a.optimizer.variables, b.variables + b.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))
    assert int(np.asarray(b.optimizer.iterations)) == 6


def test_keeps_only_newest_and_finds_latest(tmp_path):
    m = tiny_model()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(str(tmp_path), step, m, max_to_keep=2)
    assert ckpt.checkpoint_steps(str(tmp_path)) == [3, 4]
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
    assert sorted(os.listdir(tmp_path)) == ["ckpt-3", "ckpt-4"]


def test_crash_during_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    m = tiny_model()
    ckpt.save_checkpoint(str(tmp_path), 1, m)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(str(tmp_path), 2, m)
    assert ckpt.checkpoint_steps(str(tmp_path)) == [1]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1"]  # No temporary folder left behind.


def test_mismatch_lists_variables_and_assigns_nothing(tmp_path):
    a = tiny_model(units=3)
    ckpt.save_checkpoint(str(tmp_path), 1, a)
    b = tiny_model(units=5)
    before = [np.asarray(v).copy() for v in b.variables]
    with pytest.raises(ckpt.CheckpointMismatchError, match="d1/kernel"):
        ckpt.restore_checkpoint(str(tmp_path), b)
    for v, old in zip(b.variables, before):
        np.testing.assert_array_equal(np.asarray(v), old)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tf_simclr checkpoint"):
        ckpt.resolve_checkpoint(str(tmp_path))
