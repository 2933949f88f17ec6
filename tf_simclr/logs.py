"""What a run prints: its own progress and results; library chatter only on request.

TensorFlow's C++ INFO lines, TFDS's and absl's INFO lines, and CUDA's
initialization errors on a machine without a GPU are hidden by default. Show
them with `--verbosity=0` (absl's flag: 0 is INFO, 1 DEBUG), and for
TensorFlow's C++ side `TF_CPP_MIN_LOG_LEVEL=0` and `TF_SIMCLR_SHOW_TF_STARTUP=1`
(its start-up lines). Warnings that matter (a bad
image skipped, a blur that does nothing, a preemption) stay visible.
"""

from __future__ import annotations

import logging
import os
import sys

QUIET_LIBRARIES = ("tensorflow", "tensorflow_datasets", "absl", "jax", "h5py")
SHOW_STARTUP_ENV = "TF_SIMCLR_SHOW_TF_STARTUP"  # =1: TensorFlow's start-up lines are printed as they come.


def quiet_native_logs() -> None:
    """Before TensorFlow is imported: its C++ logs at ERROR and above (TF_CPP_MIN_LOG_LEVEL, if not set already)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly() -> str:
    """Imports TensorFlow and initializes its devices with stderr captured; returns what it printed.

    TensorFlow 2.21 prints its start-up lines (oneDNN notice, "Could not find cuda
    drivers", "failed call to cuInit" on a machine without a GPU) from C++ before its
    log level applies. They are kept out of the run's output unless
    TF_SIMCLR_SHOW_TF_STARTUP=1; if the import fails, they are printed with the error.
    """
    if os.environ.get(SHOW_STARTUP_ENV) == "1" or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return ""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA's probe happens here.
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return captured.read().decode(errors="replace")


def configure(verbose_libraries: bool | None = None) -> None:
    """tf_simclr's progress at INFO on stderr; other libraries at WARNING unless `--verbosity` asks for more.

    Args:
        verbose_libraries: Show the libraries' INFO lines too. Defaults to whether
            absl's `--verbosity` was given as 0 (INFO) or more.
    """
    from absl import flags
    from absl import logging as absl_logging

    if verbose_libraries is None:
        try:
            verbose_libraries = bool(flags.FLAGS["verbosity"].present) and flags.FLAGS.verbosity >= 0
        except (KeyError, flags.UnparsedFlagAccessError):
            verbose_libraries = False
    ours = logging.getLogger("tf_simclr")
    ours.setLevel(logging.INFO)
    if not any(getattr(h, "_tf_simclr", False) for h in ours.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        handler._tf_simclr = True  # noqa: SLF001
        ours.addHandler(handler)
    ours.propagate = False
    level = logging.INFO if verbose_libraries else logging.WARNING
    absl_logging.set_verbosity(absl_logging.INFO if verbose_libraries else absl_logging.WARNING)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(level)

