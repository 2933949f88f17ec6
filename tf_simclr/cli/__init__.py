"""The command line: `tf_simclr` (console script), `python -m tf_simclr`, and the top-level `run.py`.

    tf_simclr --flagfile=flags/quickstart.cfg           the trainer (the reference's run.py flags)
    tf_simclr <command> --flag=value ...                 a helper command (see `commands`)
    tf_simclr help                                       the commands

Only this package reads flags; everything below it takes a `Config` or plain arguments.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def _usage() -> str:
    from tf_simclr.cli.commands import COMMANDS

    lines = ["usage: tf_simclr [--flag=value ...]            train / evaluate / export (the reference's run.py flags;",
             "                                               --helpfull lists them)",
             "       tf_simclr <command> [--flag=value ...]", "", "commands:"]
    lines += [f"  {name:<14} {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def _import_tensorflow_if_installed() -> None:
    """TensorFlow, imported quietly; without it only a JAX run of in-memory arrays can go on (`data.arrays`)."""
    from tf_simclr import logs

    try:
        logs.import_tensorflow_quietly()
    except ImportError as e:
        import os

        if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
            raise ImportError(f"{e}. tf_simclr needs TensorFlow (pip install tensorflow), except under "
                              "KERAS_BACKEND=jax with --dataset=idx:<folder> and --augment_on=device.") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatches to a helper command when the first word names one, else runs the trainer."""
    from tf_simclr import cpu_kernels, logs

    logs.quiet_native_logs()  # Before TensorFlow is imported, as is:
    cpu_kernels.use_onednn_on_avx2()
    if argv is None:  # A real process (not a test calling in): TensorFlow's start-up kept quiet, our log format.
        _import_tensorflow_if_installed()
        logs.configure(verbose_libraries=False)
    argv = list(sys.argv if argv is None else argv)
    from tf_simclr.cli.commands import COMMANDS

    if len(argv) > 1 and argv[1] in ("help", "commands"):
        print(_usage())
        return 0
    if len(argv) > 1 and argv[1] in COMMANDS:
        return COMMANDS[argv[1]](argv[2:])
    if len(argv) > 1 and not argv[1].startswith("-"):
        print(f"tf_simclr: error: unknown command {argv[1]!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    if len(argv) > 1 and argv[1] == "train":  # `tf_simclr train --...` reads as well as `tf_simclr --...`.
        argv = [argv[0], *argv[2:]]
    from tf_simclr.cli import train

    if any(arg in ("-h", "--help", "--helpshort", "--helpfull", "-?") for arg in argv[1:]):
        print(_usage() + "\n\nTrainer flags (the reference's run.py flags, and tf_simclr's):\n")
        print(train.FLAGS.module_help("tf_simclr.cli.flags"))
        return 0
    train.run_trainer(argv)
    return 0
