"""tf_simclr command line: SimCLR pretraining, fine-tuning and evaluation.

Accepts every flag of google-research/simclr `tf2/run.py` with its meaning and
default, so the reference's published commands run unchanged; recipes live in
`flags/*.cfg` (`python run.py --flagfile=flags/quickstart.cfg`). This is the only
module that reads flags: it turns them into a `tf_simclr.config.Config` and calls
the library.
"""

import logging as py_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS

# ---- The reference's flags (names, defaults and meanings kept) ------------------
flags.DEFINE_float("learning_rate", 0.3, "Initial learning rate per batch size of 256.")
flags.DEFINE_enum("learning_rate_scaling", "linear", ["linear", "sqrt"], "How to scale the learning rate as a function of batch size.")
flags.DEFINE_float("warmup_epochs", 10, "Number of epochs of warmup.")
flags.DEFINE_float("weight_decay", 1e-6, "Amount of weight decay to use.")
flags.DEFINE_float("batch_norm_decay", 0.9, "Batch norm decay parameter.")
flags.DEFINE_integer("train_batch_size", 512, "Batch size for training (global, over all replicas).")
flags.DEFINE_string("train_split", "train", "Split for training.")
flags.DEFINE_integer("train_epochs", 100, "Number of epochs to train for.")
flags.DEFINE_integer("train_steps", 0, "Number of steps to train for. If provided, overrides train_epochs.")
flags.DEFINE_integer("eval_steps", 0, "Number of steps to eval for. If not provided, evals over entire dataset.")
flags.DEFINE_integer("eval_batch_size", 256, "Batch size for eval.")
flags.DEFINE_integer("checkpoint_epochs", 1, "Number of epochs between checkpoints/summaries.")
flags.DEFINE_integer("checkpoint_steps", 0, "Number of steps between checkpoints/summaries. If provided, overrides checkpoint_epochs.")
flags.DEFINE_string("eval_split", "validation", "Split for evaluation.")
flags.DEFINE_string("dataset", "imagenet2012", "TFDS dataset name, or folder:/path/to/images for your own images.")
flags.DEFINE_bool("cache_dataset", False, "Whether to cache the entire dataset in memory (good for small datasets).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_then_eval", "export"], "Whether to perform training or evaluation (or export the newest checkpoint of --model_dir, or --checkpoint, as a TF-Hub module).")
flags.DEFINE_enum("train_mode", "pretrain", ["pretrain", "finetune"], "The train mode controls different objectives and trainable components.")
flags.DEFINE_bool("lineareval_while_pretraining", True, "Whether to finetune supervised head while pretraining.")
flags.DEFINE_string("checkpoint", None, "Loading from the given checkpoint for fine-tuning if a finetuning checkpoint does not already exist in model_dir.")
flags.DEFINE_bool("zero_init_logits_layer", False, "If True, zero initialize layers after avg_pool for supervised learning.")
flags.DEFINE_integer("fine_tune_after_block", -1, "The layers after which block that we will fine-tune. -1 means fine-tuning everything. 0 means fine-tuning after stem block. 4 means fine-tuning just the linear head.")
flags.DEFINE_string("master", None, "Address/name of the TensorFlow master to use (TPU).")
flags.DEFINE_string("model_dir", None, "Model directory for training. Defaults to runs/<dataset>_<train_mode>.")
flags.DEFINE_string("data_dir", None, "Directory where dataset is stored.")
flags.DEFINE_bool("use_tpu", True, "Whether to run on TPU. Without a TPU named by --tpu_name/--master, tf_simclr logs a warning and uses local devices.")
flags.DEFINE_string("tpu_name", None, "The Cloud TPU to use for training.")
flags.DEFINE_string("tpu_zone", None, "[Optional] GCE zone where the Cloud TPU is located in.")
flags.DEFINE_string("gcp_project", None, "[Optional] Project name for the Cloud TPU-enabled project.")
flags.DEFINE_enum("optimizer", "lars", ["momentum", "adam", "lars"], "Optimizer to use.")
flags.DEFINE_float("momentum", 0.9, "Momentum parameter.")
flags.DEFINE_string("eval_name", None, "Name for eval.")
flags.DEFINE_integer("keep_checkpoint_max", 5, "Maximum number of checkpoints to keep.")
flags.DEFINE_integer("keep_hub_module_max", 1, "Maximum number of Hub modules to keep.")
flags.DEFINE_float("temperature", 0.1, "Temperature parameter for contrastive loss.")
flags.DEFINE_boolean("hidden_norm", True, "Whether to L2-normalize the projections in the contrastive loss.")
flags.DEFINE_enum("proj_head_mode", "nonlinear", ["none", "linear", "nonlinear"], "How the head projection is done.")
flags.DEFINE_integer("proj_out_dim", 128, "Number of head projection dimension.")
flags.DEFINE_integer("num_proj_layers", 3, "Number of non-linear head layers.")
flags.DEFINE_integer("ft_proj_selector", 0, "Which layer of the projection head to use during fine-tuning. 0 means no projection head, and -1 means the final layer.")
flags.DEFINE_boolean("global_bn", True, "Whether to aggregate BN statistics across distributed cores.")
flags.DEFINE_float("width_multiplier", 1, "Multiplier to change width of network (fractions such as 0.125 give tiny encoders).")
flags.DEFINE_integer("resnet_depth", 50, "Depth of ResNet.")
flags.DEFINE_float("sk_ratio", 0.0, "If it is bigger than 0, it will enable SK. Recommendation: 0.0625.")
flags.DEFINE_float("se_ratio", 0.0, "If it is bigger than 0, it will enable SE.")
flags.DEFINE_integer("image_size", 224, "Input image size.")
flags.DEFINE_float("color_jitter_strength", 1.0, "The strength of color jittering.")
flags.DEFINE_boolean("use_blur", True, "Whether or not to use Gaussian blur for augmentation during pretraining.")
# TF1 flags that the reference README's commands still pass.
flags.DEFINE_string("variable_schema", "?!global_step", "TF1 flag (regex of variables to load from --checkpoint); accepted for compatibility, all encoder variables are loaded.")
flags.DEFINE_integer("train_summary_steps", 0, "Steps between training summaries (TF1 flag; 0 = at every checkpoint).")

