"""Continuous evaluation: follow a training run's model_dir and score every checkpoint it writes.

The reference's `--mode=eval` does the same: a separate job (often on other
hardware) evaluates checkpoints as they appear, so training never pauses for
eval. The loop ends once the run's final checkpoint is scored, or when no new
checkpoint has appeared for `timeout_secs` (a crashed or stopped trainer).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from tf_simclr.config import Config
from tf_simclr.storage import checkpoint as ckpt_lib

log = logging.getLogger("tf_simclr")

EvaluateFn = Callable[[str], dict]


def final_step(config: Config, source=None) -> int:
    """The step the run ends at (what the trainer trains to), from the config and dataset size."""
    from tf_simclr.data import sources, subsets
    from tf_simclr.optim.plan import make_plan

    t = config.train
    if t.train_steps > 0:
        return int(t.train_steps)
    if source is None:
        source = sources.load_source(config.data.dataset, config.data.data_dir, prepare=False)
    source = subsets.labelled_subset(config, source)
    return make_plan(config, max(1, source.num_examples(config.data.train_split)), warn=False).total_steps


def _default_evaluate_fn(config: Config, strategy, source) -> EvaluateFn:
    """Builds the model once and restores each checkpoint into it (`supervised.evaluate_checkpoint`)."""
    from tf_simclr.evaluation import supervised

    from tf_simclr.evaluation import trained

    state = {"model": None}

    def evaluate(path: str) -> dict:
        if state["model"] is None:
            state["model"], _ = trained.load_trained_model(config, source.num_classes or None, strategy, checkpoint=path)
        return supervised.evaluate_checkpoint(config, state["model"], strategy, checkpoint=path, source=source)

    return evaluate


def eval_loop(
    config: Config,
    strategy=None,
    *,
    timeout_secs: float = 3600.0,
    poll_secs: float = 10.0,
    last_step: Optional[int] = None,
    evaluate_fn: Optional[EvaluateFn] = None,
    source=None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict]:
    """Evaluates each checkpoint of `config.train.model_dir`, oldest first, as it appears.

    Checkpoints already present when the loop starts are evaluated too. Each
    evaluation writes `result_<step>.json` and `result.json` (via
    `supervised.evaluate_checkpoint`).

    Args:
        config: The training run's config (model_dir, data, eval batch size).
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
        timeout_secs: Stop after this long without a new checkpoint. Defaults to 3600.
        poll_secs: Seconds between looks at model_dir. Defaults to 10.
        last_step: The run's final step; defaults to `final_step(config)`.
        evaluate_fn: `path -> results dict` (with "global_step"); defaults to
            restoring into one model and `supervised.evaluate_checkpoint`.
        source: The opened dataset; opened here if None.
        clock, sleep: Time, injectable so tests can run the loop on a fake clock.

    Returns:
        The results, one per evaluated checkpoint, in step order.
    """
    if timeout_secs < 0 or poll_secs <= 0:
        raise ValueError(f"Need timeout_secs >= 0 and poll_secs > 0. Received: timeout_secs={timeout_secs}, poll_secs={poll_secs}")
    model_dir = config.train.model_dir
    if evaluate_fn is None and source is None:
        from tf_simclr.data import sources

        source = sources.load_source(config.data.dataset, config.data.data_dir, splits=[config.data.eval_split])
    last_step = final_step(config, source) if last_step is None else int(last_step)
    evaluate = evaluate_fn or _default_evaluate_fn(config, strategy, source)
    results, done = [], set()
    newest = -1
    last_new = clock()
    log.info("Evaluating checkpoints in %s up to step %d (timeout %gs without a new one)", model_dir, last_step, timeout_secs)
    while True:
        pending = [s for s in ckpt_lib.checkpoint_steps(model_dir) if s > newest and s not in done]
        for step in pending:
            path = ckpt_lib.checkpoint_path(model_dir, step)
            try:
                result = evaluate(path)
            except FileNotFoundError:  # Pruned by the trainer (keep_checkpoint_max) before we got to it.
                log.warning("Checkpoint %s vanished before evaluation; skipping it.", path)
                continue
            finally:
                done.add(step)
                newest = max(newest, step)
                last_new = clock()
            results.append(result)
            log.info("Evaluated step %d: %s", step, result)
            if step >= last_step:
                return results
        if clock() - last_new > timeout_secs:
            log.info("No new checkpoint in %s for %gs; stopping after step %d.", model_dir, timeout_secs, newest)
            return results
        sleep(poll_secs)
