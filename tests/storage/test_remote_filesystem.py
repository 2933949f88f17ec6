"""A run whose model_dir is a URL: TensorFlow's in-memory `ram://` filesystem stands in for `gs://`.

`ram://` lives in this process's memory, so a kill is simulated in the process: a
callback raises right after a step between two checkpoints (it runs after the
checkpoint callback, so nothing is saved at that step, as after a SIGKILL). The
same command then resumes there, in the same process. The chain is checked bit for
bit: the killed run's state at its last checkpoint = the arrays stored on ram:// =
the state the resumed run starts from. (That a resume from the right state ends
bit-identical to an uninterrupted run is `tests/training/test_crash_resume.py` and
`tests/distribute/test_resume.py`; the filesystem does not enter there.)

On an object store a checkpoint (export) folder is complete only once its
`meta.json` (`export_meta.json`) exists; folders without it are what a writer
killed mid-write leaves there, planted here by hand.
"""

import io
import json
import os
import re
import threading
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr import jobs
from tf_simclr.data import pipeline, sources, subsets
from tf_simclr.evaluation import eval_loop
from tf_simclr.export import exports_dir, hub_module, load
from tf_simclr.optim.plan import make_plan
from tf_simclr.storage import atomic, fs
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import restore, trainer

pytestmark = pytest.mark.slow

STEPS, EVERY, KEEP, KILLED_AFTER = 6, 2, 2, 3  # Killed after step 3: between ckpt-2 and ckpt-4.


class SimulatedKill(Exception):
    pass


def state(model):
    """Copies of every model and optimizer variable, keyed as checkpoints key them."""
    return ckpt_lib.snapshot(model, model.optimizer)[0]


class KillAfter(keras.callbacks.Callback):
    """Records the state after step `record` and raises once step `kill` has ended (after the checkpoint callback)."""

    def __init__(self, record, kill):
        super().__init__()
        self.record, self.kill, self.recorded = record, kill, None

    def on_train_batch_end(self, batch, logs=None):
        step = int(np.asarray(self.model.optimizer.iterations))
        if step == self.record:
            self.recorded = state(self.model)
        if step >= self.kill:
            raise SimulatedKill(f"killed after step {step}")


class StartState(helpers.StepLogs):
    """The per-step logs, and the state the run starts from (after restore)."""

    def on_train_begin(self, logs=None):
        self.start = state(self.model)


def finish_background_writes():
    """Lets a checkpoint still being written in a background thread finish, as it had before a real kill.

    (The kill is an exception: the process, and any writer thread, lives on.)
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and "checkpoint" in thread.name:
            thread.join()


MICRO = helpers.MICRO_MODEL  # Storage is the subject, not the ResNet.


def ram_dir(name):
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def pretrain_config(image_folder, model_dir, **train):
    values = dict(train_steps=STEPS, checkpoint_steps=EVERY, keep_checkpoint_max=KEEP, deterministic=True, seed=3)
    values.update(train)
    return helpers.tiny_config(f"folder:{image_folder}", model_dir, model=MICRO, **values)


def arrays(folder):
    """Every array of a checkpoint folder, read through `fs` (any filesystem)."""
    with fs.open_file(fs.join(folder, ckpt_lib.VARIABLES_FILE), "rb") as f:
        data = f.read()
    with np.load(io.BytesIO(data)) as stored:
        return {k: stored[k] for k in stored.files}


def assert_bit_identical(a, b):
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} arrays differ, e.g. {differ[:5]}"


def plant_uncommitted_checkpoint(model_dir, step):
    """A `ckpt-<step>` folder whose writer died before meta.json: the variables half written."""
    folder = ckpt_lib.checkpoint_path(model_dir, step)
    fs.makedirs(folder)
    with fs.open_file(fs.join(folder, ckpt_lib.VARIABLES_FILE), "wb") as f:
        f.write(b"PK\x03\x04 half a zip")
    return folder


def plant_export(base, step, committed):
    """A module folder `<base>/<step>`; without its export_meta.json it is one whose export died mid-way."""
    folder = fs.join(base, str(step))
    fs.makedirs(folder)
    with fs.open_file(fs.join(folder, exports_dir.SAVED_MODEL_FILE), "wb") as f:
        f.write(b"a saved model")
    if committed:
        atomic.write_json(fs.join(folder, exports_dir.EXPORT_META_FILE), {"step": step})
    return folder


def copy_tree(source, target):
    """Copies a local folder to `target` (any filesystem)."""
    for folder, _, names in os.walk(source):
        into = fs.join(target, os.path.relpath(folder, source)) if folder != source else target
        fs.makedirs(into)
        for name in names:
            with open(os.path.join(folder, name), "rb") as f, fs.open_file(fs.join(into, name), "wb") as g:
                g.write(f.read())
    return target


# ------------------------------------------------------------------ A whole run on ram://
@pytest.fixture(scope="module")
def ram_run(image_folder):
    """A pretraining run on ram:// (images and model_dir), killed after step 3, resumed, finished and exported there."""
    model_dir = ram_dir("run") + "/run"
    images = copy_tree(image_folder, ram_dir("images"))
    config = pretrain_config(images, model_dir, export_at_end=True, keep_hub_module_max=1)
    base = exports_dir.default_export_dir(model_dir)
    kill = KillAfter(record=2, kill=KILLED_AFTER)
    with pytest.raises(SimulatedKill):
        trainer.train(config, callbacks=[kill])
    finish_background_writes()
    after_kill = ckpt_lib.checkpoint_steps(model_dir)
    stored = arrays(ckpt_lib.checkpoint_path(model_dir, 2))
    # What writers killed mid-way leave on an object store, and an older complete module beyond keep-N.
    plant_uncommitted_checkpoint(model_dir, 5)
    plant_export(base, 5, committed=False)
    plant_export(base, 1, committed=True)
    resumed = StartState()
    model = trainer.train(config, callbacks=[resumed])
    return {"config": config, "model_dir": model_dir, "base": base, "after_kill": after_kill, "at_step_2": kill.recorded,
            "stored": stored, "resumed": resumed, "model": model}


