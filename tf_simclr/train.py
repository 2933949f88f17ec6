"""Training, top to bottom: input pipeline, model, optimizer, restore, fit.

One function, `train(config)`, serves pretraining, linear evaluation and
fine-tuning; the modes differ in the dataset's element format, which head
trains and which variables are frozen (see `SimCLRModel`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from typing import Optional, Sequence

import keras

from tf_simclr import callbacks as callbacks_lib
from tf_simclr import checkpoint as ckpt_lib
from tf_simclr import data as data_lib
from tf_simclr import export as export_lib
from tf_simclr import jax_support
from tf_simclr import model as model_lib
from tf_simclr import optimizers as optimizers_lib
from tf_simclr import preemption
from tf_simclr import resnet as resnet_lib
from tf_simclr import schedule as schedule_lib
from tf_simclr import subsets as subsets_lib
from tf_simclr.config import Config

log = logging.getLogger("tf_simclr")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts and the learning rate derived from the config and the dataset size."""

    num_train_examples: int
    epoch_steps: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int
    summary_every: int
    peak_learning_rate: float


def make_plan(config: Config, num_train_examples: int) -> Plan:
    """Derives steps and the scaled learning rate the way the reference does."""
    t = config.train
    epoch_steps = max(1, int(round(num_train_examples / t.train_batch_size)))
    total = schedule_lib.total_train_steps(num_train_examples, t.train_batch_size, t.train_epochs, t.train_steps)
    every = t.checkpoint_steps or t.checkpoint_epochs * epoch_steps
    warmup = schedule_lib.warmup_steps_for(num_train_examples, t.train_batch_size, t.warmup_epochs)
    if warmup > total:
        log.warning(
            "--warmup_epochs=%g is %d steps, more than the %d training steps: warming up over all of them.",
            t.warmup_epochs, warmup, total,
        )
        warmup = total
    spe = t.steps_per_execution
    checkpoint_every = max(1, min(every, total))
    if spe > 1 and (total % spe or checkpoint_every % spe):
        raise ValueError(
            f"--steps_per_execution={spe} must divide both the training steps ({total}) and the steps between "
            f"checkpoints ({checkpoint_every}), or runs would overshoot them; set --train_steps and "
            f"--checkpoint_steps to multiples of {spe}, or lower --steps_per_execution."
        )
    return Plan(
        num_train_examples=num_train_examples,
        epoch_steps=epoch_steps,
        total_steps=total,
        warmup_steps=warmup,
        checkpoint_every=checkpoint_every,
        summary_every=t.summary_steps or max(1, min(every, total)),
        peak_learning_rate=schedule_lib.scale_learning_rate(t.learning_rate, t.train_batch_size, t.learning_rate_scaling),
    )


def create_model(config: Config, num_classes: Optional[int], plan: Plan):
    """Builds the model and its optimizer and compiles them (call inside `strategy.scope()`)."""
    t = config.train
    with_head = t.train_mode == "finetune" or t.lineareval_while_pretraining
    augment_layer = None
    if config.data.augment_on == "device" and t.train_mode == "pretrain":
        from tf_simclr import device_augment

        d = config.data
        augment_layer = device_augment.DeviceAugment(
            d.image_size, color_jitter_strength=d.color_jitter_strength, blur=d.use_blur, seed=t.seed,
            name="device_augment",
        )
    model = model_lib.build_model(
        config.model,
        device_augment=augment_layer,
        num_classes=num_classes if with_head else None,
        train_mode=t.train_mode,
        temperature=t.temperature,
        hidden_norm=t.hidden_norm,
        zero_init_logits_layer=t.zero_init_logits_layer,
    )
    if t.train_mode == "finetune":
        freeze_up_to_block(model, t.fine_tune_after_block)
        freeze_unused_projection_layers(model, config.model.ft_proj_selector)
    elif t.fine_tune_after_block > -1:
        raise ValueError(
            f"--fine_tune_after_block={t.fine_tune_after_block} freezes layers, which pretraining does not "
            "support: use --fine_tune_after_block=-1 with --train_mode=pretrain."
        )
    in_optimizer = optimizers_lib.uses_optimizer_weight_decay(t.optimizer)
    excluded = model.configure_weight_decay(t.weight_decay, optimizer_applies_decay=in_optimizer)
    learning_rate = schedule_lib.WarmUpAndCosineDecay(plan.peak_learning_rate, plan.warmup_steps, plan.total_steps)
    optimizer = optimizers_lib.build_optimizer(
        t.optimizer, learning_rate, momentum=t.momentum, weight_decay=t.weight_decay, excluded_variables=excluded
    )
    from tf_simclr import precision as precision_lib

    optimizer = precision_lib.wrap_optimizer(optimizer, t.precision)
    model.skip_nonfinite = t.skip_nonfinite_steps
    # Under JAX the step is always jitted (eager JAX dispatches op by op); --jit_compile is XLA for TensorFlow.
    jit_compile = True if jax_support.is_jax() else t.jit_compile
    model.compile(optimizer=optimizer, steps_per_execution=t.steps_per_execution, jit_compile=jit_compile)
    optimizer.build(model.trainable_variables)
    return model


