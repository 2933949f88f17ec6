"""Which variables weight decay touches and where (optim.weight_decay): plan_weight_decay, never_decayed, with LARS."""

import re

import numpy as np

import helpers
from tf_simclr.models.factory import build_model
from tf_simclr.optim import optimizers
from tf_simclr.optim.weight_decay import WeightDecayPlan, batch_norm_variables, never_decayed, plan_weight_decay

TINY = helpers.tiny_model_config()
# Independent of the layer-type rule under test: the variable paths the ResNet, heads and reference name.
BN_PATH = re.compile(r"(^|/)[a-z0-9_]*bn\d?/(gamma|beta|moving_mean|moving_variance)$")
BIAS_PATH = re.compile(r"/bias$")


def _paths(variables):
    return {v.path for v in variables}


def test_never_decayed_is_batch_norm_and_biases():
    model = build_model(helpers.tiny_model_config(se_ratio=0.25), num_classes=3)
    expected = {v.path for v in model.weights if BN_PATH.search(v.path) or BIAS_PATH.search(v.path)}
    assert "simclr/head_supervised/linear_layer/bias" in expected
    assert any(p.endswith("_se/se_reduce/bias") for p in expected)  # Conv biases of squeeze-excite too.
    assert _paths(never_decayed(model)) == expected
    assert len(never_decayed(model)) == len(expected)  # No duplicates.
    assert _paths(batch_norm_variables(model)) == {p for p in expected if BN_PATH.search(p)}


def test_weight_decay_partition_by_layer_type():
    model = build_model(TINY, num_classes=3)
    plan = plan_weight_decay(model, 1e-4, optimizer_applies_decay=True)
    assert isinstance(plan, WeightDecayPlan) and plan.weight_decay == 1e-4
    model.set_weight_decay(plan)
    ex_paths = _paths(plan.optimizer_excluded)
    bn_vars = [v for v in model.weights if BN_PATH.search(v.path)]
    assert bn_vars and all(v.path in ex_paths for v in bn_vars)
    assert "simclr/head_supervised/linear_layer/bias" in ex_paths
    assert "simclr/head_supervised/linear_layer/kernel" in ex_paths
    convs = [v for v in model.trainable_variables if v.path.endswith("conv1/kernel")]
    assert convs and not any(v.path in ex_paths for v in convs)
    # With LARS the loss carries only the supervised head's kernel decay.
    assert [v.path for v in model.l2_decay_variables()] == ["simclr/head_supervised/linear_layer/kernel"]
    # With momentum the loss decays every non-batch-norm weight (biases too, as the reference).
    model.set_weight_decay(plan_weight_decay(model, 1e-4, optimizer_applies_decay=False))
    decayed = {v.path for v in model.l2_decay_variables()}
    assert "simclr/head_supervised/linear_layer/bias" in decayed and not any(v.path in decayed for v in bn_vars)
    assert decayed == {v.path for v in model.trainable_variables if not BN_PATH.search(v.path)}
    expected = 1e-4 * sum(0.5 * np.sum(np.square(v.numpy().astype(np.float64))) for v in model.l2_decay_variables())
    np.testing.assert_allclose(float(model.weight_decay_loss()), expected, rtol=1e-5)


def test_plan_without_supervised_head():
    model = build_model(TINY)
    lars = plan_weight_decay(model, 1e-6, optimizer_applies_decay=True)
    assert lars.loss_variable_ids == frozenset()  # LARS decays everything else itself.
    assert _paths(lars.optimizer_excluded) == _paths(never_decayed(model))
    momentum = plan_weight_decay(model, 1e-6, optimizer_applies_decay=False)
    assert _paths(momentum.optimizer_excluded) == _paths(never_decayed(model))
    ids = {id(v): v.path for v in model.trainable_variables}
    assert {ids[i] for i in momentum.loss_variable_ids} == {p for p in ids.values() if not BN_PATH.search(p)}


def test_frozen_layers_are_not_in_the_loss_plan():
    model = build_model(TINY, num_classes=3)
    model.encoder.get_layer("initial_conv").trainable = False
    plan = plan_weight_decay(model, 1e-4, optimizer_applies_decay=False)
    kernel = model.encoder.get_layer("initial_conv").kernel
    assert id(kernel) not in plan.loss_variable_ids


def test_lars_built_from_the_plan_skips_exactly_the_excluded_variables():
    model = build_model(TINY, num_classes=3)
    opt = helpers.compile_simclr(model, "lars", 0.1, 1e-4)
    assert optimizers.uses_optimizer_weight_decay("lars")
    flags = {v.path: opt._lars_flags[opt._var_key(v)] for v in model.trainable_variables}
    for path, (decay, adapt) in flags.items():
        plain = bool(BN_PATH.search(path) or BIAS_PATH.search(path)) or path.startswith("simclr/head_supervised/")
        assert (decay, adapt) == ((False, False) if plain else (True, True)), path
