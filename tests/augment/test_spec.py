"""AugmentSpec: SimCLR's default ranges, argument validation, the strength-0 rule and jitter-range clamping."""

import dataclasses

import pytest

from tf_simclr.augment import spec as spec_lib
from tf_simclr.augment.spec import AugmentSpec, spec_from_config
from tf_simclr.config import DataConfig


def test_defaults_are_simclrs_policy():
    spec = AugmentSpec(32)
    assert spec.crop_area_range == (0.08, 1.0)
    assert spec.aspect_ratio_range == pytest.approx((3 / 4, 4 / 3))
    assert spec.min_object_covered == 0.1 and spec.crop_attempts == 100
    assert (spec.flip_probability, spec.jitter_probability, spec.grayscale_probability) == (0.5, 0.8, 0.2)
    assert spec.blur_probability == 0.5 and spec.blur_sigma_range == (0.1, 2.0)
    assert spec.impl == "simclrv2" and spec.blur and spec.color_distort
    assert spec_lib.EVAL_CROP_PROPORTION == 0.875
    assert spec_lib.GRAY_WEIGHTS == (0.2989, 0.5870, 0.1140)


def test_crop_area_range_follows_min_and_max_crop_area():
    assert AugmentSpec(16, min_crop_area=0.5).crop_area_range == (0.5, 1.0)
    assert AugmentSpec(16, min_crop_area=0.2, max_crop_area=0.6).crop_area_range == (0.2, 0.6)
    assert AugmentSpec(16, min_crop_area=1.0).crop_area_range == (1.0, 1.0)  # Whole image only.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=0), "image_size=0"),
        (dict(image_size=-3), "image_size=-3"),
        (dict(image_size=16.0), "image_size=16.0"),
        (dict(image_size=16, color_jitter_strength=-1.0), "color_jitter_strength must be >= 0"),
        (dict(image_size=16, min_crop_area=0.0), "min_crop_area=0.0"),
        (dict(image_size=16, min_crop_area=0.7, max_crop_area=0.5), "min_crop_area=0.7, max_crop_area=0.5"),
        (dict(image_size=16, max_crop_area=1.5), "max_crop_area=1.5"),
        (dict(image_size=16, impl="v3"), "impl='v3'"),
    ],
)
def test_invalid_arguments_name_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentSpec(**kwargs)


def test_spec_is_frozen_and_hashable():
    """Frozen: host caches traced colour plans per spec, so equal specs must hash alike."""
    spec = AugmentSpec(16, color_jitter_strength=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image_size = 8
    assert hash(spec) == hash(AugmentSpec(16, color_jitter_strength=0.5))
    assert spec != AugmentSpec(16)


@pytest.mark.parametrize("strength, distorts", [(0.0, False), (0, False), (1e-6, True), (0.5, True), (3.0, True)])
def test_strength_zero_turns_colour_distortion_off(strength, distorts):
    """The reference's `if color_jitter_strength > 0`: jitter and grayscale are one switch."""
    assert AugmentSpec(16, color_jitter_strength=strength).color_distort is distorts


def test_jitter_ranges_at_strength_one():
    brightness, contrast, saturation, hue = AugmentSpec(16).jitter_ranges()
    for low, high in (brightness, contrast, saturation):
        assert (low, high) == pytest.approx((0.2, 1.8))
    assert hue == pytest.approx((-0.2, 0.2))


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0, 1.25, 2.0, 3.0])
def test_jitter_ranges_are_clamped_to_valid_values(strength):
    """Factors 1 +- 0.8s never below 0, hue +-0.2s never past half a turn (the reference raises above 1.25)."""
    ranges = AugmentSpec(16, color_jitter_strength=strength).jitter_ranges()
    b = 0.8 * strength
    for low, high in ranges[:3]:
        assert low == pytest.approx(max(1.0 - b, 0.0)) and high == pytest.approx(1.0 + b)
        assert low >= 0.0
    h = min(0.2 * strength, 0.5)
    assert ranges[3] == pytest.approx((-h, h))


def test_strength_zero_ranges_are_identity_points():
    brightness, contrast, saturation, hue = AugmentSpec(16, color_jitter_strength=0.0).jitter_ranges()
    assert brightness == contrast == saturation == (1.0, 1.0) and hue == (0.0, 0.0)


def test_simclrv1_brightness_is_an_additive_delta():
    brightness, contrast, _, _ = AugmentSpec(16, color_jitter_strength=0.5, impl="simclrv1").jitter_ranges()
    assert brightness == pytest.approx((-0.4, 0.4))
    assert contrast == pytest.approx((0.6, 1.4))  # Only brightness differs between impls.


@pytest.mark.parametrize("size, taps", [(8, 0), (16, 1), (20, 2), (32, 3), (224, 22)])
def test_blur_kernel_is_a_tenth_of_the_image_size(size, taps):
    assert AugmentSpec(size).blur_kernel_size == taps


@pytest.mark.parametrize("size, crop", [(16, False), (32, False), (33, True), (224, True)])
def test_eval_central_crop_only_above_32_pixels(size, crop):
    assert AugmentSpec(size).eval_crop() is crop


def test_spec_from_config_reads_the_data_config():
    data = DataConfig(color_jitter_strength=0.5, use_blur=False, min_crop_area=0.3)
    spec = spec_from_config(data, 24)
    assert spec == AugmentSpec(24, color_jitter_strength=0.5, blur=False, min_crop_area=0.3)
    assert spec_from_config(data, 24, blur=True).blur  # Overrides win.
    assert spec_from_config(DataConfig(), 16) == AugmentSpec(16)
