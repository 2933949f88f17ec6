"""Training, top to bottom: input pipeline, model, optimizer, restore, fit, export.

One function, `train(config)`, serves pretraining, linear evaluation and
fine-tuning; the modes differ in the dataset's element format, which head
trains and which variables are frozen (see `models.factory`).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Optional, Sequence

import keras

from tf_simclr.config import Config
from tf_simclr.data import views as views_lib
from tf_simclr.distribute import datasets, jax_parallel
from tf_simclr.models import factory
from tf_simclr.models.simclr import SimCLRModel
from tf_simclr.optim import optimizers as optimizers_lib
from tf_simclr.optim import precision as precision_lib
from tf_simclr.optim import schedules
from tf_simclr.optim.weight_decay import plan_weight_decay
from tf_simclr.storage import atomic, fs
from tf_simclr.training import callbacks as callbacks_lib
from tf_simclr.training import preemption
from tf_simclr.training import restore as restore_lib
from tf_simclr.optim.plan import Plan, make_plan

log = logging.getLogger("tf_simclr")

FLAGS_FILE = "flags.json"  # The reference's name for the run's configuration.


def compile_model(config: Config, num_classes: Optional[int], plan: Plan, teacher=None) -> SimCLRModel:
    """The run's model with its optimizer, compiled (call inside `strategy.scope()`).

    `teacher` (distillation): the frozen `images -> logits` network the student learns from.
    """
    t = config.train
    model = factory.model_from_config(config, num_classes, device_augment=config.data.augment_on == "device",
                                      teacher=teacher)
    decay = plan_weight_decay(model, t.weight_decay, optimizers_lib.uses_optimizer_weight_decay(t.optimizer))
    model.set_weight_decay(decay)
    learning_rate = schedules.WarmUpAndCosineDecay(plan.peak_learning_rate, plan.warmup_steps, plan.total_steps)
    optimizer = optimizers_lib.build_optimizer(
        t.optimizer, learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
        excluded_variables=decay.optimizer_excluded,
    )
    optimizer = precision_lib.wrap_optimizer(optimizer, t.precision)
    # Under JAX the step is always jitted (eager JAX dispatches op by op); --jit_compile is XLA for TensorFlow.
    jit_compile = True if jax_parallel.is_jax() else t.jit_compile
    model.compile(optimizer=optimizer, steps_per_execution=t.steps_per_execution, jit_compile=jit_compile)
    optimizer.build(model.trainable_variables)
    return model


def train(config: Config, strategy=None, callbacks: Sequence[keras.callbacks.Callback] = (), *,
          source=None) -> SimCLRModel:
    """Trains (pretrains or fine-tunes) a model as `config` says, resuming if it can.

    Args:
        config: The run's configuration.
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
        callbacks: Extra Keras callbacks (run after checkpointing and summaries).
        source: The opened training dataset (`data.load_source`); opened here if None.

    Returns:
        The trained model (its weights are also in the last checkpoint in model_dir).
    """
    from tf_simclr.data import sources, subsets

    t = config.train
    if jax_parallel.is_jax():  # One process; JAX shards each batch over the local devices.
        strategy, chief = jax_parallel.prepare_jax_training(strategy), True
    else:
        import tensorflow as tf

        from tf_simclr.distribute import strategy as strategy_lib

        strategy = strategy or tf.distribute.get_strategy()
        chief = strategy_lib.is_chief(strategy)
    if t.deterministic:
        views_lib.check_stream_args(True, t.seed, 0)
        if jax_parallel.has_tensorflow():  # TensorFlow's ops and tf.data (JAX's steps are XLA's to make so).
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
    if t.seed is not None:
        keras.utils.set_random_seed(t.seed)
    precision_lib.set_precision(t.precision)

    # ---- Input size and plan ----------------------------------------------------
    if source is None:
        source = sources.load_source(config.data.dataset, config.data.data_dir, splits=[config.data.train_split],
                                     strict_images=config.data.strict_images)
    jax_parallel.check_without_tensorflow(config, source, whole_job=False)  # Named here, not inside an import.
    source = subsets.labelled_subset(config, source)
    plan = make_plan(config, source.num_examples(config.data.train_split))
    log.info(
        "Training %s on %s[%s]: %d examples, %d steps (%d per epoch), batch %d over %d replica(s), peak lr %.4g%s",
        t.train_mode, source.name, config.data.train_split, plan.num_train_examples, plan.total_steps,
        plan.epoch_steps, t.train_batch_size,
        jax_parallel.num_devices() if jax_parallel.is_jax() else strategy.num_replicas_in_sync, plan.peak_learning_rate,
        f", precision {t.precision}" + (", XLA" if t.jit_compile else "") + (", deterministic" if t.deterministic else ""),
    )

    # ---- Model and restore ------------------------------------------------------
    if chief:
        fs.makedirs(t.model_dir)
    num_classes, teacher = source.num_classes or None, None
    with strategy.scope():
        if t.train_mode == "distill":
            from tf_simclr.models import teacher as teacher_lib

            teacher, teacher_info = teacher_lib.load_teacher(t.teacher)
            num_classes = teacher_info.num_classes  # The student learns the teacher's classes.
        model = compile_model(config, num_classes, plan, teacher)
        start_step = restore_lib.restore(model, config, chief=chief)
    if chief:
        write_flags(config, t.model_dir)
        if isinstance(source, (subsets.SubsetSource, subsets.MaskedLabelSource)):
            log.info("Recorded the %d training ids in %s", len(source.ids), subsets.record_subset(t.model_dir, source.ids))
    # The data stream resumes where the checkpoint left it (exactly so with --deterministic).
    dataset = datasets.distributed_dataset(config, source, strategy, config.data.train_split,
                                           views_lib.training_views(config), t.train_batch_size,
                                           skip_batches=start_step)

    # ---- Fit --------------------------------------------------------------------
    period = plan.checkpoint_every
    meta = {"config": config.to_dict(), "dataset": source.name, "num_classes": num_classes or 0}
    exporter = _Exporter(config, model, meta)
    verbose = t.verbose if (t.verbose != 1 or sys.stdout.isatty()) else 2
    with preemption.catch_sigterm() as sigterm:
        stopper = callbacks_lib.CheckpointAndStop(
            t.model_dir, period, plan.total_steps, t.keep_checkpoint_max, meta=meta,
            on_save=exporter.at_checkpoint if t.export_every_checkpoint else None, write=chief, sigterm=sigterm,
        )
        cbs = [stopper]
        if chief:  # Other workers compute the same steps and write nothing.
            cbs += callbacks_lib.run_reports(config, source, plan)
        cbs += list(callbacks)
        try:  # `stopper` writes checkpoints in the background and waits for them at the end of fit.
            model.fit(
                dataset,
                epochs=math.ceil(plan.total_steps / period),
                initial_epoch=start_step // period,
                steps_per_epoch=period,
                callbacks=cbs,
                verbose=verbose,
                shuffle=False,  # The input pipeline shuffles.
            )
        except BaseException:
            stopper.flush(raise_errors=False)  # A pending checkpoint still commits; fit's error is raised.
            raise
        stopper.flush()
    if stopper.nonfinite_step is not None:
        hint = f"{t.steps_per_execution} steps of --steps_per_execution" if t.steps_per_execution > 1 else ""
        raise callbacks_lib.NonFiniteLossError(stopper.nonfinite_step, stopper.last_path, hint)
    if stopper.preempted_step is not None:
        raise preemption.Preempted(stopper.preempted_step, stopper.last_path)

    # ---- Export (the reference never exports after pure pretraining) ---------------
    if chief and t.export_at_end:
        exporter.at_end(int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
    return model


class _Exporter:
    """TF-Hub exports of a training run: at checkpoints (`--export_every_checkpoint`) and at the end."""

    def __init__(self, config: Config, model, meta: dict):
        from tf_simclr.export import exports_dir

        self.config, self.model, self.meta = config, model, meta
        self.base = config.train.export_dir or exports_dir.default_export_dir(config.train.model_dir)

    def at_checkpoint(self, path: str, step: int) -> None:
        self.export(step)

    def at_end(self, step: int) -> None:
        from tf_simclr.export import exports_dir

        if step not in exports_dir.exported_steps(self.base):
            self.export(step)

    def export(self, step: int) -> None:
        t = self.config.train
        if jax_parallel.is_jax() and not jax_parallel.has_tensorflow():
            log.warning("No TF-Hub export of step %d: exporting needs TensorFlow. On a machine with it, run "
                        "`tf_simclr --mode=export --model_dir=%s` (the checkpoints are backend-neutral).", step,
                        t.model_dir)
            return
        if jax_parallel.is_jax():  # SavedModel export needs the TensorFlow backend: a subprocess has it.
            from tf_simclr.export import subprocess_export

            path = subprocess_export.export_checkpoint_in_subprocess(
                fs.join(t.model_dir, f"ckpt-{int(step)}"), self.base, keep_max=t.keep_hub_module_max)
        else:
            from tf_simclr.export import hub_module

            path = hub_module.export_to_hub_dir(self.model, self.base, step, keep_max=t.keep_hub_module_max,
                                                meta=self.meta)
        if path and jax_parallel.is_jax():  # The subprocess's own log line stays in the subprocess.
            log.info("Exported TF-Hub module %s", path)


def write_flags(config: Config, model_dir: str) -> str:
    """Writes flags.json (the reference's name) atomically, first removing temporaries a killed write left."""
    import re

    atomic.recover(model_dir, FLAGS_FILE, re.escape(FLAGS_FILE))  # `.tmp-flags.json-<random>` of a crash.
    return atomic.write_json(fs.join(model_dir, FLAGS_FILE), config.to_dict())
