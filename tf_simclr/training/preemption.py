"""SIGTERM as a request to checkpoint and stop, not an instant death.

Cloud schedulers (preemptible VMs, Kubernetes, Slurm) send SIGTERM some seconds
before they kill a job. While `catch_sigterm()` is active, SIGTERM only raises a
flag; the training callback sees it at the end of the current step, writes a
checkpoint and ends the run, which then exits with status 143 (128 + SIGTERM) so
the scheduler knows the job did not finish and restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("tf_simclr")

PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(Exception):
    """Raised by `train()` after a SIGTERM stopped it at a checkpoint."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(
            f"Stopped by SIGTERM at step {step}; saved {checkpoint}. Rerun the same command to resume from it."
        )


class SigtermFlag:
    """Whether a SIGTERM arrived since `catch_sigterm()` began."""

    def __init__(self):
        self.requested = False
        self.signal_number = None

    def set(self, signum, frame=None):
        if not self.requested:
            log.warning("Received signal %d: saving a checkpoint after this step, then stopping.", signum)
        self.requested = True
        self.signal_number = signum


@contextlib.contextmanager
def catch_sigterm():
    """Turns SIGTERM into a `SigtermFlag` for the duration (main thread only; elsewhere a no-op flag)."""
    flag = SigtermFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, flag.set)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
