"""The architecture comes from the variables, for every family the reference publishes, never from assumptions.

The variables here follow the reference's layout (`reference_format`, written from its resnet.py and model.py):
the official families' shapes (widths 1-3, depths 50-152, with and without selective kernels, 1000 classes), and
small models of other options written as real checkpoints and loaded into tf_simclr.
"""

import dataclasses

import numpy as np
import pytest

from tests.reference import fixture_files
from tests.reference.reference_format import reference_shapes, write_reference_checkpoint
from tf_simclr.config import ModelConfig
from tf_simclr.models import factory
from tf_simclr.reference import architecture, layout, weights


def infer(shapes):
    return architecture.infer_architecture(layout.parse(shapes), shapes)


# The official SimCLRv2 models (r50_1x_sk0 ... r152_3x_sk1) and SimCLRv1's ResNet-50 (4x), 1000 ImageNet classes.
OFFICIAL = [(depth, width, sk) for depth in (50, 101, 152) for width in (1, 2, 3) for sk in (0.0, 0.0625)] + [
    (50, 4, 0.0)]


@pytest.mark.parametrize("depth,width,sk_ratio", OFFICIAL, ids=[f"r{d}_{w}x_sk{int(s > 0)}" for d, w, s in OFFICIAL])
def test_official_families_are_recognised_from_their_shapes(depth, width, sk_ratio):
    found = infer(reference_shapes(depth, width, sk_ratio, num_classes=1000))
    assert (found.resnet_depth, found.width_multiplier, found.sk_ratio, found.se_ratio) == (depth, width, sk_ratio, 0)
    assert (found.proj_head_mode, found.num_proj_layers, found.proj_out_dim) == ("nonlinear", 3, 128)
    assert found.num_classes == 1000 and found.feature_dim == 2048 * width and not found.cifar_stem
    assert found.default_image_size() == 224
    assert architecture.contradictions(found, found.model_config()) == []
    assert len(layout.targets(layout.parse(reference_shapes(depth, width, sk_ratio, num_classes=1000)))) == len(
        reference_shapes(depth, width, sk_ratio, num_classes=1000))  # Every variable has a place.


SMALL = {
    "r18_cifar_2layer_head": dict(depth=18, width=0.25, cifar_stem=True, proj_layers=2, proj_out=16, num_classes=3),
    "r34_se_no_heads": dict(depth=34, width=0.125, se_ratio=0.25, proj_layers=0, num_classes=0),
    "r50_plain_1layer_head": dict(depth=50, width=0.125, proj_layers=1, proj_out=8, num_classes=4),
    "r18_resnet_d": dict(depth=18, width=0.125, sk_ratio=0.0625, num_classes=5),
    "r101_sk_se": dict(depth=101, width=0.125, sk_ratio=0.0625, se_ratio=0.0625, num_classes=2),
}


@pytest.mark.parametrize("options", SMALL.values(), ids=SMALL.keys())
def test_other_architectures_load_every_variable_in_its_place(options, tmp_path):
    values = write_reference_checkpoint(str(tmp_path / "ckpt-7"), reference_shapes(**options))
    reference = weights.open_reference(str(tmp_path / "ckpt-7"))
    found = reference.architecture
    assert (found.resnet_depth, found.width_multiplier, found.cifar_stem) == (
        options["depth"], options["width"], options.get("cifar_stem", False))
    assert found.se_ratio == options.get("se_ratio", 0.0) and found.num_classes == options["num_classes"]
    assert (found.sk_ratio > 0) == (options.get("sk_ratio", 0) > 0)
    assert found.proj_head_mode == ("nonlinear" if options.get("proj_layers", 3) else "none")
    assert reference.step == 7
    model = factory.build_model(found.model_config(image_size=32 if found.cifar_stem else 64, global_bn=False),
                                num_classes=found.num_classes or None)
    parts = weights.load_into(model, reference)
    assert ("supervised_head" in parts) == bool(options["num_classes"])
    for path, target in reference.targets.items():  # Each array went to the layer the reference's layout says.
        np.testing.assert_array_equal(np.asarray(weights.target_variable(model, target)), values[path], err_msg=path)
    loaded = {id(weights.target_variable(model, t)) for t in reference.targets.values()}
    assert all(id(v) in loaded for part in parts for v in getattr(model, part).variables)


def test_selective_kernel_ratio_is_read_from_wide_bottlenecks():
    """Below 32 channels every ratio gives the minimum width; group 4 of a 3x model shows the real one."""
    found = infer(reference_shapes(50, 3, sk_ratio=0.125))
    assert found.sk_ratio == 0.125
    assert architecture.contradictions(found, found.model_config(sk_ratio=0.0625))[0].startswith("--sk_ratio=0.0625")


def test_contradicting_flags_are_named_with_the_values_found():
    found = infer(fixture_shapes())
    right = found.model_config(image_size=64)
    assert architecture.contradictions(found, right) == []
    assert architecture.contradictions(found, dataclasses.replace(right, sk_ratio=0.05)) == []  # Same widths.
    wrong = dataclasses.replace(right, resnet_depth=101, width_multiplier=1.0, sk_ratio=0.0, proj_out_dim=64)
    assert architecture.contradictions(found, wrong) == [
        "--resnet_depth=101 (found 50)", "--width_multiplier=1 (found 0.125)", "--sk_ratio=0 (found 0.0625)",
        "--proj_out_dim=64 (found 128)"]
    cifar = architecture.contradictions(found, dataclasses.replace(right, image_size=32))
    assert cifar == ["--image_size=32 (found the ImageNet stem, used for --image_size > 32)"]
    strided = architecture.contradictions(found, dataclasses.replace(right, image_size=32, cifar_stem_stride=2))
    assert strided[1:] == ["--cifar_stem_stride=2 (the reference's stems have stride 1 there)"]
    assert architecture.contradictions(found, dataclasses.replace(right, num_proj_layers=2)) == [
        "--num_proj_layers=2 (found 3)"]
    assert architecture.contradictions(found, ModelConfig(backbone="mine", **_arch_fields(right)))[0] == \
        "--backbone=mine (found resnet)"


def test_unknown_layouts_are_refused_naming_the_variables():
    shapes = fixture_shapes()
    shapes["resnet_model/block_groups/0/layers/0/mystery_layers/0/conv2d/kernel"] = (1, 1, 8, 8)
    with pytest.raises(ValueError, match="mystery_layers"):
        layout.targets(layout.parse(shapes))
    truncated = {k: v for k, v in fixture_shapes().items() if "block_groups/2/layers/5/" not in k}
    with pytest.raises(ValueError, match=r"No ResNet depth has \(3, 4, 5, 3\) bottleneck blocks"):
        infer(truncated)


def fixture_shapes():
    return dict(weights.open_reference(fixture_files.SAVED_MODEL).variables.shapes)


def _arch_fields(config):
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "backbone"}


def test_the_official_folder_layout_is_found(tmp_path):
    """gs://simclr-checkpoints-tf2/simclrv2/<family>/<name>/ holds saved_model/: either folder may be named."""
    import shutil

    from tf_simclr.reference import files

    official = tmp_path / "r50_1x_sk1"
    shutil.copytree(fixture_files.SAVED_MODEL, official / "saved_model")
    for named in (official, official / "saved_model"):
        located = files.locate(str(named))
        assert located.saved_model_dir == str(official / "saved_model") and files.is_reference(str(named))
    assert weights.open_reference(str(official)).variables.shapes == fixture_shapes()
    assert files.locate(str(tmp_path)) is None and not files.is_reference(str(tmp_path / "missing"))
