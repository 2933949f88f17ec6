"""What each example of a pipeline becomes, and the batch and stream rules every feed follows (no TensorFlow).

`Views` names the element format (two pretraining views, one fine-tuning view, the
evaluation view, or the uint8 image for augmentation on the device). The tf.data
pipeline (`pipeline.py`) and the in-memory arrays (`arrays.py`) both follow it and
the rules here, so this module imports with Keras and NumPy alone.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from tf_simclr.augment.spec import AugmentSpec

MODES = ("pretrain", "finetune", "distill", "eval")


@dataclasses.dataclass(frozen=True)
class Views:
    """What each example of a pipeline becomes.

    Attributes:
        mode: 'pretrain' (two views stacked on channels: `[S, S, 6]`),
            'finetune' (one view, crop and flip: `[S, S, 3]`), 'distill' (the
            same view as fine-tuning, as SimCLRv2 distils, from labelled or
            unlabelled images) or 'eval' (central
            crop / resize, no randomness; the pipeline then neither shuffles nor
            repeats).
        spec: The augmentation spec; its `image_size` is the output size.
        on_device: Pretraining with augmentation inside the compiled step: the
            pipeline yields uint8 `[H, W, 3]` images of one size instead.
    """

    mode: str
    spec: AugmentSpec
    on_device: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={self.mode!r}")
        if self.on_device and self.mode != "pretrain":
            raise ValueError("Augmentation on the device applies to pretraining only (mode='pretrain').")

    @property
    def training(self) -> bool:
        return self.mode != "eval"

    @classmethod
    def eval(cls, image_size: int) -> "Views":
        return cls("eval", AugmentSpec(int(image_size)))


def device_input_size(source, image_size: int) -> tuple[int, int]:
    """Size of the uint8 images handed to on-device augmentation.

    Sources of one image size keep it; images of varying sizes are resized so the
    short side is 8/7 of `image_size` (256 for 224, the usual eval resize) and
    centre-cropped square, since a batch needs one shape. Crops are then drawn
    from that image rather than from the original (the one deviation from the
    host pipeline).
    """
    height, width = tuple(source.image_shape)[:2]
    if height and width:
        return int(height), int(width)
    side = int(math.ceil(image_size * 8 / 7))
    return side, side


def check_stream_args(deterministic: bool, seed, skip_batches) -> None:
    """The one rule for deterministic streams: they need an int seed (ValueError naming the fix)."""
    if deterministic and (seed is None or isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(
            f"Deterministic runs need an int seed for the shuffles and augmentations. Received: seed={seed!r}; "
            "pass --seed=<int> (seed=<int> in Python)."
        )
    if isinstance(skip_batches, bool) or not isinstance(skip_batches, int) or skip_batches < 0:
        raise ValueError(f"skip_batches must be an int >= 0. Received: skip_batches={skip_batches!r}")


def check_batch_divides(global_batch_size: int, replicas: int, flag: str = "--train_batch_size") -> None:
    """The one rule for batch sizes under data parallelism: every replica gets the same share."""
    if global_batch_size < 1 or global_batch_size % replicas:
        lower = global_batch_size // replicas * replicas
        nearest = [s for s in (lower, lower + replicas) if s > 0]
        raise ValueError(
            f"{flag}={global_batch_size} must be a positive multiple of the number of replicas ({replicas}), so "
            f"that every replica gets the same batch. Nearest valid sizes: {' or '.join(map(str, nearest))}."
        )


def training_views(config) -> Views:
    """What the training pipeline yields: two views (pretraining), one (fine-tuning, distillation), or uint8 images."""
    from tf_simclr.augment.spec import spec_from_config

    spec = spec_from_config(config.data, config.model.image_size)
    mode = config.train.train_mode
    return Views(mode, spec, on_device=config.data.augment_on == "device" and mode == "pretrain")
