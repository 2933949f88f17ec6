"""The trainer command: the reference's `run.py`, flag for flag (`tf_simclr --mode=... ...`).

Parses the flags into a `Config` (`cli.flags`) and runs the job
(`tf_simclr.jobs.run`); here live only what a process does around it: logging,
exit statuses (2 for a flag problem found before any work, 143 after a SIGTERM
checkpoint, 1 for a NaN loss) and re-joining a multi-worker cluster after a peer
died.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import app, flags

from tf_simclr.cli import flags as flags_lib

FLAGS = flags.FLAGS
flags_lib.define_flags(FLAGS)

log = py_logging.getLogger("tf_simclr")


def _rejoin(error, argv):
    """Restarts this worker process after another worker died, so it rejoins the cluster.

    Collective ops cannot recover inside a process, so the worker re-executes its own
    command line; it then waits for the restarted peer and every worker resumes from
    the chief's newest checkpoint. Bounded by TF_SIMCLR_MAX_REJOINS (default 20).
    """
    done = int(os.environ.get("TF_SIMCLR_REJOINS", "0"))
    limit = int(os.environ.get("TF_SIMCLR_MAX_REJOINS", "20"))
    if done >= limit:
        print(f"{_prog()}: error: a peer worker failed and this worker already rejoined {done} times "
              f"(TF_SIMCLR_MAX_REJOINS={limit}): {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    log.warning("A peer worker failed (%s); restarting this worker to rejoin from the newest checkpoint (%d/%d).",
                type(error).__name__, done + 1, limit)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ["TF_SIMCLR_REJOINS"] = str(done + 1)
    os.execv(sys.executable, [sys.executable] + sys.argv)


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "tf_simclr"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags are written --name=value).")
    from tf_simclr import logs

    logs.configure()
    from tf_simclr import jobs
    from tf_simclr.training import callbacks, preemption

    config = flags_lib.config_from_flags(FLAGS)
    try:
        strategy, source = jobs.prepare(config)
    except ValueError as e:
        print(f"{_prog()}: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        jobs.execute(config, strategy, source)
    except preemption.Preempted as e:
        log.warning("%s", e)
        sys.exit(preemption.PREEMPTED_EXIT_STATUS)
    except callbacks.NonFiniteLossError as e:
        print(f"{_prog()}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if _peer_failed(strategy, e):
            _rejoin(e, argv)
        raise


def _peer_failed(strategy, error) -> bool:
    """Whether `error` is a multi-worker `tf.distribute` run's peer failure (never so under JAX)."""
    from tf_simclr.distribute import jax_parallel

    if jax_parallel.is_jax():
        return False
    from tf_simclr.distribute import strategy as strategy_lib

    return strategy_lib.is_multi_worker(strategy) and strategy_lib.is_peer_failure(error)


def run_trainer(argv) -> None:
    """Parses `argv` (program name first) with absl and runs `main`."""
    app.run(main, argv=argv)
