"""The SimCLR augmentation policy, written once: what both implementations draw.

`host` (per image, in `tf.data`) and `device` (whole batches in `keras.ops`,
inside the compiled step) read every range, probability and order rule from an
`AugmentSpec`; neither holds a constant of its own. The defaults are SimCLR's
(Chen et al. 2020, appendix A; the reference's `tf2/data_util.py`, `simclrv2`):

1. random resized crop: area in [min_crop_area, 1] of the image (never below
   `min_object_covered`), aspect ratio in [3/4, 4/3], 100 attempts, then the
   whole image; bicubic resize to `image_size`;
2. horizontal flip with p = 0.5;
3. with p = 0.8, colour jitter: brightness, contrast, saturation (factors in
   [1 - 0.8s, 1 + 0.8s]) and hue (delta in [-0.2s, 0.2s]) in a uniformly
   random order, clipped to [0, 1] after each; then grayscale with p = 0.2.
   Strength s = 0 turns all of step 3 off, grayscale included (the reference's
   `if color_jitter_strength > 0`);
4. Gaussian blur with p = 0.5, sigma ~ U(0.1, 2.0) per image, kernel of
   image_size // 10 taps (none below 20 px).

Fine-tuning uses steps 1-2 only; evaluation a central crop of 87.5% (none at
32 px and below).
"""

from __future__ import annotations

import dataclasses

IMPLS = ("simclrv1", "simclrv2")
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # The luma weights of tf.image.rgb_to_grayscale.
EVAL_CROP_PROPORTION = 0.875  # Central crop of standard ImageNet evaluation.
MIN_EVAL_CROP_IMAGE_SIZE = 33  # The reference skips the central crop at 32 px and below (CIFAR).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """One view's augmentation, as both implementations draw it.

    Attributes:
        image_size: Output side S of every view.
        color_jitter_strength: s of the jitter ranges; 0 disables colour distortion.
        blur: Random Gaussian blur (a no-op below 20 px: a one-tap kernel).
        min_crop_area: Smallest crop, as a share of the image area.
        impl: 'simclrv2' (multiplicative brightness) or 'simclrv1' (additive; host only).
        max_crop_area, aspect_ratio_range, min_object_covered, crop_attempts: the crop box.
        flip_probability, jitter_probability, grayscale_probability, blur_probability,
        blur_sigma_range: SimCLR's probabilities and blur widths.
    """

    image_size: int
    color_jitter_strength: float = 1.0
    blur: bool = True
    min_crop_area: float = 0.08
    impl: str = "simclrv2"
    max_crop_area: float = 1.0
    aspect_ratio_range: tuple = (3 / 4, 4 / 3)
    min_object_covered: float = 0.1
    crop_attempts: int = 100
    flip_probability: float = 0.5
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma_range: tuple = (0.1, 2.0)

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int. Received: image_size={self.image_size!r}")
        if self.color_jitter_strength < 0:
            raise ValueError(f"color_jitter_strength must be >= 0. Received: {self.color_jitter_strength}")
        if not 0 < self.min_crop_area <= self.max_crop_area <= 1:
            raise ValueError(
                f"Crop areas must satisfy 0 < min_crop_area <= max_crop_area <= 1. Received: "
                f"min_crop_area={self.min_crop_area}, max_crop_area={self.max_crop_area}"
            )
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}. Received: impl={self.impl!r}")

    @property
    def color_distort(self) -> bool:
        """Whether colour jitter and grayscale run at all (strength > 0, as the reference)."""
        return self.color_jitter_strength > 0

    @property
    def crop_area_range(self) -> tuple[float, float]:
        return (float(self.min_crop_area), float(self.max_crop_area))

    @property
    def blur_kernel_size(self) -> int:
        """Taps of the blur kernel before making it odd: image_size // 10, as the reference."""
        return self.image_size // 10

    def jitter_ranges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of the brightness, contrast, saturation and hue draws.

        Strength s gives factors 1 +- 0.8s (clamped at 0) and a hue delta of +-0.2s
        (clamped at half a turn), so strengths above 1.25 stay valid (the
        reference raises for them). simclrv1's brightness is an additive delta +-0.8s.
        """
        s = float(self.color_jitter_strength)
        b = c = sat = 0.8 * s
        h = min(0.2 * s, 0.5)
        brightness = (max(1.0 - b, 0.0), 1.0 + b) if self.impl == "simclrv2" else (-b, b)
        return (brightness, (max(1.0 - c, 0.0), 1.0 + c), (max(1.0 - sat, 0.0), 1.0 + sat), (-h, h))

    def eval_crop(self) -> bool:
        """Whether evaluation takes the central crop first (not at 32 px and below)."""
        return self.image_size >= MIN_EVAL_CROP_IMAGE_SIZE


def check_spec(spec) -> AugmentSpec:
    """`spec`, if it is an `AugmentSpec` (a clear error for anything else)."""
    if not isinstance(spec, AugmentSpec):
        raise TypeError(f"Expected an augment.AugmentSpec. Received: {type(spec).__name__}")
    return spec


def spec_from_config(data_config, image_size: int, **overrides) -> AugmentSpec:
    """The pretraining spec a run's `DataConfig` describes (at the model's `image_size`)."""
    values = dict(
        image_size=int(image_size),
        color_jitter_strength=float(data_config.color_jitter_strength),
        blur=bool(data_config.use_blur),
        min_crop_area=float(data_config.min_crop_area),
    )
    values.update(overrides)
    return AugmentSpec(**values)
