"""The reference fixture (tests/fixtures/reference_simclr, see its README) and how outputs are compared with it."""

from __future__ import annotations

import json
import os

import numpy as np

import helpers

FIXTURES = os.path.join(helpers.REPO, "tests", "fixtures", "reference_simclr")
SAVED_MODEL = os.path.join(FIXTURES, "r50_sk1_w0125")
MODEL_DIR = os.path.join(FIXTURES, "r50_sk1_w0125_model_dir")
CHECKPOINT_PREFIX = os.path.join(MODEL_DIR, "ckpt-1234")
CHECKPOINT_STEP = 1234
OUTPUTS_FILE = os.path.join(FIXTURES, "r50_sk1_w0125_outputs.npz")
FLAGS_FILE = os.path.join(FIXTURES, "r50_sk1_w0125_flags.json")

# Every form a user may name: the SavedModel, the model_dir, the ckpt-N prefix.
FORMS = {"saved_model": SAVED_MODEL, "model_dir": MODEL_DIR, "ckpt_prefix": CHECKPOINT_PREFIX}
OUTPUT_KEYS = ("initial_conv", "initial_max_pool", "block_group1", "block_group2", "block_group3", "block_group4",
               "final_avg_pool", "proj_head_input", "proj_head_output", "logits_sup")
TOLERANCE = 1e-4
ARCHITECTURE_FLAGS = ("resnet_depth", "width_multiplier", "sk_ratio", "se_ratio", "image_size", "proj_out_dim",
                      "num_proj_layers", "proj_head_mode")


def recorded() -> dict:
    """The reference SavedModel's outputs (trainable=False) on the fixture's 4 images, and the images."""
    with np.load(OUTPUTS_FILE) as data:
        return {key: data[key] for key in data.files}


def reference_flags() -> dict:
    with open(FLAGS_FILE) as f:
        return json.load(f)


def flags_of_the_fixture() -> list:
    """The fixture's architecture as tf_simclr command-line flags (the reference's flag names)."""
    values = reference_flags()
    return [f"--{name}={values[name]}" for name in ARCHITECTURE_FLAGS]


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: the error relative to the output's scale.

    Element-wise relative error is meaningless for the many post-ReLU values that are 0 in one
    implementation and 1e-9 in the other, so the scale is the output's largest magnitude.
    """
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / np.max(np.abs(expected)))


def assert_outputs_equal_recorded(outputs: dict, keys=OUTPUT_KEYS, tolerance: float = TOLERANCE) -> dict:
    """Every key's relative error to the recorded reference outputs is below `tolerance`; returns the errors."""
    want = recorded()
    errors = {}
    for key in keys:
        got = np.asarray(outputs[key])
        assert got.shape == want[key].shape, (key, got.shape, want[key].shape)
        errors[key] = relative_error(got, want[key])
    assert max(errors.values()) < tolerance, errors
    return errors
