"""How long a checkpoint save stalls training at ResNet-50 size: tf_simclr's format beside Orbax, one run.

    python benchmarks/checkpoint_blocking.py [--reps 5] [--size 32] [--backends tensorflow,jax] [--dir DIR]
    python benchmarks/checkpoint_blocking.py --orbax_checks   # Orbax against the guarantees, no timing

The model is tf_simclr's ResNet-50 at width 1 with the projection head and a
10-class supervised head, and a built LARS (one momentum slot per variable):
about 130 MB of weights and as much again of slots. Each backend runs in its own
subprocess (`KERAS_BACKEND`), and saves the same state four ways:

* `ours, synchronous`: `storage.checkpoint.save_checkpoint` (snapshot to NumPy,
  `variables.npz` + `meta.json` through `storage.atomic`, fsynced, keep-N);
* `ours, background`: the same call with a `CheckpointWriter` (the snapshot in
  the caller's thread, the files in a background thread), as training saves;
* `Orbax callback, save_on_background=False` and `... =True`:
  `keras.callbacks.OrbaxCheckpoint(save_freq=1)`, driven by `on_train_batch_end`
  as `fit` drives it (needs `pip install orbax-checkpoint`; skipped without it).

"blocked" is how long the call made at the step boundary takes: what the training
loop waits for. "total" runs from that call until the checkpoint is committed
(`flush()`, `wait_until_finished()`). Variants are interleaved, their order rotated
every repetition, after one warm-up round that is not counted, so load changes on
a shared machine hit them alike; median, min and max are printed.

OrbaxCheckpoint cannot save a `SimCLRModel` as it ships: `get_state_tree` refuses
the duplicate metric paths of the train and eval trackers (`sup_loss/total`), and
the only mode that keeps optimizer slots (`save_weights_only=False`) serializes
the model's config, which SimCLRModel does not implement. The benchmark leaves
the metric variables out of the state tree and stores an empty config, so the
arrays written are the weights and slots, as ours.

`--orbax_checks` runs the guarantee probes on a small model under each backend:
what the folder holds during and after an asynchronous save, a load into a
second model of the same process, a load in a fresh process from either
backend's checkpoint (bit for bit), a `ram://` model_dir, and a SimCLRModel as
it ships. The results are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tf_simclr from this checkout.

VARIANTS = [
    ("ours_sync", "ours, synchronous"),
    ("ours_background", "ours, background (CheckpointWriter)"),
    ("orbax_sync", "Orbax callback, save_on_background=False"),
    ("orbax_background", "Orbax callback, save_on_background=True"),
]


# ------------------------------------------------------------------ one backend (subprocess)
def _build(size: int):
    import keras

    from tf_simclr import losses
    from tf_simclr.config import ModelConfig
    from tf_simclr.models import factory
    from tf_simclr.optim import optimizers

    keras.utils.set_random_seed(0)
    model = factory.build_model(ModelConfig(resnet_depth=50, width_multiplier=1.0, image_size=size, global_bn=False),
                                num_classes=10, objective=losses.NTXent(0.2))
    optimizer = optimizers.build_optimizer("lars", 0.1, momentum=0.9, weight_decay=1e-6)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)
    return model, optimizer


def _orbax_compatible(model) -> None:
    """The two stand-ins OrbaxCheckpoint needs for a SimCLRModel (see the module docstring)."""
    import types

    from keras.src.saving import saving_lib

    def get_state_tree(self, value_format="backend_tensor"):
        groups = (("trainable_variables", self.trainable_variables),
                  ("non_trainable_variables", self.non_trainable_variables),
                  ("optimizer_variables", self.optimizer.variables))
        tree = {name: self._create_nested_dict(variables, value_format) for name, variables in groups}
        tree["metrics_variables"] = {}
        return tree

    model.get_state_tree = types.MethodType(get_state_tree, model)
    saving_lib._serialize_model_as_json = lambda m: ("{}", None)


def _orbax_available() -> bool:
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        return False
    return True


def worker(args) -> dict:
    import keras

    from tf_simclr.storage import checkpoint as ckpt_lib

    model, optimizer = _build(args.size)
    named = ckpt_lib.named_variables(model, optimizer)
    megabytes = sum(int(v.numpy().nbytes) for v in named.values()) / 1e6
    root = args.dir
    steps = {}

    def next_step(name):
        steps[name] = steps.get(name, 0) + 1
        return steps[name]

    writer = ckpt_lib.CheckpointWriter()
    savers = {}

    def ours_sync():
        t0 = time.perf_counter()
        ckpt_lib.save_checkpoint(os.path.join(root, "ours_sync"), next_step("ours_sync"), model, optimizer,
                                 max_to_keep=2)
        t1 = time.perf_counter()
        return t1 - t0, t1 - t0

    def ours_background():
        t0 = time.perf_counter()
        ckpt_lib.save_checkpoint(os.path.join(root, "ours_background"), next_step("ours_background"), model,
                                 optimizer, max_to_keep=2, writer=writer)
        t1 = time.perf_counter()
        writer.flush()
        return t1 - t0, time.perf_counter() - t0

    def orbax(background):
        name = "orbax_background" if background else "orbax_sync"
        callback = keras.callbacks.OrbaxCheckpoint(os.path.join(root, name), save_freq=1, max_to_keep=2,
                                                   save_on_background=background)
        callback.set_model(model)
        batch = [0]

        def save():
            t0 = time.perf_counter()
            callback.on_train_batch_end(batch[0])  # save_freq=1: every batch end saves, as in fit.
            t1 = time.perf_counter()
            callback.wait_until_finished()
            batch[0] += 1
            return t1 - t0, time.perf_counter() - t0

        return save

    savers["ours_sync"], savers["ours_background"] = ours_sync, ours_background
    if _orbax_available():
        _orbax_compatible(model)
        savers["orbax_sync"], savers["orbax_background"] = orbax(False), orbax(True)

    names = [n for n, _ in VARIANTS if n in savers]
    for name in names:  # Warm-up: first-call costs (thread pools, imports, directories) are not counted.
        savers[name]()
    times = {name: {"blocked": [], "total": []} for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            blocked, total = savers[name]()
            times[name]["blocked"].append(blocked)
            times[name]["total"].append(total)
    return {"backend": keras.backend.backend(), "megabytes": megabytes, "variables": len(named), "times": times,
            "orbax": _orbax_available()}


# ------------------------------------------------------------------ Orbax against our guarantees (--orbax_checks)
def _small_trained_model():
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 3), "float32"), epochs=1, verbose=0)  # Slots and a step.
    return model


def _state(model):
    import keras
    import numpy as np

    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.variables + model.optimizer.variables]


def _same(a, b) -> bool:
    import numpy as np

    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def orbax_write(directory: str) -> dict:
    """This backend's probes; writes `<directory>` (an Orbax root) and `<directory>.npz` (the state saved)."""
    import keras
    import numpy as np

    found = {}
    model = _small_trained_model()
    rng = np.random.default_rng(1)
    for v in model.variables + model.optimizer.variables:
        if "float" in str(v.dtype):
            v.assign(rng.normal(size=tuple(v.shape)).astype(str(v.dtype)))
    callback = keras.callbacks.OrbaxCheckpoint(directory, save_freq=1, save_on_background=True)
    callback.set_model(model)
    callback.on_train_batch_end(0)
    found["while an async save runs"] = sorted(os.listdir(directory))
    callback.wait_until_finished()
    step = sorted(os.listdir(directory))[-1]
    found["once committed"] = [step] + sorted(os.listdir(os.path.join(directory, step)))
    np.savez(directory + ".npz", *_state(model))
    second = _small_trained_model()  # In the same process its layers are auto-named dense_1, ...
    before = _state(second)
    try:
        second.load_weights(directory)
        found["load into a second model of the process"] = (
            "bit-exact" if _same(_state(second), _state(model)) else
            "nothing restored, no error" if _same(_state(second), before) else "partly restored")
    except Exception as e:  # noqa: BLE001  Reported.
        found["load into a second model of the process"] = f"{type(e).__name__}: {str(e)[:160]}"
    try:
        ram = keras.callbacks.OrbaxCheckpoint("ram://orbax_checks/run", save_freq=1, save_on_background=False)
        ram.set_model(model)
        ram.on_train_batch_end(0)
        found["model_dir on ram://"] = "saved"
    except Exception as e:  # noqa: BLE001
        found["model_dir on ram://"] = f"{type(e).__name__}: {str(e)[:160]}"
    try:
        from tf_simclr import losses
        from tf_simclr.config import ModelConfig
        from tf_simclr.models import factory
        from tf_simclr.optim import optimizers

        simclr = factory.build_model(ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=16),
                                     num_classes=2, objective=losses.NTXent(0.2))
        optimizer = optimizers.build_optimizer("lars", 0.1, momentum=0.9, weight_decay=1e-6)
        simclr.compile(optimizer=optimizer)
        optimizer.build(simclr.trainable_variables)
        plain = keras.callbacks.OrbaxCheckpoint(directory + "-simclr", save_freq=1, save_on_background=False)
        plain.set_model(simclr)
        plain.on_train_batch_end(0)
        found["a SimCLRModel as it ships"] = "saved"
    except Exception as e:  # noqa: BLE001
        found["a SimCLRModel as it ships"] = f"{type(e).__name__}: {str(e)[:160]}"
    return found