# ---- tf_simclr's own flags ------------------------------------------------------
flags.DEFINE_integer("num_gpus", None, "Local GPUs to use with MirroredStrategy (default: all).")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps run per call into the compiled function (fewer Python round trips).")
flags.DEFINE_integer("seed", None, "Random seed for weights and augmentation (runs are still not bit-exact without op determinism).")
flags.DEFINE_bool("export_at_end", True, "Export a TF-Hub module when training ends (also after pure pretraining).")
flags.DEFINE_bool("export_every_checkpoint", False, "Also export a TF-Hub module at every checkpoint (--keep_hub_module_max are kept).")
flags.DEFINE_string("export_dir", None, "Where TF-Hub modules go, one sub-folder per step. Defaults to exported_models/<model_dir name>.")
flags.DEFINE_integer("knn_monitor_examples", 0, "If > 0, report weighted kNN accuracy (k=200, T=0.1) of the frozen encoder at every checkpoint, on this many --train_split and --eval_split images: a learning curve during pretraining.")
flags.DEFINE_bool("feature_eval", False, "After training, score the frozen encoder with a linear probe and kNN (k=200, T=0.1) on --train_split -> --eval_split, next to a randomly initialized encoder of the same shape.")
flags.DEFINE_float("train_label_fraction", 0.0, "Train on this class-balanced share of --train_split's labelled examples (0 = all; 0.01 and 0.1 are SimCLR's semi-supervised settings). The ids used are written to <model_dir>/subset_ids.txt.")
flags.DEFINE_string("train_subset_ids", None, "File of example ids (one per line, like the reference's imagenet_subsets/1percent.txt; file names, image paths relative to a folder dataset, or example indices) to train on instead of all of --train_split.")
flags.DEFINE_integer("subset_seed", 0, "Seed of the --train_label_fraction draw (same seed, same examples).")
flags.DEFINE_float("eval_timeout_secs", 3600, "--mode=eval: stop after this many seconds without a new checkpoint in --model_dir.")
flags.DEFINE_float("eval_poll_secs", 10, "--mode=eval: seconds between looks for new checkpoints.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"], "Compute precision: float32, or mixed bfloat16/float16 (variables, loss and softmax stay float32; float16 uses dynamic loss scaling).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_bool("deterministic", False, "Bit-exact runs: op determinism, augmentation drawn from --seed and the step, data order restored on resume (slower). Needs --seed.")
flags.DEFINE_bool("skip_nonfinite_steps", False, "Skip and count steps whose loss or gradients are NaN/Inf instead of stopping the run.")
flags.DEFINE_bool("strict", False, "Fail on corrupt, truncated or non-image files in a folder: dataset instead of skipping them with a warning.")
flags.DEFINE_enum("augment_on", "host", ["host", "device"], "Where pretraining augmentations run: host (tf.data, per image) or device (batched inside the compiled train step, on the accelerator; the host only decodes and batches uint8 images).")
flags.DEFINE_integer("feature_eval_examples", 0, "Examples of each split used by --feature_eval (0 = all).")

