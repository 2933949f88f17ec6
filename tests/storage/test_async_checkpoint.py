"""Checkpoints written in the background (storage.checkpoint.CheckpointWriter, CheckpointAndStop).

A save copies the values at the step boundary and writes the files in one
background thread. These tests hold that thread at a gate (a `threading.Event`
inside a monkeypatched `write_checkpoint`) to see what the caller sees while a
write is in flight: no timing is asserted, only what has happened and what has
not.
"""

import os
import subprocess
import sys
import textwrap
import threading
import zipfile

import keras
import numpy as np
import pytest

import helpers
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import callbacks as callbacks_lib
from tf_simclr.training import preemption

REAL_WRITE = ckpt_lib.write_checkpoint
STILL_BLOCKED = 0.3  # Seconds a blocked call is given to (wrongly) return; a slow machine only makes it safer.


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    randomize(model, seed)
    return model


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.variables + model.optimizer.variables:
        if str(v.dtype).startswith("float"):
            v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype(str(v.dtype)))


def values(model):
    return [np.array(v.numpy()) for v in model.variables + model.optimizer.variables]


class GatedWrite:
    """A `write_checkpoint` stand-in that waits at a gate, then writes for real (or raises `error`)."""

    def __init__(self, error=None):
        self.gate = threading.Event()
        self.started = []  # Steps whose write began.
        self.finished = []
        self.running = 0
        self.most_at_once = 0
        self.error = error
        self.seen_at_start = []  # checkpoint_steps(directory) when each write began.
        self._lock = threading.Lock()

    def __call__(self, directory, step, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.started.append(step)
            self.seen_at_start.append(ckpt_lib.checkpoint_steps(directory))
        try:
            if not self.gate.wait(120):  # A guard against a hang, should the caller wait for the write.
                raise TimeoutError("the gate never opened: the caller waited for the background write")
            if self.error is not None:
                raise self.error
            return REAL_WRITE(directory, step, *args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1
                self.finished.append(step)


@pytest.fixture
def gated(monkeypatch):
    write = GatedWrite()
    monkeypatch.setattr(ckpt_lib, "write_checkpoint", write)
    yield write
    write.gate.set()  # Never leave a thread waiting.


def in_thread(function, *args):
    """Starts `function(*args)` in a thread; returns (thread, outcome list: the result or the exception)."""
    outcome = []

    def run():
        try:
            outcome.append(function(*args))
        except BaseException as e:  # noqa: BLE001  Handed to the test.
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def still_blocked(thread) -> bool:
    thread.join(STILL_BLOCKED)
    return thread.is_alive()


# ------------------------------------------------------------------ CheckpointWriter
def test_save_returns_while_the_write_is_still_running(tmp_path, gated):
    model, writer = small_model(), ckpt_lib.CheckpointWriter()

    path = ckpt_lib.save_checkpoint(str(tmp_path), 3, model, model.optimizer, writer=writer)

    # The save returned although the write cannot have finished: it is held at the gate.
    assert path == ckpt_lib.checkpoint_path(str(tmp_path), 3)
    assert writer.pending and gated.started == [3] and gated.finished == []
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == []
    gated.gate.set()
    assert writer.flush() == path
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == [3] and not writer.pending


def test_flush_waits_for_the_pending_write(tmp_path, gated):
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    writer.save(str(tmp_path), 3, model, model.optimizer)

    flusher, outcome = in_thread(writer.flush)
    assert still_blocked(flusher) and outcome == []  # Held while the write is.
    gated.gate.set()
    flusher.join()
    assert outcome == [ckpt_lib.checkpoint_path(str(tmp_path), 3)]
    assert ckpt_lib.is_checkpoint(outcome[0])


def test_the_snapshot_is_taken_in_the_callers_thread(tmp_path, gated, monkeypatch):
    threads, real_snapshot = [], ckpt_lib.snapshot

    def recording_snapshot(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_snapshot(*args, **kwargs)

    monkeypatch.setattr(ckpt_lib, "snapshot", recording_snapshot)
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    writer.save(str(tmp_path), 3, model, model.optimizer)
    assert threads == [threading.current_thread()]  # Taken before save returned, at the step boundary.
    gated.gate.set()
    writer.flush()


def test_values_are_the_ones_at_the_save_not_at_the_write(tmp_path, gated):
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    expected = values(model)
    writer.save(str(tmp_path), 3, model, model.optimizer)
    randomize(model, seed=7)  # Training goes on while the write waits.
    assert any(not np.array_equal(a, b) for a, b in zip(values(model), expected))
    gated.gate.set()
    writer.flush()

    restored = small_model(seed=1)
    ckpt_lib.restore_checkpoint(str(tmp_path), restored, restored.optimizer)
    for index, (actual, wanted) in enumerate(zip(values(restored), expected)):
        np.testing.assert_array_equal(actual, wanted, err_msg=f"variable {index}")


def test_an_error_in_the_background_surfaces_at_the_next_flush(tmp_path, monkeypatch):
    failing = GatedWrite(error=OSError(28, "No space left on device"))
    failing.gate.set()
    monkeypatch.setattr(ckpt_lib, "write_checkpoint", failing)
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    writer.save(str(tmp_path), 3, model, model.optimizer)  # Returns: the failure happens in the thread.

    with pytest.raises(ckpt_lib.CheckpointWriteError, match="ckpt-3 failed: OSError.*No space left") as raised:
        writer.flush()
    assert isinstance(raised.value.__cause__, OSError)
    assert writer.flush() is None  # Raised once; nothing was committed.


def test_an_error_in_the_background_surfaces_at_the_next_save(tmp_path, monkeypatch):
    failing = GatedWrite(error=OSError(28, "No space left on device"))
    failing.gate.set()
    monkeypatch.setattr(ckpt_lib, "write_checkpoint", failing)
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    writer.save(str(tmp_path), 3, model, model.optimizer)

    with pytest.raises(ckpt_lib.CheckpointWriteError, match="ckpt-3"):
        writer.save(str(tmp_path), 4, model, model.optimizer)
    assert failing.started == [3]  # The failed write stopped the run's next save from starting.


def test_two_saves_in_a_row_do_not_overlap(tmp_path, gated):
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    writer.save(str(tmp_path), 1, model, model.optimizer)

    second, outcome = in_thread(writer.save, str(tmp_path), 2, model, model.optimizer)
    assert still_blocked(second)  # The second save waits for the first write...
    assert gated.started == [1]  # ...and has not started its own.
    gated.gate.set()
    second.join()
    writer.flush()

    assert outcome == [ckpt_lib.checkpoint_path(str(tmp_path), 2)]
    assert gated.started == [1, 2] and gated.finished == [1, 2] and gated.most_at_once == 1
    assert gated.seen_at_start == [[], [1]]  # Write 2 began after write 1 had committed.
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == [1, 2]


def _npz_members(path):
    with zipfile.ZipFile(os.path.join(path, ckpt_lib.VARIABLES_FILE)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_files_are_the_ones_a_synchronous_save_writes(tmp_path):
    model = small_model()
    sync = ckpt_lib.save_checkpoint(str(tmp_path / "sync"), 5, model, model.optimizer, meta={"note": "x"})
    writer = ckpt_lib.CheckpointWriter()
    background = ckpt_lib.save_checkpoint(str(tmp_path / "background"), 5, model, model.optimizer,
                                          meta={"note": "x"}, writer=writer)
    writer.flush()

    assert sorted(os.listdir(sync)) == sorted(os.listdir(background)) == sorted(
        [ckpt_lib.VARIABLES_FILE, ckpt_lib.META_FILE])
    # Every array byte for byte (the zip's own timestamps may differ by a second).
    assert _npz_members(sync) == _npz_members(background)
    with open(os.path.join(sync, ckpt_lib.META_FILE)) as a, open(os.path.join(background, ckpt_lib.META_FILE)) as b:
        assert a.read() == b.read()
    assert sorted(os.listdir(tmp_path / "background")) == ["ckpt-5"]  # No temporary folder left.


def test_background_writes_work_on_a_url_filesystem():
    import tensorflow as tf

    directory = "ram://async_checkpoint_test/run"
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    expected = values(model)
    try:
        writer.save(directory, 2, model, model.optimizer)
        writer.flush()
        assert ckpt_lib.checkpoint_steps(directory) == [2]
        restored = small_model(seed=1)
        ckpt_lib.restore_checkpoint(directory, restored, restored.optimizer)
        for actual, wanted in zip(values(restored), expected):
            np.testing.assert_array_equal(actual, wanted)
    finally:
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)


def test_old_checkpoints_are_pruned_only_after_the_new_one_commits(tmp_path, gated):
    model, writer = small_model(), ckpt_lib.CheckpointWriter()
    gated.gate.set()
    for step in (1, 2):
        writer.save(str(tmp_path), step, model, model.optimizer, max_to_keep=2)
    writer.flush()
    gated.gate.clear()

    writer.save(str(tmp_path), 3, model, model.optimizer, max_to_keep=2)
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == [1, 2]  # Both kept while ckpt-3 is not committed.
    gated.gate.set()
    writer.flush()
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == [2, 3]


def test_a_process_that_exits_without_flushing_still_finishes_the_write(tmp_path):
    """The writer's thread is not a daemon: a normal exit waits for it (a kill leaves a temporary folder)."""
    script = textwrap.dedent("""
        import sys, threading, keras
        from tf_simclr.storage import checkpoint as ckpt
        gate, real_write = threading.Event(), ckpt.write_checkpoint
        ckpt.write_checkpoint = lambda *args, **kwargs: (gate.wait(), real_write(*args, **kwargs))[1]  # A slow disk.
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
        ckpt.save_checkpoint(sys.argv[1], 7, model, writer=ckpt.CheckpointWriter())
        print("committed when save returned:", ckpt.checkpoint_steps(sys.argv[1]), flush=True)
        gate.set()  # The write may go on only now; the script ends here, without flush().
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=240, cwd=helpers.REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "committed when save returned: []" in done.stdout  # The script ended with the write in flight...
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == [7]  # ...and the process finished it before exiting.
    assert sorted(os.listdir(tmp_path)) == ["ckpt-7"]


# ------------------------------------------------------------------ CheckpointAndStop
def _stopper(tmp_path, model, **kwargs):
    stopper = callbacks_lib.CheckpointAndStop(str(tmp_path), every_steps=2, total_steps=kwargs.pop("total", 10),
                                              **kwargs)
    stopper.set_model(model)
    stopper.on_train_begin()
    return stopper


def _step(stopper, model, step, logs=None):
    model.optimizer.iterations.assign(step)
    stopper.on_train_batch_end(step - 1, logs or {"total_loss": 1.0})


def test_the_end_of_training_waits_for_the_last_checkpoint(tmp_path, gated):
    model = small_model()
    stopper = _stopper(tmp_path, model, total=3)
    gated.gate.set()
    _step(stopper, model, 2)
    stopper.flush()
    gated.gate.clear()
    _step(stopper, model, 3)  # The last step: saved in the background, the run stops.
    assert model.stop_training and gated.started == [2, 3]

    ender, outcome = in_thread(stopper.on_train_end)
    assert still_blocked(ender)  # fit does not return before the last checkpoint is on disk.
    gated.gate.set()
    ender.join()
    assert outcome == [None] and ckpt_lib.checkpoint_steps(str(tmp_path)) == [2, 3]


def test_the_sigterm_checkpoint_is_committed_before_training_ends(tmp_path, gated):
    model = small_model()
    flag = preemption.SigtermFlag()
    stopper = _stopper(tmp_path, model, sigterm=flag)
    _step(stopper, model, 1)
    flag.set(15)
    _step(stopper, model, 2)
    assert model.stop_training and stopper.preempted_step == 2 and gated.started == [2]

    ender, _ = in_thread(stopper.on_train_end)
    assert still_blocked(ender)
    gated.gate.set()
    ender.join()
    assert ckpt_lib.checkpoint_steps(str(tmp_path)) == [2]  # Then train() raises Preempted: exit 143.
    assert stopper.last_path == ckpt_lib.checkpoint_path(str(tmp_path), 2)


def test_on_save_sees_a_committed_checkpoint(tmp_path):
    seen = []
    model = small_model()
    stopper = _stopper(tmp_path, model, on_save=lambda path, step: seen.append((step, ckpt_lib.is_checkpoint(path))))
    _step(stopper, model, 2)
    _step(stopper, model, 4)
    assert seen == [(2, True), (4, True)]


def test_a_failed_background_write_stops_training_at_the_next_save(tmp_path, monkeypatch):
    failing = GatedWrite(error=PermissionError(13, "Permission denied"))
    failing.gate.set()
    monkeypatch.setattr(ckpt_lib, "write_checkpoint", failing)
    model = small_model()
    stopper = _stopper(tmp_path, model)
    _step(stopper, model, 2)
    _step(stopper, model, 3)  # Not a checkpoint step: training goes on meanwhile.

    with pytest.raises(ckpt_lib.CheckpointWriteError, match="ckpt-2 failed: PermissionError"):
        _step(stopper, model, 4)


def test_a_failing_run_still_waits_for_its_write_and_keeps_its_own_error(tmp_path, monkeypatch, caplog):
    failing = GatedWrite(error=OSError(5, "Input/output error"))
    failing.gate.set()
    monkeypatch.setattr(ckpt_lib, "write_checkpoint", failing)
    model = small_model()
    stopper = _stopper(tmp_path, model)
    _step(stopper, model, 2)

    with caplog.at_level("ERROR", logger="tf_simclr"):
        stopper.flush(raise_errors=False)  # What the trainer does when fit itself raised.
    assert "ckpt-2 failed: OSError" in caplog.text
    assert not stopper.writer.pending


def test_synchronous_mode_writes_before_returning(tmp_path):
    model = small_model()
    stopper = _stopper(tmp_path, model, background=False)
    _step(stopper, model, 2)
    assert stopper.writer is None and ckpt_lib.checkpoint_steps(str(tmp_path)) == [2]