def orbax_read(directory: str) -> str:
    """Loads `directory` into the first model of a fresh process (the writer's layer names); compares bit for bit."""
    import numpy as np

    model = _small_trained_model()
    try:
        model.load_weights(directory)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:160]}"
    with np.load(directory + ".npz") as saved:
        wanted = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return "bit-exact" if _same(_state(model), wanted) else "differs"


def orbax_checks(args) -> None:
    base = args.dir or tempfile.mkdtemp(prefix="orbax_checks-")
    backends = args.backends.split(",")

    def run(backend, *extra):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *extra], env=env, capture_output=True,
                              text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        return json.loads(lines[-1][len("RESULT "):]) if lines else f"exit {done.returncode}: {done.stderr[-800:]}"

    try:
        for backend in backends:
            print(f"{backend} writes:", json.dumps(run(backend, "--orbax_write", os.path.join(base, backend)), indent=1))
        for writer in backends:
            for reader in backends:
                print(f"written by {writer}, read by {reader} in a fresh process:",
                      run(reader, "--orbax_read", os.path.join(base, writer)))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ the table
def _cell(values):
    return f"{statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]"


def print_table(results, reps):
    print(f"\nCheckpoint save at ResNet-50 size, {reps} repetitions each: median [min-max] seconds")
    print(f"{'backend':<11} {'variant':<42} {'blocked (training waits)':<26} {'total (until committed)':<24}")
    for result in results:
        if "error" in result:
            print(f"{result['backend']:<11} failed: {result['error']}")
            continue
        for name, label in VARIANTS:
            if name not in result["times"]:
                print(f"{result['backend']:<11} {label:<42} n/a (pip install orbax-checkpoint)")
                continue
            t = result["times"][name]
            print(f"{result['backend']:<11} {label:<42} {_cell(t['blocked']):<26} {_cell(t['total']):<24}")
    for result in results:
        if "megabytes" in result:
            print(f"{result['backend']}: {result['variables']} variables (model and LARS), {result['megabytes']:.1f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="image size (32: CIFAR stem; the weights barely change)")
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed after)")
    parser.add_argument("--orbax_checks", action="store_true",
                        help="instead of timing: check Orbax against the guarantees (small model, each backend)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--orbax_write", help=argparse.SUPPRESS)
    parser.add_argument("--orbax_read", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    if args.orbax_write or args.orbax_read:
        result = orbax_write(args.orbax_write) if args.orbax_write else orbax_read(args.orbax_read)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.orbax_checks:
        orbax_checks(args)
        return
    base = args.dir or tempfile.mkdtemp(prefix="checkpoint_blocking-")
    results = []
    try:
        for backend in args.backends.split(","):
            directory = os.path.join(base, backend)
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            command = [sys.executable, os.path.abspath(__file__), "--worker", "--reps", str(args.reps),
                       "--size", str(args.size), "--dir", directory]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                results.append({"backend": backend, "error": f"exit {done.returncode}: {done.stderr[-1500:]}"})
            else:
                results.append(json.loads(lines[-1][len("RESULT "):]))
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print_table(results, args.reps)


if __name__ == "__main__":
    main()