log = py_logging.getLogger("tf_simclr")


def config_from_flags():
    """Turns the parsed flags into a plain `Config` (the only place flags are read)."""
    from tf_simclr.config import Config, DataConfig, ModelConfig, TrainConfig

    f = FLAGS
    model_dir = f.model_dir or os.path.join("runs", f"{f.dataset.replace(':', '_').replace('/', '_')}_{f.train_mode}")
    return Config(
        model=ModelConfig(
            resnet_depth=f.resnet_depth, width_multiplier=f.width_multiplier, image_size=f.image_size,
            sk_ratio=f.sk_ratio, se_ratio=f.se_ratio, batch_norm_decay=f.batch_norm_decay, global_bn=f.global_bn,
            proj_head_mode=f.proj_head_mode, proj_out_dim=f.proj_out_dim, num_proj_layers=f.num_proj_layers,
            ft_proj_selector=f.ft_proj_selector,
        ),
        data=DataConfig(
            dataset=f.dataset, data_dir=f.data_dir, train_split=f.train_split, eval_split=f.eval_split,
            image_size=f.image_size, color_jitter_strength=f.color_jitter_strength, use_blur=f.use_blur,
            cache_dataset=f.cache_dataset, strict_images=f.strict, augment_on=f.augment_on,
        ),
        train=TrainConfig(
            model_dir=model_dir, train_mode=f.train_mode, train_batch_size=f.train_batch_size,
            train_epochs=f.train_epochs, train_steps=f.train_steps, eval_batch_size=f.eval_batch_size,
            eval_steps=f.eval_steps, learning_rate=f.learning_rate, learning_rate_scaling=f.learning_rate_scaling,
            warmup_epochs=f.warmup_epochs, weight_decay=f.weight_decay, optimizer=f.optimizer, momentum=f.momentum,
            temperature=f.temperature, hidden_norm=f.hidden_norm,
            lineareval_while_pretraining=f.lineareval_while_pretraining,
            fine_tune_after_block=f.fine_tune_after_block, zero_init_logits_layer=f.zero_init_logits_layer,
            checkpoint=f.checkpoint, checkpoint_epochs=f.checkpoint_epochs, checkpoint_steps=f.checkpoint_steps,
            keep_checkpoint_max=f.keep_checkpoint_max, summary_steps=f.train_summary_steps,
            keep_hub_module_max=f.keep_hub_module_max, export_at_end=f.export_at_end,
            knn_monitor_examples=f.knn_monitor_examples,
            export_every_checkpoint=f.export_every_checkpoint, export_dir=f.export_dir,
            steps_per_execution=f.steps_per_execution, seed=f.seed,
            train_label_fraction=f.train_label_fraction, train_subset_ids=f.train_subset_ids,
            subset_seed=f.subset_seed, precision=f.precision, jit_compile=f.jit_compile,
            deterministic=f.deterministic, skip_nonfinite_steps=f.skip_nonfinite_steps,
        ),
    )


def _check_splits(config):
    """Unknown dataset or split names fail here, in seconds, before any training."""
    from tf_simclr import data

    needed = [config.data.train_split] if FLAGS.mode in ("train", "train_then_eval") else []
    if FLAGS.mode in ("eval", "train_then_eval") or FLAGS.feature_eval or FLAGS.knn_monitor_examples:
        needed.append(config.data.eval_split)
    if FLAGS.feature_eval:
        needed.append(config.data.train_split)
    data.load_source(config.data.dataset, config.data.data_dir, prepare=False, splits=sorted(set(needed)))


def _format(results: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(results.items()))


