"""A whole job from a `Config`: check it, then train, evaluate, report and export as its mode says.

    tf_simclr.run(config)      # what `python run.py <flags>` does, from Python

Modes (`config.run.mode`, the reference's `--mode`):

* `train`: train (pretrain or fine-tune), export at the end;
* `eval`: follow the model_dir and score every checkpoint's supervised head (or, with an empty
  model_dir, score a google-research/simclr `--checkpoint` once);
* `train_then_eval`: train, then score the final checkpoint;
* `export`: export the newest checkpoint of model_dir (or `--checkpoint`, a reference model too).

`--feature_eval` adds the frozen-feature report (linear probe and kNN, beside a
random-init encoder and the raw pixels) after any of them; `--few_label_baselines` puts
a fine-tune beside the raw pixels of its labelled images and the same recipe from scratch.
"""

from __future__ import annotations

import logging

from tf_simclr.config import Config
from tf_simclr.jobs import checks

log = logging.getLogger("tf_simclr")


def _needed_splits(config: Config) -> list[str]:
    d, r = config.data, config.run
    needed = [d.train_split] if r.mode in checks.TRAINING_MODES else []
    if r.mode in ("eval", "train_then_eval") or r.feature_eval or r.few_label_baselines \
            or config.train.knn_monitor_examples:
        needed.append(d.eval_split)
    if r.feature_eval:
        needed.append(d.train_split)
    return sorted(set(needed))


def open_dataset(config: Config, prepare: bool):
    """The job's dataset, opened once (metadata only unless `prepare`); unknown names and splits fail here."""
    from tf_simclr.data import sources

    d = config.data
    return sources.load_source(d.dataset, d.data_dir, prepare=prepare, splits=_needed_splits(config),
                               strict_images=d.strict_images)


def create_strategy(config: Config):
    """The machine's `tf.distribute` strategy; under JAX without TensorFlow, JAX's local devices."""
    from tf_simclr.distribute import jax_parallel

    if jax_parallel.is_jax() and not jax_parallel.has_tensorflow():
        return jax_parallel.LocalDevices()
    from tf_simclr.distribute import strategy as strategy_lib

    r = config.run
    return strategy_lib.create_strategy(use_tpu=r.use_tpu, tpu_name=r.tpu_name, tpu_zone=r.tpu_zone,
                                        gcp_project=r.gcp_project, master=r.master, num_gpus=r.num_gpus)


def prepare(config: Config, strategy=None):
    """Every check before work, in order; returns `(strategy, dataset metadata)`. Writes nothing."""
    checks.check_config(config)
    source = open_dataset(config, prepare=False)
    strategy = strategy or create_strategy(config)
    checks.check_before_work(config, num_replicas=strategy.num_replicas_in_sync, source=source)
    return strategy, source


def run(config: Config, strategy=None) -> dict:
    """Runs the job `config` describes (see the module docstring).

    Args:
        config: The job. `config.run.mode` picks what it does.
        strategy: A `tf.distribute.Strategy`; by default the one the machine (or
            TF_CONFIG, or a named TPU) offers.

    Returns:
        What it produced: `{"model": ..., "eval": [results...], "feature_eval": report,
        "export": path}` (only the keys that apply).

    Raises:
        ValueError: a flag problem found before any work (naming the flag and the fix).
        training.preemption.Preempted: a SIGTERM stopped training at a checkpoint.
        training.callbacks.NonFiniteLossError: the loss became NaN/Inf.
    """
    strategy, source = prepare(config, strategy)
    return execute(config, strategy, source)