def test_a_run_killed_between_checkpoints_on_ram_resumes_from_exactly_its_last_checkpoint(ram_run):
    model_dir = ram_run["model_dir"]
    assert ram_run["after_kill"] == [2]  # Killed after step 3: nothing was saved at the kill.
    assert_bit_identical(ram_run["stored"], ram_run["at_step_2"])  # Written to ram:// exactly...
    assert_bit_identical(ram_run["resumed"].start, ram_run["stored"])  # ...and read back exactly.
    assert [s for s, _ in ram_run["resumed"].steps] == [3, 4, 5, 6]  # From ckpt-2: not 0, not the planted ckpt-5.
    assert_bit_identical(arrays(ckpt_lib.checkpoint_path(model_dir, STEPS)), state(ram_run["model"]))
    # keep-N pruned on ram://, and the next writer removed the uncommitted ckpt-5.
    assert ckpt_lib.checkpoint_steps(model_dir) == [4, 6]
    entries = fs.listdir(model_dir)
    assert [e for e in entries if e.startswith(("ckpt-", "."))] == ["ckpt-4", "ckpt-6"]
    # Every other file of the run is there too, and nothing went to a local folder named "ram:".
    assert {"flags.json", "learning_curve.json", "learning_curve.png", "train", "saved_model"} <= set(entries)
    assert atomic.read_json(fs.join(model_dir, "flags.json")) == json.loads(json.dumps(ram_run["config"].to_dict()))
    curve = atomic.read_json(fs.join(model_dir, "learning_curve.json"))
    logged = {step: logs for step, logs in ram_run["resumed"].steps}
    steps = [row["step"] for row in curve["train"]]
    assert steps == sorted(set(steps)) and {1, 2, STEPS} <= set(steps)  # Continued across the kill, once per step.
    for row in curve["train"]:
        if row["step"] in logged:
            assert row["contrast_loss"] == logged[row["step"]]["contrast_loss"]
    with fs.open_file(fs.join(model_dir, "learning_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert any(name.startswith("events.out.tfevents") for name in fs.listdir(fs.join(model_dir, "train")))
    for cwd in {os.getcwd(), helpers.REPO}:
        assert not os.path.exists(os.path.join(cwd, "ram:"))


def test_the_export_on_ram_loads_and_computes_the_live_models_features(ram_run):
    base = ram_run["base"]
    # The planted uncommitted module was removed, the older complete one pruned (keep 1).
    assert fs.listdir(base) == [str(STEPS)] and exports_dir.exported_steps(base) == [STEPS]
    module_dir = exports_dir.resolve_export(base)
    assert module_dir == fs.join(base, str(STEPS))
    assert exports_dir.read_export_meta(base)["step"] == STEPS
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype("float32")
    expected = np.asarray(ram_run["model"](images, training=False)["final_avg_pool"])  # The live model.
    module = tf.saved_model.load(module_dir)
    np.testing.assert_allclose(module(images, training=False)["default"].numpy(), expected, rtol=1e-5, atol=1e-6)
    for from_saved_model in (False, True):
        encoder = load.load_encoder(base, from_saved_model=from_saved_model)
        np.testing.assert_allclose(np.asarray(encoder(images)), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"from_saved_model={from_saved_model}")


def test_the_eval_loop_scores_the_ram_model_dir(ram_run):
    config, model_dir = ram_run["config"], ram_run["model_dir"]
    plant_uncommitted_checkpoint(model_dir, 8)  # A trainer killed mid-write: never scored, left alone by a reader.
    source = sources.load_source(config.data.dataset, splits=[config.data.eval_split])
    now = [0.0]
    results = eval_loop.eval_loop(config, timeout_secs=0, poll_secs=1, source=source, clock=lambda: now[0],
                                  sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert [r["global_step"] for r in results] == [4, 6]
    assert fs.isdir(ckpt_lib.checkpoint_path(model_dir, 8))  # The eval loop writes nothing but results.
    for r in results:
        assert atomic.read_json(fs.join(model_dir, f"result_{r['global_step']}.json")) == r
    assert atomic.read_json(fs.join(model_dir, "result.json")) == results[-1]
    # Independent check: the live model's supervised head, argmax on the eval images (the final step's weights).
    images, labels = next(iter(pipeline.eval_dataset(source, config.data.eval_split, 16, batch_size=1000)))
    predicted = np.argmax(np.asarray(ram_run["model"](images, training=False)["logits_sup"]), axis=1)
    assert results[-1]["top_1_accuracy"] == pytest.approx(np.mean(predicted == np.asarray(labels)), abs=1e-6)
    fs.remove(ckpt_lib.checkpoint_path(model_dir, 8))


def test_checkpoint_flag_on_ram_starts_fine_tuning_from_a_checkpoint_or_an_export(ram_run):
    pretrained = ram_run["model_dir"]
    stored = arrays(ckpt_lib.checkpoint_path(pretrained, STEPS))
    for checkpoint in (pretrained, ram_run["base"]):  # A model_dir, and a base folder of exports.
        config = helpers.tiny_config(ram_run["config"].data.dataset, ram_dir("finetune") + "/run", model=MICRO,
                                     train_mode="finetune", checkpoint=checkpoint)
        jobs.prepare(config)  # The checks read the ram:// checkpoint's or export's architecture.
        assert restore.weights_source_kind(checkpoint) == ("checkpoint" if checkpoint == pretrained else "export")
        model = trainer.compile_model(config, 2, make_plan(config, 40))
        assert restore.restore(model, config) == 0  # Initialized, not resumed.
        named = ckpt_lib.named_variables(model)
        for key in [k for k in stored if k.startswith(("encoder/", "projection_head/"))]:
            np.testing.assert_array_equal(np.asarray(named[key].numpy()), stored[key], err_msg=f"{checkpoint}: {key}")


def test_subset_ids_round_trip_on_ram():
    model_dir = ram_dir("subset")
    path = subsets.record_subset(model_dir, ["a/001.png", "b/017.png", "5"])
    assert path == fs.join(model_dir, subsets.SUBSET_IDS_FILE)
    assert subsets.read_id_file(path) == ["a/001.png", "b/017.png", "5"]
    assert fs.listdir(model_dir) == [subsets.SUBSET_IDS_FILE]  # No temporary left behind.


# ------------------------------------------------------------------ Uncommitted folders, both filesystems
@pytest.fixture(params=["local", "ram"])
def model_dir(request, tmp_path):
    return str(tmp_path / "run") if request.param == "local" else ram_dir("uncommitted") + "/run"


def small_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    return model


def test_an_uncommitted_checkpoint_is_ignored_by_readers_and_removed_by_the_next_writer(model_dir):
    writer = small_model()
    for step in (2, 4):
        writer.optimizer.iterations.assign(step)
        for v in writer.trainable_variables:
            v.assign(np.full(tuple(v.shape), step, "float32"))
        ckpt_lib.save_checkpoint(model_dir, step, writer, writer.optimizer, max_to_keep=0)
    planted = [plant_uncommitted_checkpoint(model_dir, 6), ckpt_lib.checkpoint_path(model_dir, 8)]
    fs.makedirs(planted[1])  # Killed before its first file.

    # Readers: resume (a non-chief worker, which cleans nothing), the eval loop, "newest".
    assert ckpt_lib.checkpoint_steps(model_dir) == [2, 4]
    assert ckpt_lib.latest_checkpoint(model_dir) == ckpt_lib.checkpoint_path(model_dir, 4)
    with pytest.raises(FileNotFoundError, match="No tf_simclr checkpoint"):
        ckpt_lib.resolve_checkpoint(planted[0])
    config = helpers.tiny_config("folder:/nonexistent", model_dir, train_steps=8)
    resumed = small_model()
    assert restore.restore(resumed, config, chief=False) == 4
    np.testing.assert_array_equal(resumed.trainable_variables[0].numpy(), np.full((3, 4), 4, "float32"))
    seen = []
    now = [0.0]
    results = eval_loop.eval_loop(config, timeout_secs=0, poll_secs=1, last_step=8, clock=lambda: now[0],
                                  sleep=lambda s: now.__setitem__(0, now[0] + s),
                                  evaluate_fn=lambda path: seen.append(fs.basename(path)) or {"path": path})
    assert seen == ["ckpt-2", "ckpt-4"] and len(results) == 2
    assert all(fs.isdir(p) for p in planted)  # Readers delete nothing: a trainer may be writing it.

    # The chief's resume, and any checkpoint write (keep-N counts complete ones only), remove them.
    assert restore.restore(small_model(), config) == 4
    assert not any(fs.exists(p) for p in planted)
    planted = plant_uncommitted_checkpoint(model_dir, 6)
    ckpt_lib.save_checkpoint(model_dir, 5, writer, writer.optimizer, max_to_keep=2)
    assert not fs.exists(planted)
    assert fs.listdir(model_dir) == ["ckpt-4", "ckpt-5"]


def _fake_write_export(model, final, step, meta, image_size):
    """Stands in for the SavedModel write (as `hub_module._write_export`: publishing, marker last), instantly."""
    with atomic.publishing(final, exports_dir.EXPORT_META_FILE) as folder:
        with fs.open_file(fs.join(folder, exports_dir.SAVED_MODEL_FILE), "wb") as f:
            f.write(b"module %d" % step)
        with fs.open_file(fs.join(folder, exports_dir.EXPORT_META_FILE), "w") as f:
            f.write(json.dumps({"step": step}))


def test_an_uncommitted_export_is_ignored_by_readers_and_removed_by_the_next_export(model_dir, monkeypatch):
    base = fs.join(model_dir, "saved_model")
    for step in (2, 4):
        plant_export(base, step, committed=True)
    planted = plant_export(base, 6, committed=False)

    assert exports_dir.exported_steps(base) == [2, 4]
    assert exports_dir.resolve_export(base) == fs.join(base, "4")
    assert not exports_dir.is_export(planted)
    with pytest.raises(FileNotFoundError, match="never finished"):
        exports_dir.resolve_export(planted)
    with pytest.raises(FileNotFoundError, match="never finished"):
        load.load_encoder(planted)
    with pytest.raises(ValueError, match=re.escape(f"--checkpoint={planted} ")):
        restore.weights_source_kind(planted)  # Neither a checkpoint nor an export.
    assert exports_dir.prune_exports(base, 1) == [2]  # The newest complete one is kept, not the planted one.
    assert fs.listdir(base) == ["4", "6"]

    monkeypatch.setattr(hub_module, "_write_export", _fake_write_export)
    hub_module.export_to_hub_dir(None, base, 8, keep_max=2)
    assert fs.listdir(base) == ["4", "8"]
    assert exports_dir.read_export_meta(base) == {"step": 8}


# ------------------------------------------------------------------ Images on ram://
def test_an_image_folder_on_ram_is_the_same_dataset_as_on_the_local_disk(image_folder, tmp_path):
    local = copy_tree(image_folder, str(tmp_path / "images"))
    with open(os.path.join(local, "a", "000.png"), "rb") as f:
        png = f.read()
    with open(os.path.join(local, "a", "empty.png"), "wb"):
        pass
    with open(os.path.join(local, "b", "truncated.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    remote = copy_tree(local, ram_dir("images"))
    here, there = (sources.load_source(f"folder:{root}") for root in (local, remote))
    assert there.root == remote and there.class_names == here.class_names == ("a", "b")
    assert [(os.path.relpath(p, local), r) for p, r in here.bad_files] == \
        [(p[len(remote) + 1:], r) for p, r in there.bad_files] == \
        [("a/empty.png", "empty file"), ("b/truncated.png", here.bad_files[1][1])]
    for split in ("train", "validation"):
        assert there.split_index(split)[1] == here.split_index(split)[1]  # Same held-out split, by relative path.
        np.testing.assert_array_equal(there.split_index(split)[0], here.split_index(split)[0])
        batches = [next(iter(pipeline.eval_dataset(s, split, 16, batch_size=100))) for s in (here, there)]
        for a, b in zip(*batches):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
