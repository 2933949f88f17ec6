"""A reference model imported into tf_simclr computes what the reference computed, in every form it is stored in.

The recorded outputs are the reference SavedModel's own (`module(images, trainable=False)`); the model here is
built from the architecture inferred from the variables alone (the fixture's flags file is only compared with it).
"""

import numpy as np
import pytest

from tests.reference import fixture_files
from tf_simclr.models import factory
from tf_simclr.reference import weights


@pytest.fixture(scope="module", params=sorted(fixture_files.FORMS), ids=sorted(fixture_files.FORMS))
def imported(request):
    """(form, reference, model): the fixture in one of its forms, loaded into the tf_simclr model its variables imply."""
    reference = weights.open_reference(fixture_files.FORMS[request.param])
    arch = reference.architecture
    image_size = fixture_files.recorded()["images"].shape[1]
    model = factory.build_model(arch.model_config(image_size=image_size, global_bn=False),
                                num_classes=arch.num_classes)
    parts = weights.load_into(model, reference)
    assert parts == ("encoder", "projection_head", "supervised_head")
    return request.param, reference, model


def test_architecture_is_inferred_from_the_variables(imported):
    _, reference, _ = imported
    arch, flags = reference.architecture, fixture_files.reference_flags()
    assert (arch.resnet_depth, arch.width_multiplier, arch.sk_ratio, arch.se_ratio) == (
        flags["resnet_depth"], flags["width_multiplier"], flags["sk_ratio"], flags["se_ratio"])
    assert (arch.proj_head_mode, arch.num_proj_layers, arch.proj_out_dim) == (
        flags["proj_head_mode"], flags["num_proj_layers"], flags["proj_out_dim"])
    assert arch.num_classes == flags["num_classes"] and arch.cifar_stem == (flags["image_size"] <= 32)
    assert arch.feature_dim == arch.head_input_dim == fixture_files.recorded()["final_avg_pool"].shape[1]


def test_outputs_equal_the_recorded_reference_outputs(imported):
    _, _, model = imported
    recorded = fixture_files.recorded()
    outputs = model(recorded["images"], training=False)
    errors = fixture_files.assert_outputs_equal_recorded(outputs)
    assert set(errors) == set(fixture_files.OUTPUT_KEYS)
    # Not equal by accident: the outputs move with the input (the model is not constant).
    other = model(recorded["images"][::-1], training=False)
    assert fixture_files.relative_error(other["final_avg_pool"], recorded["final_avg_pool"]) > 0.01


def test_every_form_holds_the_same_weights_and_only_the_models(imported):
    form, reference, _ = imported
    saved_model = weights.open_reference(fixture_files.SAVED_MODEL)
    assert reference.variables.shapes == saved_model.variables.shapes  # Optimizer slots and step are not the model.
    for path in list(reference.targets)[::37]:
        np.testing.assert_array_equal(reference.variables.value(path), saved_model.variables.value(path))
    assert reference.step == (0 if form == "saved_model" else fixture_files.CHECKPOINT_STEP)


def test_batch_norm_moving_statistics_are_loaded(imported):
    """Inference reads them: a model with the reference's kernels but fresh statistics computes something else."""
    _, reference, model = imported
    stem_bn = model.encoder.get_layer("initial_bn1")
    path = reference.layout.stem[1].path("moving_variance")
    np.testing.assert_array_equal(np.asarray(stem_bn.moving_variance), reference.variables.value(path))
    fresh = factory.build_model(reference.architecture.model_config(image_size=64, global_bn=False),
                                num_classes=reference.architecture.num_classes)
    weights.load_into(fresh, reference)
    for layer in fresh.encoder.layers:
        if hasattr(layer, "moving_variance"):
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, "float32"))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, "float32"))
    images = fixture_files.recorded()["images"]
    reset = fresh(images, training=False)["final_avg_pool"]
    assert fixture_files.relative_error(reset, fixture_files.recorded()["final_avg_pool"]) > 0.01
