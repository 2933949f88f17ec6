"""Plain, frozen configuration: what the command line parses flags into, and what Python users build.

Each field is declared once, with its flag name, default and help (`option`);
`tf_simclr.cli.flags` generates the absl flags from these declarations, so a
flag and a field can never drift apart. Names, defaults and meanings of the
reference's flags (google-research/simclr `tf2/run.py`) are kept; fields marked
`ours=True` are tf_simclr additions.

    config = Config(model=ModelConfig(resnet_depth=18), train=TrainConfig(train_steps=100))
    tf_simclr.run(config)            # What `python run.py --resnet_depth=18 --train_steps=100` does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

# Modes of a whole job (the reference's --mode), and what each one does.
MODES = ("train", "eval", "train_then_eval", "export")
TRAIN_MODES = ("pretrain", "finetune", "distill")


def option(default: Any, help: str, *, flag: Optional[str] = None, choices: Optional[tuple] = None,
           ours: bool = False) -> Any:
    """A config field that is also a command-line flag.

    Args:
        default: The default (the reference's, for its flags).
        help: The flag's help text.
        flag: The flag's name when it differs from the field's (kept for the
            reference's names, e.g. `--strict` for `strict_images`).
        choices: Allowed values; the flag is then an enum.
        ours: A tf_simclr addition, not a flag of the reference.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "ours": ours})


