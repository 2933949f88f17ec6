"""storage.atomic under real crashes: a process killed mid-write leaves the previous good file usable, never a partial one.

Checkpoints, exports and flags.json all go through `tf_simclr.storage.atomic`
(temporary `.tmp-<name>-<random>` siblings, moved-aside `.old-<name>-<random>`
folders, a commit marker written last). A crash is simulated with `os._exit` in
a subprocess: unlike an exception it runs no `finally`/`except` cleanup, exactly
as a SIGKILL, OOM kill or power cut. Each subprocess records what it wrote before
the crash (arrays, outputs), and the test process checks what is left on disk
against that record.
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import textwrap

import keras  # noqa: F401  Used by eval(SMALL_MODEL) and eval(SMALL_OPTIMIZER).
import numpy as np
import pytest

import helpers
from tf_simclr.config import Config, TrainConfig
from tf_simclr.export import exports_dir, hub_module, load
from tf_simclr.models import build_model
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import restore, trainer

pytestmark = pytest.mark.slow

# The checkpointed model of the checkpoint tests: small, so a subprocess starts fast.
SMALL_MODEL = "keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])"
SMALL_OPTIMIZER = "keras.optimizers.SGD(0.1, momentum=0.9)"

# Randomizes every float variable of `model` and `opt` (seeded); saves them, in order, to `path` if given.
_RANDOMIZE_AND_RECORD = """
import numpy as np

def randomize_and_record(model, opt, seed, path=None):
    rng = np.random.default_rng(seed)
    for v in model.variables + opt.variables:
        if str(v.dtype).startswith("float"):
            v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype(str(v.dtype)))
    if path:
        np.savez(path, *[np.asarray(v.numpy()) for v in model.variables + opt.variables])
"""


def run_until_crash(script, *args, exit_code, prelude=""):
    """Runs `prelude` + `script` in a fresh Python; asserts it died with `exit_code` (its `os._exit`)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=240, cwd=helpers.REPO,
    )
    assert result.returncode == exit_code, f"exit code {result.returncode}:\n{result.stderr[-4000:]}"


def fresh_small_model():
    model, opt = eval(SMALL_MODEL), eval(SMALL_OPTIMIZER)
    opt.build(model.trainable_variables)
    return model, opt


def current_values(model, opt):
    return [np.asarray(v.numpy()) for v in model.variables + opt.variables]


def recorded_values(path):
    with np.load(path) as recorded:
        return [recorded[f"arr_{i}"] for i in range(len(recorded.files))]


def assert_restores_to(checkpoint, expected_path):
    """Restores `checkpoint` into a fresh model and optimizer; their values must be the recorded ones."""
    model, opt = fresh_small_model()
    expected = recorded_values(expected_path)
    assert len(expected) == len(model.variables + opt.variables)
    assert any(not np.array_equal(a, b) for a, b in zip(current_values(model, opt), expected))  # Not trivially equal.
    ckpt_lib.restore_checkpoint(checkpoint, model, opt)
    for index, (actual, wanted) in enumerate(zip(current_values(model, opt), expected)):
        np.testing.assert_array_equal(actual, wanted, err_msg=f"variable {index}")