def execute(config: Config, strategy, source) -> dict:
    """The work of `run`, after `prepare` checked the config and opened the dataset's metadata."""
    from tf_simclr.data import sources

    log.info("Model dir: %s", config.train.model_dir)
    mode = config.run.mode
    outputs: dict = {}
    if mode == "export":
        outputs["export"] = _export(config)
        return outputs
    source = sources.prepared(source)
    model = None
    if mode in checks.TRAINING_MODES:
        from tf_simclr.training import trainer

        model = outputs["model"] = trainer.train(config, strategy, source=source)
    if mode in ("eval", "train_then_eval"):
        outputs["eval"] = _evaluate(config, strategy, source, model)
    if config.run.few_label_baselines:
        from tf_simclr.evaluation import few_labels

        fine_tuned = outputs["eval"][-1] if outputs.get("eval") else None
        baselines = outputs["few_label_baselines"] = few_labels.few_label_baselines(config, source, fine_tuned,
                                                                                    strategy)
        print(few_labels.format_baselines(baselines))
    if config.run.feature_eval:
        from tf_simclr.evaluation import report as report_lib
        from tf_simclr.evaluation import trained

        if model is None and _reference_to_evaluate(config):
            model, _ = _reference_model(config, strategy)
        elif model is None:
            model, _ = trained.load_trained_model(config, source.num_classes or None, strategy)
        report = report_lib.frozen_feature_report(config, model, source=source,
                                                  max_examples=config.run.feature_eval_examples or None)
        outputs["feature_eval"] = report
        print("Frozen-feature evaluation (train split -> eval split, same probe for every row):")
        print(report_lib.format_report(report))
    return outputs


def _export(config: Config) -> str:
    from tf_simclr.export import hub_module
    from tf_simclr.storage import checkpoint as ckpt_lib

    t = config.train
    source = t.model_dir if ckpt_lib.latest_checkpoint(t.model_dir) else t.checkpoint
    if not source:
        raise ValueError(f"--mode=export found no checkpoint in --model_dir={t.model_dir}; "
                         "pass --checkpoint=<model_dir or ckpt folder>.")
    if source == t.checkpoint and _is_reference(source):
        from tf_simclr.reference import convert

        path = convert.export_reference(config, source)  # A google-research/simclr model, by the flags' architecture.
    else:
        path = hub_module.export_from_checkpoint(source, export_dir=t.export_dir, keep_max=t.keep_hub_module_max)
    print("Exported to", path)
    return path


def _evaluate(config: Config, strategy, source, model) -> list:
    from tf_simclr.models import factory

    if not factory.has_supervised_head(config, source.num_classes or None):
        log.info("Skipping eval: this run trains no supervised head (pretraining without "
                 "--lineareval_while_pretraining, or a dataset without labels).")
        return []
    if config.run.mode == "eval" and _reference_to_evaluate(config):
        from tf_simclr.evaluation import supervised

        model, step = _reference_model(config, strategy)
        result = supervised.evaluate_model(config, model, strategy, step=step, source=source)
        print(f"Eval results of {config.train.checkpoint}:", format_results(result))
        return [result]
    if config.run.mode == "eval":
        from tf_simclr.evaluation import eval_loop

        # Like the reference: follow the training run, scoring each checkpoint until its last one.
        results = eval_loop.eval_loop(config, strategy, timeout_secs=config.run.eval_timeout_secs,
                                      poll_secs=config.run.eval_poll_secs, source=source)
        for result in results:
            print(f"Eval results at step {result['global_step']}:", format_results(result))
        return results
    from tf_simclr.evaluation import supervised

    result = supervised.evaluate_checkpoint(config, model, strategy, source=source)
    print("Eval results (supervised head trained during the run):", format_results(result))
    return [result]


def _is_reference(path: str) -> bool:
    from tf_simclr.reference import files

    return files.is_reference(path)


def _reference_model(config: Config, strategy):
    """`(model, step)`: the flags' model holding a google-research/simclr --checkpoint's weights, and their step."""
    from tf_simclr.reference import weights as reference_weights

    reference = reference_weights.open_reference(config.train.checkpoint)
    with strategy.scope():
        model = reference_weights.build_loaded_model(reference, config)
    return model, reference.step


def _reference_to_evaluate(config: Config) -> bool:
    """--mode=eval scores a google-research/simclr --checkpoint once when model_dir has no checkpoint to follow."""
    from tf_simclr.storage import checkpoint as ckpt_lib

    t = config.train
    return bool(t.checkpoint) and not ckpt_lib.latest_checkpoint(t.model_dir) and _is_reference(t.checkpoint)


def format_results(results: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(results.items()))