def flag_name(field: dataclasses.Field) -> str:
    """The command-line name of a config field."""
    return field.metadata.get("flag") or field.name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoder and heads. `image_size <= 32` selects ResNet's CIFAR stem, as the reference."""

    backbone: str = option("resnet", "Encoder architecture, by name in tf_simclr.models.BACKBONES (resnet, or one "
                           "registered with tf_simclr.register_backbone), or module:attribute to import a build "
                           "function or Backbone (e.g. my_encoders:mobilenet).", ours=True)
    resnet_depth: int = option(50, "Depth of ResNet.")
    width_multiplier: float = option(1.0, "Multiplier to change width of network (fractions such as 0.125 give "
                                     "tiny encoders).")
    image_size: int = option(224, "Input image size.")
    cifar_stem_stride: int = option(1, "Stride of the CIFAR stem's 3x3 conv (--image_size <= 32): 1 as the "
                                    "reference, or 2, which halves the resolution the block groups see (a 28-px "
                                    "image then costs about what a 14-px one does, and the stem still sees every "
                                    "pixel).", ours=True)
    sk_ratio: float = option(0.0, "If it is bigger than 0, it will enable SK. Recommendation: 0.0625.")
    se_ratio: float = option(0.0, "If it is bigger than 0, it will enable SE.")
    batch_norm_decay: float = option(0.9, "Batch norm decay parameter.")
    global_bn: bool = option(True, "Whether to aggregate BN statistics across distributed cores.")
    proj_head_mode: str = option("nonlinear", "How the head projection is done.",
                                 choices=("none", "linear", "nonlinear"))
    proj_out_dim: int = option(128, "Number of head projection dimension.")
    num_proj_layers: int = option(3, "Number of non-linear head layers.")
    ft_proj_selector: int = option(0, "Which layer of the projection head to use during fine-tuning. 0 means no "
                                   "projection head, and -1 means the final layer.")

    @property
    def cifar_stem(self) -> bool:
        return self.image_size <= 32


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are augmented (see `tf_simclr.augment.spec`)."""

    dataset: str = option("imagenet2012", "TFDS dataset name, or folder:/path/to/images for your own images.")
    data_dir: Optional[str] = option(None, "Directory where dataset is stored.")
    train_split: str = option("train", "Split for training.")
    eval_split: str = option("validation", "Split for evaluation.")
    color_jitter_strength: float = option(1.0, "The strength of color jittering (0 turns colour distortion off, "
                                          "grayscale included, as the reference).")
    use_blur: bool = option(True, "Whether or not to use Gaussian blur for augmentation during pretraining.")
    min_crop_area: float = option(0.08, "Smallest random crop as a share of the image area (the reference's "
                                  "0.08; crops below 0.1 are never drawn, as there).", ours=True)
    cache_dataset: bool = option(False, "Whether to cache the entire dataset in memory (good for small datasets).")
    strict_images: bool = option(False, "Fail on corrupt, truncated or non-image files in a folder: dataset instead "
                                 "of skipping them with a warning.", flag="strict", ours=True)
    augment_on: str = option("host", "Where pretraining augmentations run: host (tf.data, per image) or device "
                             "(batched inside the compiled train step, on the accelerator; the host only decodes and "
                             "batches uint8 images).", choices=("host", "device"), ours=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Objective, optimizer, schedule and bookkeeping of one training run."""

    model_dir: Optional[str] = option(None, "Model directory for training (any tf.io.gfile path, e.g. gs://). "
                                      "Defaults to runs/<dataset>_<train_mode>.")
    train_mode: str = option("pretrain", "The train mode controls different objectives and trainable components.",
                             choices=TRAIN_MODES)
    teacher: Optional[str] = option(None, "--train_mode=distill: the frozen, fine-tuned teacher whose class "
                                    "distribution the student learns (a tf_simclr model_dir, ckpt-<step> folder or "
                                    "export, or a google-research/simclr SavedModel or checkpoint).", ours=True)
    distill_temperature: float = option(1.0, "--train_mode=distill: temperature tau of both softmaxes in the "
                                        "distillation loss (SimCLRv2's colab uses 1.0).", ours=True)
    distill_label_weight: float = option(0.0, "--train_mode=distill: weight of the labelled cross-entropy, "
                                         "(1 - w) goes to distillation; 0 = distillation only, labels are never read "
                                         "(SimCLRv2's alpha is 1 - w).", ours=True)
    distill_temperature_squared: bool = option(True, "--train_mode=distill: multiply the distillation term by "
                                               "tau^2, as the reference's colab (keeps gradients the same size "
                                               "across tau); false follows the paper's equation.", ours=True)
    loss: str = option("nt_xent", "Pretraining objective, by name in tf_simclr.losses.LOSSES.", ours=True)
    train_batch_size: int = option(512, "Batch size for training (global, over all replicas).")
    microbatch_size: int = option(0, "Contrastive pretraining: compute the global batch's NT-Xent and its exact "
                                  "gradient in chunks of this many images per replica (gradient caching: memory of "
                                  "one chunk's activations, all 2N-2 negatives kept); each chunk's batch norm uses "
                                  "its own statistics. 0 = off.", ours=True)
    microbatch_bn: str = option("paired", "--microbatch_size: which rows a chunk holds, hence shares batch-norm "
                                "statistics with: 'paired' (both views of its images, as one replica without "
                                "--global_bn) or 'shifted' (view 1 of its images, view 2 of the next chunk's, so "
                                "no chunk holds both views of an image).", choices=("paired", "shifted"),
                                ours=True)
    train_epochs: int = option(100, "Number of epochs to train for.")
    train_steps: int = option(0, "Number of steps to train for. If provided, overrides train_epochs.")
    eval_batch_size: int = option(256, "Batch size for eval.")
    eval_steps: int = option(0, "Number of steps to eval for. If not provided, evals over entire dataset.")
    learning_rate: float = option(0.3, "Initial learning rate per batch size of 256.")
    learning_rate_scaling: str = option("linear", "How to scale the learning rate as a function of batch size.",
                                        choices=("linear", "sqrt"))
    warmup_epochs: float = option(10, "Number of epochs of warmup.")
    weight_decay: float = option(1e-6, "Amount of weight decay to use.")
    optimizer: str = option("lars", "Optimizer to use (momentum, adam, lars, or one registered with "
                            "tf_simclr.register_optimizer).")
    momentum: float = option(0.9, "Momentum parameter.")
    temperature: float = option(0.1, "Temperature parameter for contrastive loss.")
    hidden_norm: bool = option(True, "Whether to L2-normalize the projections in the contrastive loss.")
    lineareval_while_pretraining: bool = option(True, "Whether to finetune supervised head while pretraining.")
    fine_tune_after_block: int = option(-1, "The layers after which block that we will fine-tune. -1 means "
                                        "fine-tuning everything. 0 means fine-tuning after stem block. 4 means "
                                        "fine-tuning just the linear head.")
    zero_init_logits_layer: bool = option(False, "If True, zero initialize layers after avg_pool for supervised "
                                          "learning.")
    checkpoint: Optional[str] = option(None, "Loading from the given checkpoint for fine-tuning if a finetuning "
                                       "checkpoint does not already exist in model_dir.")
    checkpoint_epochs: int = option(1, "Number of epochs between checkpoints/summaries.")
    checkpoint_steps: int = option(0, "Number of steps between checkpoints/summaries. If provided, overrides "
                                   "checkpoint_epochs.")
    keep_checkpoint_max: int = option(5, "Maximum number of checkpoints to keep.")
    keep_hub_module_max: int = option(1, "Maximum number of Hub modules to keep.")
    summary_steps: int = option(0, "Steps between training summaries (TF1 flag; 0 = at every checkpoint).",
                                flag="train_summary_steps")
    knn_monitor_examples: int = option(0, "If > 0, report weighted kNN accuracy (k=200, T=0.1) of the frozen "
                                       "encoder at every checkpoint, on this many --train_split and --eval_split "
                                       "images: a learning curve during pretraining.", ours=True)
    export_at_end: bool = option(True, "Export a TF-Hub module when training ends (also after pure pretraining).",
                                 ours=True)
    export_every_checkpoint: bool = option(False, "Also export a TF-Hub module at every checkpoint "
                                           "(--keep_hub_module_max are kept).", ours=True)
    export_dir: Optional[str] = option(None, "Where TF-Hub modules go, one sub-folder per step. Defaults to "
                                       "exported_models/<model_dir name>.", ours=True)
    steps_per_execution: int = option(1, "Training steps run per call into the compiled function (fewer Python "
                                      "round trips).", ours=True)
    seed: Optional[int] = option(None, "Random seed for weights and augmentation (runs are still not bit-exact "
                                 "without --deterministic).", ours=True)
    verbose: int = option(1, "Keras progress output: 0 silent, 1 progress bar (on a terminal), 2 one line per "
                          "checkpoint period.", ours=True)
    precision: str = option("float32", "Compute precision: float32, or mixed bfloat16/float16 (variables, loss and "
                            "softmax stay float32; float16 uses dynamic loss scaling).",
                            choices=("float32", "bfloat16", "float16"), ours=True)
    jit_compile: bool = option(False, "Compile the train step with XLA.", ours=True)
    deterministic: bool = option(False, "Bit-exact runs: op determinism, augmentation drawn from --seed and the "
                                 "step, data order restored on resume (slower). Needs --seed.", ours=True)
    skip_nonfinite_steps: bool = option(False, "Skip and count steps whose loss or gradients are NaN/Inf instead "
                                        "of stopping the run.", ours=True)
    train_label_fraction: float = option(0.0, "Train on this class-balanced share of --train_split's labelled "
                                         "examples (0 = all; 0.01 and 0.1 are SimCLR's semi-supervised settings). "
                                         "The ids used are written to <model_dir>/subset_ids.txt.", ours=True)
    train_subset_ids: Optional[str] = option(None, "File of example ids (one per line, like the reference's "
                                             "imagenet_subsets/1percent.txt; file names, image paths relative to a "
                                             "folder dataset, or example indices) to train on instead of all of "
                                             "--train_split.", ours=True)
    subset_seed: int = option(0, "Seed of the --train_label_fraction draw (same seed, same examples).", ours=True)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a whole job does around training: its mode, devices and reports."""

    mode: str = option("train", "Whether to perform training or evaluation (or export the newest checkpoint of "
                       "--model_dir, or --checkpoint, as a TF-Hub module).", choices=MODES)
    feature_eval: bool = option(False, "After training, score the frozen encoder with a linear probe and kNN "
                                "(k=200, T=0.1) on --train_split -> --eval_split, next to a randomly initialized "
                                "encoder of the same shape and the raw pixels.", ours=True)
    feature_eval_examples: int = option(0, "Examples of each split used by --feature_eval (0 = all).", ours=True)
    few_label_baselines: bool = option(False, "With --train_mode=finetune: also score a linear probe on the raw "
                                       "pixels of the same labelled images and the same network and recipe trained "
                                       "from random init (in <model_dir>/from_scratch), beside the fine-tune.",
                                       ours=True)
    eval_timeout_secs: float = option(3600.0, "--mode=eval: stop after this many seconds without a new checkpoint "
                                      "in --model_dir.", ours=True)
    eval_poll_secs: float = option(10.0, "--mode=eval: seconds between looks for new checkpoints.", ours=True)
    use_tpu: bool = option(True, "Whether to run on TPU. Without a TPU named by --tpu_name/--master, tf_simclr "
                           "logs a warning and uses local devices.")
    tpu_name: Optional[str] = option(None, "The Cloud TPU to use for training.")
    tpu_zone: Optional[str] = option(None, "[Optional] GCE zone where the Cloud TPU is located in.")
    gcp_project: Optional[str] = option(None, "[Optional] Project name for the Cloud TPU-enabled project.")
    master: Optional[str] = option(None, "Address/name of the TensorFlow master to use (TPU).")
    num_gpus: Optional[int] = option(None, "Local GPUs to use with MirroredStrategy (default: all).", ours=True)
    eval_name: Optional[str] = option(None, "Name for eval.")
    variable_schema: str = option("?!global_step", "TF1 flag (regex of variables to load from --checkpoint); "
                                  "accepted for compatibility, all encoder variables are loaded.")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "run": RunConfig}


def default_model_dir(dataset: str, train_mode: str) -> str:
    """`runs/<dataset>_<train_mode>`, the model_dir of a run that names none."""
    return os.path.join("runs", f"{dataset.replace(':', '_').replace('/', '_')}_{train_mode}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one job needs; `tf_simclr.run(config)` runs it."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()

    def __post_init__(self):
        if self.train.model_dir is None:
            model_dir = default_model_dir(self.data.dataset, self.train.train_mode)
            object.__setattr__(self, "train", dataclasses.replace(self.train, model_dir=model_dir))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections) -> "Config":
        """A copy with some fields of some sections changed: `config.replace(train={"train_steps": 5})`."""
        changed = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changed)


def check_label_subset(fraction: float, ids_file: Optional[str]) -> None:
    """The one rule for `--train_label_fraction` / `--train_subset_ids` (ValueError naming the flags)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"--train_label_fraction must be in [0, 1] (0 = all labels, 0.01 = 1%). Received: {fraction}")
    if ids_file and fraction:
        raise ValueError(
            f"Pass --train_subset_ids or --train_label_fraction, not both. Received: "
            f"train_subset_ids={ids_file!r}, train_label_fraction={fraction}"
        )


def config_from_dict(values: dict) -> Config:
    """Rebuilds a `Config` from `Config.to_dict()` output (a checkpoint's or export's meta).

    Unknown fields (from another version) are ignored; so is a missing section.
    Older files kept `image_size` in the data section too: the model's wins.
    """

    def build(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    return Config(**{name: build(cls, (values or {}).get(name)) for name, cls in SECTIONS.items()})