def hidden_entries(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


# ------------------------------------------------------------------ Checkpoints
def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    directory, expected = tmp_path / "run", tmp_path / "expected_ckpt2.npz"
    run_until_crash(f"""
        import json, os, sys, types
        import keras, numpy as np
        from tf_simclr.storage import checkpoint as ckpt
        directory, expected = sys.argv[1:3]
        model, opt = {SMALL_MODEL}, {SMALL_OPTIMIZER}
        opt.build(model.trainable_variables)
        randomize_and_record(model, opt, 2, expected)
        ckpt.save_checkpoint(directory, 2, model, opt)
        randomize_and_record(model, opt, 4)
        # Die after variables.npz is written, while meta.json (the commit marker) is: opened, not yet written.
        ckpt.json = types.SimpleNamespace(dumps=lambda *a, **k: os._exit(9), loads=json.loads, load=json.load)
        ckpt.save_checkpoint(directory, 4, model, opt)
    """, directory, expected, exit_code=9, prelude=_RANDOMIZE_AND_RECORD)

    assert ckpt_lib.checkpoint_steps(str(directory)) == [2]
    assert ckpt_lib.latest_checkpoint(str(directory)) == str(directory / "ckpt-2")
    leftovers = hidden_entries(directory)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-ckpt-4-")
    # The crash came mid-checkpoint: the variables are written, meta.json is opened but empty.
    assert sorted(os.listdir(directory / leftovers[0])) == sorted([ckpt_lib.VARIABLES_FILE, ckpt_lib.META_FILE])
    assert os.path.getsize(directory / leftovers[0] / ckpt_lib.META_FILE) == 0
    assert_restores_to(str(directory), expected)

    # The next save cleans up and publishes normally.
    model, opt = fresh_small_model()
    ckpt_lib.save_checkpoint(str(directory), 4, model, opt)
    assert hidden_entries(directory) == []
    assert ckpt_lib.checkpoint_steps(str(directory)) == [2, 4]


def test_crash_while_replacing_a_checkpoint_is_rolled_back(tmp_path):
    directory, expected = tmp_path / "run", tmp_path / "expected_ckpt4.npz"
    run_until_crash(f"""
        import os, sys
        import keras, numpy as np
        from tf_simclr.storage import atomic
        from tf_simclr.storage import checkpoint as ckpt
        directory, expected = sys.argv[1:3]
        model, opt = {SMALL_MODEL}, {SMALL_OPTIMIZER}
        opt.build(model.trainable_variables)
        randomize_and_record(model, opt, 4, expected)
        ckpt.save_checkpoint(directory, 4, model, opt)
        randomize_and_record(model, opt, 5)
        # Saving step 4 again: storage.atomic moves the old ckpt-4 aside (rename 1), then we die before
        # the new one is renamed in (rename 2).
        renames, real_rename = [], os.rename
        def rename_then_die(src, dst):
            renames.append((src, dst))
            if len(renames) == 2:
                os._exit(9)
            real_rename(src, dst)
        atomic.os.rename = rename_then_die
        ckpt.save_checkpoint(directory, 4, model, opt)
    """, directory, expected, exit_code=9, prelude=_RANDOMIZE_AND_RECORD)

    # Both complete versions are on disk under hidden names; no partial ckpt-4 is visible.
    leftovers = hidden_entries(directory)
    assert [name.split("-ckpt-")[0] for name in leftovers] == [".old", ".tmp"], leftovers
    assert ckpt_lib.checkpoint_steps(str(directory)) == []

    assert sorted(ckpt_lib.recover_interrupted(str(directory))) == leftovers
    assert sorted(os.listdir(directory)) == ["ckpt-4"]
    assert_restores_to(str(directory / "ckpt-4"), expected)  # The old one, not the unfinished replacement.


def test_resuming_after_a_crash_mid_replacement_finds_the_moved_aside_checkpoint(tmp_path):
    directory = tmp_path / "run"
    model, opt = fresh_small_model()
    opt.iterations.assign(4)
    ckpt_lib.save_checkpoint(str(directory), 4, model, opt)
    os.rename(directory / "ckpt-4", directory / ".old-ckpt-4-12345")  # What the crash test above leaves.
    resumed, resumed_opt = fresh_small_model()
    resumed.compile(optimizer=resumed_opt)

    assert restore.restore(resumed, Config(train=TrainConfig(model_dir=str(directory)))) == 4
    assert sorted(os.listdir(directory)) == ["ckpt-4"]


# ------------------------------------------------------------------ Exports
_EXPORT_SCRIPT = """
    import os, sys
    import numpy as np, tensorflow as tf
    from tf_simclr.export import hub_module
    from tf_simclr.models import build_model
    import helpers
    base, expected = sys.argv[1:3]
    model = build_model(helpers.micro_model_config())  # Atomic publishing is the subject: a small, fast export.
    rng = np.random.default_rng(0)
    def perturb():  # Random weights and positive batch-norm scales: inference is not near-identity.
        for v in model.weights:
            shape, positive = tuple(v.shape), v.path.endswith(("moving_variance", "gamma"))
            value = rng.uniform(0.5, 1.5, shape) if positive else v.numpy() + rng.normal(0, 0.05, shape)
            v.assign(value.astype("float32"))
    perturb()
    images = rng.uniform(size=(4, 16, 16, 3)).astype("float32")
    features = np.asarray(model(images, training=False)["final_avg_pool"])
    np.savez(expected, images=images, features=features)
    hub_module.export_to_hub_dir(model, base, 2, keep_max=0, image_size=16)
    perturb()
    def write_half_then_die(obj, export_dir, *args, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half a protobuf")
        os._exit(7)
    hub_module.tf.saved_model.save = write_half_then_die
    hub_module.export_to_hub_dir(model, base, 4, keep_max=0, image_size=16)
"""


def test_crash_while_exporting_keeps_the_previous_module(tmp_path):
    base, expected = tmp_path / "exports", tmp_path / "expected_outputs.npz"
    run_until_crash(_EXPORT_SCRIPT, base, expected, exit_code=7)

    assert exports_dir.exported_steps(str(base)) == [2]
    assert exports_dir.resolve_export(str(base)) == str(base / "2")
    leftovers = hidden_entries(base)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-4-")
    with open(base / leftovers[0] / "saved_model.pb", "rb") as f:
        assert f.read() == b"half a protobuf"
    assert not os.path.exists(base / leftovers[0] / exports_dir.EXPORT_META_FILE)  # Never committed.

    # The step-2 module computes what the live model computed before the crash, both ways of loading it.
    with np.load(expected) as recorded:
        images, features = recorded["images"], recorded["features"]
    for from_saved_model in (False, True):
        encoder = load.load_encoder(str(base), from_saved_model=from_saved_model)
        np.testing.assert_allclose(np.asarray(encoder(images)), features, rtol=1e-5, atol=1e-5,
                                   err_msg=f"from_saved_model={from_saved_model}")

    # Exporting step 4 again removes the leftover and publishes a complete module.
    live = build_model(helpers.micro_model_config())
    hub_module.export_to_hub_dir(live, str(base), 4, keep_max=0, image_size=16)
    assert hidden_entries(base) == []
    assert exports_dir.exported_steps(str(base)) == [2, 4]


def _fake_write_export(model, final, step, meta, image_size):
    """Stands in for the real SavedModel write: a complete-looking module (marker last), instantly."""
    os.makedirs(final)
    with open(os.path.join(final, "saved_model.pb"), "wb") as f:
        f.write(b"module %d" % step)
    with open(os.path.join(final, exports_dir.EXPORT_META_FILE), "w") as f:
        json.dump({"step": step}, f)


def test_a_later_export_removes_leftovers_of_other_steps(tmp_path, monkeypatch):
    base = tmp_path / "exports"
    leftover = base / ".tmp-4-killed"  # What the crash test above shows a killed export leaves.
    os.makedirs(leftover)
    (leftover / "saved_model.pb").write_bytes(b"half a protobuf")
    monkeypatch.setattr(hub_module, "_write_export", _fake_write_export)

    hub_module.export_to_hub_dir(None, str(base), 6, keep_max=0)

    assert exports_dir.exported_steps(str(base)) == [6]
    assert hidden_entries(base) == []


# ------------------------------------------------------------------ flags.json
def _json_form(config):
    """flags.json's expected content, computed without trainer.write_flags."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def test_crash_while_writing_flags_keeps_the_previous_file(tmp_path):
    model_dir = tmp_path / "run"
    os.makedirs(model_dir)
    run_until_crash("""
        import os, sys
        from tf_simclr.storage import atomic
        from tf_simclr.training import trainer
        from tf_simclr.config import Config, TrainConfig
        model_dir = sys.argv[1]
        trainer.write_flags(Config(train=TrainConfig(model_dir=model_dir, learning_rate=0.25)), model_dir)

        class HalfThenDie:
            # storage.atomic's file write: half the text reaches the temporary file, then the process dies.
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.f.close()
            def write(self, text):
                self.f.write(text[: len(text) // 2])
                self.f.flush()
                os._exit(5)

        atomic.open = lambda path, mode="r": HalfThenDie(open(path, mode))
        trainer.write_flags(Config(train=TrainConfig(model_dir=model_dir, learning_rate=0.5)), model_dir)
    """, model_dir, exit_code=5)

    first = Config(train=TrainConfig(model_dir=str(model_dir), learning_rate=0.25))
    second = Config(train=TrainConfig(model_dir=str(model_dir), learning_rate=0.5))
    with open(model_dir / "flags.json") as f:
        assert json.load(f) == _json_form(first)
    # The half-written new version exists only under the temporary name (proof the crash came mid-write).
    (temporary,) = glob.glob(str(model_dir / ".tmp-flags.json-*"))
    half = open(temporary).read()
    assert half
    with pytest.raises(json.JSONDecodeError):
        json.loads(half)
    assert json.dumps(_json_form(second), indent=1, sort_keys=True).startswith(half)

    trainer.write_flags(second, str(model_dir))
    assert sorted(os.listdir(model_dir)) == ["flags.json"]  # The leftover is cleaned up by the next write.
    with open(model_dir / "flags.json") as f:
        assert json.load(f) == _json_form(second)