def freeze_up_to_block(model: model_lib.SimCLRModel, fine_tune_after_block: int) -> None:
    """Freezes the stem (block 0) and block groups 1..k, batch-norm statistics included.

    -1 trains everything; 4 freezes the whole encoder (linear evaluation).
    """
    if not -1 <= fine_tune_after_block <= 4:
        raise ValueError(f"--fine_tune_after_block must be in [-1, 4]. Received: {fine_tune_after_block}")
    for stage in range(fine_tune_after_block + 1):
        for layer in resnet_lib.stage_layers(model.encoder, stage):
            layer.trainable = False


def freeze_unused_projection_layers(model: model_lib.SimCLRModel, ft_proj_selector: int) -> None:
    """Freezes the projection-head layers after the one the supervised head reads (`--ft_proj_selector`).

    They get no gradient when fine-tuning, and their batch-norm statistics must not
    drift either, so they stay exactly as pretrained (0 freezes the whole head).
    """
    head = model.projection_head
    pairs = list(zip(getattr(head, "dense_layers", []), getattr(head, "bn_layers", [])))
    first_unused = ft_proj_selector % (len(pairs) + 1)
    for dense, bn in pairs[first_unused:]:
        dense.trainable = False
        bn.trainable = False


def restore(model, config: Config) -> int:
    """Resumes from the newest checkpoint in model_dir, else loads `--checkpoint` weights.

    Returns:
        The global step training resumes from.
    """
    t = config.train
    from tf_simclr import distribute as distribute_lib

    if distribute_lib.is_chief():
        ckpt_lib.recover_interrupted(t.model_dir)  # A checkpoint moved aside by a crash counts too.
    latest = ckpt_lib.latest_checkpoint(t.model_dir)
    if latest:
        meta = ckpt_lib.restore_checkpoint(latest, model, model.optimizer)
        log.info("Resumed from %s (step %d)", latest, meta["step"])
        return int(meta["step"])
    if t.checkpoint:
        if not ckpt_lib.checkpoint_steps(t.checkpoint) and export_lib.is_export(t.checkpoint):
            export_lib.restore_from_export(model, t.checkpoint)  # A TF-Hub module written by tf_simclr.
        else:
            ckpt_lib.restore_checkpoint(t.checkpoint, model, None, exclude_parts=("supervised_head",))
        log.info("Initialized the model from %s", t.checkpoint)
    elif t.train_mode == "finetune":
        raise ValueError("--train_mode=finetune needs --checkpoint (a pretraining model_dir or checkpoint folder).")
    return 0


def _dataset(config: Config, source, strategy, split: str, is_training: bool, global_batch: int, skip_batches: int = 0):
    d = config.data
    mode = config.train.train_mode if is_training else "eval"
    deterministic = is_training and config.train.deterministic
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(input_context):
        return data_lib.build_dataset(
            source,
            split,
            batch_size=input_context.get_per_replica_batch_size(global_batch),
            is_training=is_training,
            mode=mode,
            image_size=d.image_size,
            color_jitter_strength=d.color_jitter_strength,
            use_blur=d.use_blur,
            cache=d.cache_dataset,
            input_context=input_context,
            seed=config.train.seed,
            augment_on=d.augment_on if mode == "pretrain" else "host",
            deterministic=deterministic,
            # Each step takes one per-replica batch per replica, spread over the input pipelines.
            skip_batches=skip_batches * replicas // input_context.num_input_pipelines,
        )

    flag = "--train_batch_size" if is_training else "--eval_batch_size"
    if jax_support.is_jax():  # One pipeline of global batches; keras.distribution shards them.
        return jax_support.global_batch_dataset(dataset_fn, global_batch, flag=flag)
    return data_lib.distribute_dataset(strategy, dataset_fn, global_batch, flag=flag)


