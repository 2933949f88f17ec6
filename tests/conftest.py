"""Shared test setup: quiet TensorFlow, two logical CPU devices for cross-replica tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

# Two logical CPUs let MirroredStrategy tests run without GPUs. This must happen
# before TensorFlow initializes its devices, so it lives here and nowhere else.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # Devices already initialized by an earlier import.
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (seconds to minutes)")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A TFDS data_dir with the genuine fashion_mnist prepared offline (once per session)."""
    from tf_simclr import fashion_mnist

    if not fashion_mnist.has_source_files():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    fashion_mnist.prepare_fashion_mnist(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by every test.

    Separate MirroredStrategy objects in one process can hand out colliding
    collective-instance keys ("Shape mismatch in the collective instance"), so tests
    must not create their own.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(autouse=True)
def _no_op_determinism_leak():
    """`train(deterministic=True)` turns on process-wide op determinism; later tests must not inherit it."""
    yield
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()
