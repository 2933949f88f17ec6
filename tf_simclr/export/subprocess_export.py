"""Exporting from a Keras-on-JAX run: the SavedModel needs the TensorFlow backend, so a subprocess has it.

Checkpoints are backend-neutral, so a JAX run exports by running
`python -m tf_simclr export --checkpoint=...` on its newest checkpoint with
`KERAS_BACKEND=tensorflow`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Optional

log = logging.getLogger("tf_simclr")


def export_checkpoint_in_subprocess(checkpoint: str, export_base: str, keep_max: int = 1, timeout: float = 1800) -> Optional[str]:
    """Exports `checkpoint` to `export_base/<step>/` with `tf_simclr export` under TensorFlow.

    Returns:
        The module's path, or None (with a logged reason) when the export failed:
        the checkpoint stays usable, `tf_simclr export --checkpoint=...`
        can be rerun by hand.
    """
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    command = [sys.executable, "-m", "tf_simclr", "export", f"--checkpoint={checkpoint}", f"--out={export_base}",
               f"--keep_max={keep_max}"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("Skipped the TF-Hub export of %s: running %s failed (%s).", checkpoint, " ".join(command), e)
        return None
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-5:]
        log.warning(
            "Skipped the TF-Hub export of %s: `%s` exited with %d:\n  %s",
            checkpoint, " ".join(command), done.returncode, "\n  ".join(tail),
        )
        return None
    lines = (done.stdout or "").strip().splitlines()
    return lines[-1] if lines else None
