"""What a run prints: its own progress and results; library chatter only on request.

TensorFlow's C++ INFO lines, TFDS's and absl's INFO lines, and CUDA's
initialization errors on a machine without a GPU are hidden by default. Show
them with `--verbosity=0` (absl's flag: 0 is INFO, 1 DEBUG) or, for
TensorFlow's C++ side, `TF_CPP_MIN_LOG_LEVEL=0`. Warnings that matter (a bad
image skipped, a blur that does nothing, a preemption) stay visible.
"""

from __future__ import annotations

import logging
import os
import sys

QUIET_LIBRARIES = ("tensorflow", "tensorflow_datasets", "absl", "jax", "h5py")


def quiet_native_logs() -> None:
    """Before TensorFlow is imported: C++ logs at WARNING and above, and no CUDA probe on machines without a GPU."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not os.path.exists("/dev/nvidia0") and not os.path.exists("/dev/nvidiactl"):
        # No NVIDIA device: skip CUDA's initialization (and its "failed call to cuInit" error line).
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


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