def train(config: Config, strategy=None, callbacks: Sequence[keras.callbacks.Callback] = ()) -> model_lib.SimCLRModel:
    """Trains (pretrains or fine-tunes) a model as `config` says, resuming if it can.

    Args:
        config: The run's configuration.
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
        callbacks: Extra Keras callbacks (run after checkpointing and summaries).

    Returns:
        The trained model (its weights are also in the last checkpoint in model_dir).
    """
    import tensorflow as tf

    from tf_simclr import distribute as distribute_lib

    if jax_support.is_jax():
        strategy = jax_support.prepare_jax_training(strategy)
    strategy = strategy or tf.distribute.get_strategy()
    t = config.train
    chief = distribute_lib.is_chief(strategy)
    if t.deterministic:
        if t.seed is None:
            raise ValueError("--deterministic needs --seed (the weights, augmentations and data order derive from it).")
        tf.config.experimental.enable_op_determinism()
    if t.seed is not None:
        keras.utils.set_random_seed(t.seed)
    _set_precision(t.precision)

    # ---- Input size and plan ----------------------------------------------------
    source = data_lib.load_source(config.data.dataset, config.data.data_dir, splits=[config.data.train_split],
                                  strict_images=config.data.strict_images)
    source = labelled_subset(config, source)
    plan = make_plan(config, source.num_examples(config.data.train_split))
    log.info(
        "Training %s on %s[%s]: %d examples, %d steps (%d per epoch), batch %d over %d replica(s), peak lr %.4g%s",
        t.train_mode, source.name, config.data.train_split, plan.num_train_examples, plan.total_steps,
        plan.epoch_steps, t.train_batch_size,
        jax_support.num_devices() if jax_support.is_jax() else strategy.num_replicas_in_sync, plan.peak_learning_rate,
        f", precision {t.precision}" + (", XLA" if t.jit_compile else "") + (", deterministic" if t.deterministic else ""),
    )

    # ---- Model and restore ------------------------------------------------------
    if chief:
        os.makedirs(t.model_dir, exist_ok=True)
    with strategy.scope():
        model = create_model(config, source.num_classes or None, plan)
        start_step = restore(model, config)
    if chief:
        write_flags(config, t.model_dir)
        if isinstance(source, subsets_lib.SubsetSource):
            log.info("Recorded the %d training ids in %s", len(source.ids), subsets_lib.record_subset(t.model_dir, source.ids))
    # The data stream resumes where the checkpoint left it (exactly so with --deterministic).
    dataset = _dataset(config, source, strategy, config.data.train_split, True, t.train_batch_size, skip_batches=start_step)

    # ---- Fit --------------------------------------------------------------------
    period = plan.checkpoint_every
    meta = {"config": config.to_dict(), "dataset": source.name, "num_classes": source.num_classes}
    export_base = t.export_dir or export_lib.default_export_dir(t.model_dir)

    def export(step):
        if jax_support.is_jax():  # SavedModel export needs the TensorFlow backend: a subprocess has it.
            checkpoint = os.path.join(t.model_dir, f"ckpt-{int(step)}")
            path = jax_support.export_checkpoint_in_subprocess(checkpoint, export_base, keep_max=t.keep_hub_module_max)
            if path:
                log.info("Exported TF-Hub module %s", path)
            return
        path = export_lib.export_to_hub_dir(model, export_base, step, keep_max=t.keep_hub_module_max, meta=meta)
        log.info("Exported TF-Hub module %s", path)

    on_save = (lambda path, step: export(step)) if t.export_every_checkpoint else None
    verbose = t.verbose if (t.verbose != 1 or sys.stdout.isatty()) else 2
    with preemption.catch_sigterm() as sigterm:
        stopper = callbacks_lib.CheckpointAndStop(
            t.model_dir, period, plan.total_steps, t.keep_checkpoint_max, meta=meta, on_save=on_save, write=chief,
            sigterm=sigterm,
        )
        cbs = [stopper]
        if chief:  # Other workers compute the same steps and write nothing.
            cbs.append(callbacks_lib.Summaries(os.path.join(t.model_dir, "train"), plan.summary_every, _sample_views(config, source)))
            cbs += _knn_monitor(config, source)
        cbs += list(callbacks)
        model.fit(
            dataset,
            epochs=math.ceil(plan.total_steps / period),
            initial_epoch=start_step // period,
            steps_per_epoch=period,
            callbacks=cbs,
            verbose=verbose,
            shuffle=False,  # The tf.data pipeline shuffles.
        )
    if stopper.nonfinite_step is not None:
        hint = f"{t.steps_per_execution} steps of --steps_per_execution" if t.steps_per_execution > 1 else ""
        raise callbacks_lib.NonFiniteLossError(stopper.nonfinite_step, stopper.last_path, hint)
    if stopper.preempted_step is not None:
        raise preemption.Preempted(stopper.preempted_step, stopper.last_path)
    # ---- Export (the reference never exports after pure pretraining) ---------------
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if chief and t.export_at_end and step not in export_lib.exported_steps(export_base):
        export(step)
    return model


