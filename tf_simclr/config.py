"""Plain, frozen configuration: what run.py parses flags into, and what Python users build.

Field names and defaults are the reference's flag names and defaults
(google-research/simclr `tf2/run.py`), so a flag and a field always mean the same.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoder and heads. `image_size <= 32` selects the CIFAR stem, as the reference."""

    resnet_depth: int = 50
    width_multiplier: float = 1.0
    image_size: int = 224
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    batch_norm_decay: float = 0.9
    global_bn: bool = True
    proj_head_mode: str = "nonlinear"
    proj_out_dim: int = 128
    num_proj_layers: int = 3
    ft_proj_selector: int = 0

    @property
    def cifar_stem(self) -> bool:
        return self.image_size <= 32


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are augmented."""

    dataset: str = "imagenet2012"
    data_dir: Optional[str] = None
    train_split: str = "train"
    eval_split: str = "validation"
    image_size: int = 224
    color_jitter_strength: float = 1.0
    use_blur: bool = True
    cache_dataset: bool = False
    strict_images: bool = False  # Bad files in an image folder are an error instead of skipped.
    augment_on: str = "host"  # host (tf.data) | device (inside the compiled step; pretraining only)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Objective, optimizer, schedule and bookkeeping of one training run."""

    model_dir: str = "runs/simclr"
    train_mode: str = "pretrain"
    train_batch_size: int = 512
    train_epochs: int = 100
    train_steps: int = 0
    eval_batch_size: int = 256
    eval_steps: int = 0
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    warmup_epochs: float = 10
    weight_decay: float = 1e-6
    optimizer: str = "lars"
    momentum: float = 0.9
    temperature: float = 0.1
    hidden_norm: bool = True
    lineareval_while_pretraining: bool = True
    fine_tune_after_block: int = -1
    zero_init_logits_layer: bool = False
    checkpoint: Optional[str] = None
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    keep_hub_module_max: int = 1
    knn_monitor_examples: int = 0
    export_at_end: bool = True
    export_every_checkpoint: bool = False
    export_dir: Optional[str] = None
    summary_steps: int = 0
    steps_per_execution: int = 1
    seed: Optional[int] = None
    verbose: int = 1
    # Scale and reliability (tf_simclr additions).
    precision: str = "float32"  # float32 | bfloat16 | float16 (mixed precision; loss in float32)
    jit_compile: bool = False
    deterministic: bool = False  # Op determinism + seeded, resumable data: bit-exact resumes.
    skip_nonfinite_steps: bool = False  # Skip (and count) steps with a NaN/Inf loss instead of stopping.
    # Semi-supervised fine-tuning on a labelled subset (tf_simclr additions; see `subsets`).
    train_label_fraction: float = 0.0
    train_subset_ids: Optional[str] = None
    subset_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs: `run.py` builds one from flags."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