def _train_or_exit(config, strategy):
    """Trains; turns the run's expected endings (preemption, NaN, a dead peer worker) into exits."""
    from tf_simclr import callbacks, distribute, preemption, train

    try:
        return train.train(config, strategy)
    except preemption.Preempted as e:
        log.warning("%s", e)
        sys.exit(preemption.PREEMPTED_EXIT_STATUS)
    except callbacks.NonFiniteLossError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if distribute.is_multi_worker(strategy) and distribute.is_peer_failure(e):
            _rejoin(e)
        raise


def _rejoin(error):
    """Restarts this worker process after another worker died, so it rejoins the cluster.

    Collective ops cannot recover inside a process, so the worker re-executes its own
    command line; it then waits for the restarted peer and every worker resumes from
    the chief's newest checkpoint. Bounded by TF_SIMCLR_MAX_REJOINS (default 20).
    """
    done = int(os.environ.get("TF_SIMCLR_REJOINS", "0"))
    limit = int(os.environ.get("TF_SIMCLR_MAX_REJOINS", "20"))
    if done >= limit:
        print(f"run.py: error: a peer worker failed and this worker already rejoined {done} times "
              f"(TF_SIMCLR_MAX_REJOINS={limit}): {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    log.warning("A peer worker failed (%s); restarting this worker to rejoin from the newest checkpoint (%d/%d).",
                type(error).__name__, done + 1, limit)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ["TF_SIMCLR_REJOINS"] = str(done + 1)
    os.execv(sys.executable, [sys.executable] + sys.argv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags are written --name=value).")
    py_logging.getLogger("tf_simclr").setLevel(py_logging.INFO)
    logging.set_verbosity(logging.INFO)
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)  # Per-step collective chatter.

    from tf_simclr import distribute, train, validate

    config = config_from_flags()
    try:
        validate.check_config(config)
        _check_splits(config)
        strategy = distribute.create_strategy(
            use_tpu=FLAGS.use_tpu, tpu_name=FLAGS.tpu_name, tpu_zone=FLAGS.tpu_zone, gcp_project=FLAGS.gcp_project,
            master=FLAGS.master, num_gpus=FLAGS.num_gpus,
        )
        validate.check_before_work(
            config, mode=FLAGS.mode, num_replicas=strategy.num_replicas_in_sync, feature_eval=FLAGS.feature_eval
        )
    except ValueError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    log.info("Model dir: %s", config.train.model_dir)
    if FLAGS.mode == "export":
        from tf_simclr import checkpoint as ckpt_lib
        from tf_simclr import export as export_lib

        has_own = ckpt_lib.latest_checkpoint(config.train.model_dir)
        source = config.train.model_dir if has_own else FLAGS.checkpoint
        if not source:
            print(f"run.py: error: --mode=export found no checkpoint in --model_dir={config.train.model_dir}; "
                  "pass --checkpoint=<model_dir or ckpt folder>.", file=sys.stderr)
            sys.exit(2)
        print("Exported to", export_lib.export_from_checkpoint(source, export_dir=FLAGS.export_dir, keep_max=FLAGS.keep_hub_module_max))
        return
    model = None
    if FLAGS.mode in ("train", "train_then_eval"):
        model = _train_or_exit(config, strategy)
    if FLAGS.mode in ("eval", "train_then_eval"):
        if config.train.train_mode == "pretrain" and not config.train.lineareval_while_pretraining:
            log.info("Skipping eval: pretraining without --lineareval_while_pretraining has no supervised head.")
        elif FLAGS.mode == "eval":
            from tf_simclr import eval_loop

            # Like the reference: follow the training run, scoring each checkpoint until its last one.
            for results in eval_loop.eval_loop(
                config, strategy, timeout_secs=FLAGS.eval_timeout_secs, poll_secs=FLAGS.eval_poll_secs
            ):
                print(f"Eval results at step {results['global_step']}:", _format(results))
        else:
            results = train.evaluate_checkpoint(config, model, strategy)
            print("Eval results (supervised head trained during the run):", _format(results))
    if FLAGS.feature_eval:
        from tf_simclr import feature_report

        if model is None:
            model = train.load_trained_model(config, strategy)
        report = feature_report.frozen_feature_report(config, model, max_examples=FLAGS.feature_eval_examples or None)
        print("Frozen-feature evaluation (train split -> eval split):")
        print(feature_report.format_report(report))


if __name__ == "__main__":
    app.run(main)
