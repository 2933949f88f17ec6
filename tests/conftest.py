"""Shared test setup: quiet TensorFlow, two logical CPU devices, and the fixtures every area uses.

Fixtures here (not copied into test files): `fashion_mnist_dir`, `two_cpu_strategy`,
`image_folder` (two class folders of random PNGs), and the helpers in `helpers.py`
(`tiny_model_config`, `tiny_config`, `StepLogs`).
"""

import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import helpers` from any test folder.

from tf_simclr import cpu_kernels  # noqa: E402  (light: no TensorFlow)

cpu_kernels.use_onednn_on_avx2()  # Before TensorFlow loads, as the command line does; children inherit it.

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import REPO, write_image_folder  # noqa: E402  (one place; tests import it from helpers)

# Subprocesses (workers, run.py, `python -c` scripts) import this checkout's tf_simclr, as the tests
# themselves do, not whichever copy pip installed, and `helpers` (e.g. `--backbone=helpers:MICRO`): set once
# here, inherited by every child.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (REPO, os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")) if p)
# A child that dies of a signal (a segfault in a native library) prints its Python stack, which the tests show.
os.environ["PYTHONFAULTHANDLER"] = "1"

# Two logical CPUs let MirroredStrategy tests run without GPUs. This must happen
# before TensorFlow initializes its devices, so it lives here and nowhere else.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # Devices already initialized by an earlier import.
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (seconds to minutes)")


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A TFDS data_dir with the genuine fashion_mnist prepared offline, once per run: pytest-xdist's workers share
    it (the first prepares it under a file lock, the others wait and read it; every test only reads it)."""
    import fcntl

    from tf_simclr.data import fashion_mnist

    if not fashion_mnist.has_source_files():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # This run's folder, above each worker's own.
    data_dir, ready = root / "tfds-shared", root / "tfds-shared.ready"
    with open(root / "tfds-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            fashion_mnist.prepare_fashion_mnist(str(data_dir))
            ready.touch()
    return str(data_dir)


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by every test.

    Separate MirroredStrategy objects in one process can hand out colliding
    collective-instance keys ("Shape mismatch in the collective instance"), so tests
    must not create their own.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """48 random 20x20 PNGs in two class folders (the folder source derives train/validation 90/10)."""
    return write_image_folder(str(tmp_path_factory.mktemp("images")), per_class=24)


@pytest.fixture(autouse=True)
def _no_op_determinism_leak():
    """`train(deterministic=True)` turns on process-wide op determinism; later tests must not inherit it.

    The test's tf.data iterators are collected first: one made under op determinism and destroyed after it is
    turned off waited about 36 s on a tf.data background thread (TensorFlow 2.21), in whichever later test the
    garbage collector happened to run (docs/testing.md).
    """
    yield
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():
        gc.collect()
        tf_config.disable_op_determinism()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn's digits written by `tf_simclr digits` as train/test class folders (once per session)."""
    import helpers

    root = str(tmp_path_factory.mktemp("digits") / "digits")
    assert helpers.run_cli("digits", f"--out={root}") == 0
    return root


@pytest.fixture(autouse=True)
def _restore_logging_after_in_process_cli():
    """In-process command-line calls run `logs.configure()` (tf_simclr's logger stops propagating, libraries go
    quiet); later tests' `caplog` must still see tf_simclr's records, so each test gets the logging it started with."""
    import logging

    names = ("tf_simclr", "tensorflow", "tensorflow_datasets", "absl", "jax", "h5py")
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate,
                    list(logging.getLogger(name).handlers)) for name in names}
    yield
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