def _set_precision(name: str) -> None:
    """Sets Keras's global dtype policy before the model is built (see `precision`)."""
    from tf_simclr import precision as precision_lib

    precision_lib.set_precision(name)


def labelled_subset(config: Config, source):
    """The training split restricted to `--train_subset_ids` or a class-balanced `--train_label_fraction`.

    SimCLR's semi-supervised results fine-tune on 1% or 10% of the labels; a
    fraction draw is stratified per class and fixed by `--subset_seed`, so two
    runs with the same seed see the same examples.

    Returns:
        `source` itself when neither flag is set, else a `subsets.SubsetSource`.
    """
    t = config.train
    if not 0 <= t.train_label_fraction <= 1:
        raise ValueError(
            f"--train_label_fraction must be in [0, 1] (0 = all labels, 0.01 = 1%). Received: {t.train_label_fraction}"
        )
    if t.train_subset_ids and t.train_label_fraction:
        raise ValueError(
            f"Pass --train_subset_ids or --train_label_fraction, not both. Received: "
            f"train_subset_ids={t.train_subset_ids!r}, train_label_fraction={t.train_label_fraction}"
        )
    split = config.data.train_split
    if t.train_subset_ids:
        return subsets_lib.subset_source(source, split, t.train_subset_ids)
    if t.train_label_fraction and t.train_label_fraction < 1:
        return subsets_lib.subset_source(source, split, fraction=t.train_label_fraction, seed=t.subset_seed)
    return source


def _knn_monitor(config: Config, source) -> list:
    """A `KnnMonitor` on `knn_monitor_examples` train and eval images, when asked for and labels exist."""
    n = config.train.knn_monitor_examples
    if not n or not source.num_classes:
        return []
    d = config.data

    def subset(split):
        ds = data_lib.build_dataset(source, split, batch_size=250, is_training=False, mode="eval", image_size=d.image_size)
        return ds.unbatch().filter(lambda image, label: label >= 0).take(n).batch(250).cache()

    return [callbacks_lib.KnnMonitor(subset(d.train_split), subset(d.eval_split), source.num_classes,
                                     log_dir=os.path.join(config.train.model_dir, "eval"))]


def _sample_views(config: Config, source):
    """A few augmented training examples for the image summary (pretraining only)."""
    if config.train.train_mode != "pretrain":
        return None
    d = config.data
    ds = data_lib.build_dataset(
        source, d.train_split, batch_size=4, is_training=True, mode="pretrain", image_size=d.image_size,
        color_jitter_strength=d.color_jitter_strength, use_blur=d.use_blur, shuffle_buffer=16,
    )
    images, _ = next(iter(ds))
    return images.numpy()


def write_flags(config: Config, model_dir: str) -> None:
    """Writes flags.json (the reference's name) atomically."""
    path = os.path.join(model_dir, "flags.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config.to_dict(), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def load_trained_model(config: Config, strategy=None, checkpoint: Optional[str] = None) -> model_lib.SimCLRModel:
    """Builds the run's model and loads its newest checkpoint (or `checkpoint`), without training."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    source = data_lib.load_source(config.data.dataset, config.data.data_dir, prepare=False)
    with strategy.scope():
        plan = make_plan(config, max(1, source.num_examples(config.data.train_split)))
        model = create_model(config, source.num_classes or None, plan)
        ckpt_lib.restore_checkpoint(checkpoint or config.train.model_dir, model, None)
    return model


def evaluate_checkpoint(config: Config, model=None, strategy=None, checkpoint: Optional[str] = None) -> dict:
    """Top-1/top-5 accuracy and loss of the supervised head on the eval split.

    Writes `result.json` and `result_<step>.json` to model_dir, as the reference.
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    t = config.train
    source = data_lib.load_source(config.data.dataset, config.data.data_dir, splits=[config.data.eval_split])
    with strategy.scope():
        if model is None:
            plan = make_plan(config, source.num_examples(config.data.train_split))
            model = create_model(config, source.num_classes or None, plan)
        path = ckpt_lib.resolve_checkpoint(checkpoint or t.model_dir)
        step = int(ckpt_lib.restore_checkpoint(path, model, None)["step"])
    dataset = _dataset(config, source, strategy, config.data.eval_split, False, t.eval_batch_size)
    results = model.evaluate(dataset, steps=t.eval_steps or None, return_dict=True, verbose=0)
    results = {k: float(v) for k, v in results.items()}
    results["global_step"] = step
    for name in ("result.json", f"result_{step}.json"):
        tmp = os.path.join(t.model_dir, name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(t.model_dir, name))
    log.info("Eval at step %d: %s", step, results)
    return results
