"""SimCLRModel (models.simclr): forward outputs, views, losses against NumPy, weight decay, one train step, replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.losses import NTXent, supervised_loss
from tf_simclr.models.factory import build_model
from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.simclr import SimCLRModel
from tf_simclr.optim import optimizers
from tf_simclr.optim.lars import EETA_DEFAULT
from tf_simclr.optim.weight_decay import plan_weight_decay

TINY = helpers.tiny_model_config()


def _views(seed, n=4):
    return np.random.default_rng(seed).random((n, 16, 16, 6), dtype=np.float32)


# ----------------------------------------------------------------------------- Forward pass


def test_forward_outputs_reference_keys():
    model = build_model(TINY, num_classes=3)
    out = model(np.random.rand(2, 16, 16, 3).astype("float32"))
    for key in ["initial_conv", "initial_max_pool", "block_group1", "block_group4", "final_avg_pool", "proj_head_input", "proj_head_output", "logits_sup"]:
        assert key in out
    assert out["proj_head_output"].shape == (2, TINY.proj_out_dim)
    assert out["logits_sup"].shape == (2, 3)
    np.testing.assert_array_equal(out["proj_head_input"].numpy(), out["final_avg_pool"].numpy())


@pytest.mark.parametrize("selector", [0, 1, -1])
def test_supervised_head_reads_the_selected_projection_layer(selector):
    config = helpers.tiny_model_config(ft_proj_selector=selector)
    model = build_model(config, num_classes=3, train_mode="finetune")
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    out = model(x, training=False)
    hiddens = model.projection_head(out["final_avg_pool"], training=False)
    layer = model.supervised_head.linear_layer
    expected = hiddens[selector].numpy() @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(out["logits_sup"], expected, rtol=1e-5, atol=1e-6)


def test_views_stack_first_views_then_second_views():
    model = build_model(TINY)
    x = _views(1, n=3)
    views = model.views(x).numpy()
    assert views.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(views[:3], x[..., :3])
    np.testing.assert_array_equal(views[3:], x[..., 3:])
    with pytest.raises(ValueError, match=r"\[B, H, W, 6\].*mode='pretrain'"):
        model.views(x[..., :3])


def test_constructor_rejects_inconsistent_modes():
    encoder = build_model(TINY).encoder
    head = ProjectionHead("linear", out_dim=4)
    with pytest.raises(ValueError, match="train_mode='bogus'"):
        SimCLRModel(encoder, head, objective=NTXent(), train_mode="bogus")
    with pytest.raises(ValueError, match="supervised_head"):
        SimCLRModel(encoder, head, train_mode="finetune")
    with pytest.raises(ValueError, match="objective"):
        SimCLRModel(encoder, head, train_mode="pretrain")
    finetune = SimCLRModel(encoder, head, SupervisedHead(3), objective=NTXent(), train_mode="finetune")
    assert finetune.objective is None  # Fine-tuning trains the supervised head only.


# ----------------------------------------------------------------------------- Losses


def test_compute_losses_match_numpy_and_add_up():
    model = build_model(TINY, num_classes=3)
    model.set_weight_decay(plan_weight_decay(model, 1e-3, optimizer_applies_decay=False))
    x, y = _views(2), np.array([0, 1, 2, -1], "int32")
    total, logs = model.compute_losses(x, y, training=False)
    out = model(np.concatenate([x[..., :3], x[..., 3:]]), training=False)
    assert set(logs) == {"total_loss", "sup_loss", "sup_acc", "weight_decay", *NTXent.metric_names}
    contrast = helpers.numpy_nt_xent(out["proj_head_output"].numpy(), 0.1)
    sup, acc = helpers.numpy_softmax_cross_entropy(np.concatenate([y, y]), out["logits_sup"].numpy())
    decay = 1e-3 * sum(0.5 * np.sum(np.square(v.numpy().astype(np.float64))) for v in model.l2_decay_variables())
    np.testing.assert_allclose(float(logs["contrast_loss"]), contrast, rtol=1e-5)
    np.testing.assert_allclose(float(logs["sup_loss"]), sup, rtol=1e-5)
    np.testing.assert_allclose(float(logs["sup_acc"]), acc)
    np.testing.assert_allclose(float(logs["weight_decay"]), decay, rtol=1e-5)
    np.testing.assert_allclose(float(total), contrast + sup + decay, rtol=1e-5)
    np.testing.assert_allclose(float(logs["total_loss"]), float(total))


def test_finetune_losses_are_the_supervised_head_only():
    model = build_model(TINY, num_classes=3, train_mode="finetune")
    x = np.random.default_rng(3).random((4, 16, 16, 3), dtype=np.float32)
    y = np.array([0, 1, 2, 0], "int32")
    total, logs = model.compute_losses(x, y, training=False)
    assert set(logs) == {"total_loss", "sup_loss", "sup_acc", "weight_decay"}
    sup, _ = helpers.numpy_softmax_cross_entropy(y, model(x, training=False)["logits_sup"].numpy())
    np.testing.assert_allclose(float(total), sup, rtol=1e-5)  # No weight decay planned: 0.
    # Fine-tuning trains the encoder through the head (no stop-gradient as in linear eval).
    with tf.GradientTape() as tape:
        loss, _ = model.compute_losses(x, y, training=True)
    grads = tape.gradient(loss, model.encoder.trainable_variables)
    assert any(g is not None and np.any(g.numpy()) for g in grads)


def test_linear_eval_while_pretraining_does_not_touch_encoder_through_head():
    """The supervised head's gradient stops at its input: zero contrastive weight -> encoder unchanged."""
    model = build_model(TINY, num_classes=3)
    x = np.random.default_rng(2).random((4, 16, 16, 3), dtype=np.float32)
    with tf.GradientTape() as tape:
        loss, _ = supervised_loss(np.array([0, 1, 2, 0]), model(x, training=True)["logits_sup"])
    grads = tape.gradient(loss, model.encoder.trainable_variables)
    assert all(g is None for g in grads)


def test_evaluate_batch_reports_top_5_only_with_more_than_5_classes():
    rng = np.random.default_rng(4)
    x = rng.random((6, 16, 16, 3), dtype=np.float32)
    for classes in (3, 7):
        model = build_model(TINY, num_classes=classes, train_mode="finetune")
        y = rng.integers(0, classes, 6).astype("int32")
        results = model.evaluate_batch((x, y))
        assert ("top_5_accuracy" in results) == (classes > 5)
        logits = model(x, training=False)["logits_sup"].numpy()
        sup, acc = helpers.numpy_softmax_cross_entropy(y, logits)
        np.testing.assert_allclose(float(results["top_1_accuracy"]), acc)
        np.testing.assert_allclose(float(results["sup_loss"]), sup, rtol=1e-5)
        if classes > 5:
            top5 = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, y)])
            np.testing.assert_allclose(float(results["top_5_accuracy"]), top5)
    with pytest.raises(ValueError, match="supervised head"):
        build_model(TINY).evaluate_batch((x, np.zeros(6, "int32")))


def test_step_results_report_supervised_metrics_only_with_a_head():
    without, with_head = build_model(TINY), build_model(TINY, num_classes=3)
    assert not any(k.startswith("sup") for k in without.step_results(0.1))
    assert {"sup_loss", "sup_acc"} <= set(with_head.step_results(0.1))
    for model in (without, with_head):
        assert {"total_loss", "weight_decay", "learning_rate", *NTXent.metric_names} <= set(model.step_results(0.1))
        assert "nonfinite_steps" not in model.step_results(0.1)
    assert "nonfinite_steps" in build_model(TINY, skip_nonfinite=True).step_results(0.1)


def test_checkpoint_parts_and_batch_norm_statistics():
    model = build_model(TINY, num_classes=3)
    assert set(model.checkpoint_parts()) == {"encoder", "projection_head", "supervised_head"}
    assert set(build_model(TINY).checkpoint_parts()) == {"encoder", "projection_head"}
    bn_layers = [l for l in model.encoder.layers if isinstance(l, keras.layers.BatchNormalization)]
    bn_layers += model.projection_head.bn_layers
    expected = {id(v) for l in bn_layers for v in (l.moving_mean, l.moving_variance)}
    assert {id(v) for v in model.batch_norm_statistics()} == expected
    assert len(model.batch_norm_statistics()) == 2 * len(bn_layers)


# ----------------------------------------------------------------------------- Weight decay


def test_weight_decay_loss_matches_numpy_and_drops_frozen_variables():
    model = build_model(TINY, num_classes=3)
    assert float(model.weight_decay_loss()) == 0.0  # Nothing planned yet.
    model.set_weight_decay(plan_weight_decay(model, 1e-4, optimizer_applies_decay=False))
    variables = model.l2_decay_variables()
    expected = 1e-4 * sum(0.5 * np.sum(np.square(v.numpy().astype(np.float64))) for v in variables)
    np.testing.assert_allclose(float(model.weight_decay_loss()), expected, rtol=1e-5)
    # The reference's tf.nn.l2_loss convention: a second code path.
    np.testing.assert_allclose(float(model.weight_decay_loss()), 1e-4 * sum(float(tf.nn.l2_loss(v.value)) for v in variables), rtol=1e-5)
    model.encoder.get_layer("initial_conv").trainable = False
    kept = model.l2_decay_variables()
    assert len(kept) == len(variables) - 1
    assert not any(v.path.endswith("initial_conv/kernel") for v in kept)
    model.set_weight_decay(plan_weight_decay(model, 0.0, optimizer_applies_decay=False))
    assert float(model.weight_decay_loss()) == 0.0


# ----------------------------------------------------------------------------- Training


def _relative_change(before, after):
    return np.linalg.norm(after - before) / np.linalg.norm(before)


@pytest.mark.parametrize("mode", ["none", "linear", "nonlinear"])
def test_every_projection_head_mode_trains(mode):
    """The reference crashes for linear/none; ours trains one step in each, moving head and encoder kernels.

    A first LARS step from zero momentum moves every adapted kernel by exactly
    `lr * eeta * |w|` (the trust ratio), in the direction of its gradient plus decay.
    """
    model = build_model(helpers.tiny_model_config(proj_head_mode=mode))
    lr = 1.0
    helpers.compile_simclr(model, "lars", lr, 1e-4)
    kernels = {v.path: v for v in model.trainable_variables if v.path.endswith("/kernel")}
    head = [p for p in kernels if "projection_head/" in p]
    assert len(head) == {"none": 0, "linear": 1, "nonlinear": 2}[mode]
    encoder = [p for p in kernels if p.split("/")[-2] in ("initial_conv", "block_group4_block0_proj_conv")]
    assert len(encoder) == 2
    before = {p: kernels[p].numpy().copy() for p in head + encoder}
    logs = model.train_on_batch(_views(0), np.zeros(4, "int32"), return_dict=True)
    assert np.isfinite(logs["contrast_loss"])
    for path in head + encoder:
        w0, w1 = before[path].astype(np.float64), kernels[path].numpy().astype(np.float64)
        np.testing.assert_allclose(_relative_change(w0, w1), lr * EETA_DEFAULT, rtol=1e-3, err_msg=path)
        # Not only weight decay (which would move w along -w): the loss's gradient arrived.
        cosine = np.sum((w1 - w0) * -w0) / (np.linalg.norm(w1 - w0) * np.linalg.norm(w0))
        assert cosine < 0.99, (path, cosine)


def test_train_step_on_two_images_matches_independent_loss():
    model = build_model(TINY, num_classes=3)
    helpers.compile_simclr(model, "lars", 0.5)
    rng = np.random.default_rng(1)
    x = rng.random((2, 16, 16, 6), dtype=np.float32)
    y = np.array([0, 2], "int32")
    before = [v.numpy().copy() for v in model.trainable_variables]
    # Independent recomputation in NumPy from the model's own forward pass (batch statistics,
    # as the training-mode step uses).
    views = np.concatenate([x[..., :3], x[..., 3:]], 0)
    out = model(views, training=True)
    con = helpers.numpy_nt_xent(out["proj_head_output"].numpy(), temperature=0.1)
    sup, _ = helpers.numpy_softmax_cross_entropy(np.concatenate([y, y]), out["logits_sup"].numpy())
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["contrast_loss"], con, rtol=1e-4)
    np.testing.assert_allclose(logs["sup_loss"], sup, rtol=1e-4)
    unchanged = [v.path for b, v in zip(before, model.trainable_variables) if np.array_equal(b, v.numpy())]
    # Only the first batch norm inside each residual block stays: its gradient passes through
    # the block's zero-initialized last gamma, and LARS does not decay batch-norm parameters.
    assert unchanged and all("_bn1/" in p and "block_group" in p for p in unchanged), unchanged
    assert int(model.optimizer.iterations.numpy()) == 1


def test_two_replicas_train_like_one(two_cpu_strategy):
    """Same global batch on 2 replicas (global BN, gathered negatives) gives the same loss and weights."""
    # proj_out_dim=8 (the old suite's): at 16 one pre-ReLU activation of block_group3_block1_bn1 sits at
    # 6e-8, so float32 rounding flips it between the two runs and one channel's update differs.
    cfg = helpers.tiny_model_config(global_bn=True, proj_out_dim=8)
    rng = np.random.default_rng(3)
    batches = [rng.random((8, 16, 16, 6), dtype=np.float32) for _ in range(2)]

    def run(strategy):
        keras.utils.set_random_seed(7)
        with strategy.scope():
            model = build_model(cfg)
            opt = optimizers.build_optimizer("momentum", 0.05, momentum=0.9)
            model.compile(optimizer=opt)
            model.set_weight_decay(plan_weight_decay(model, 1e-3, optimizer_applies_decay=False))
            opt.build(model.trainable_variables)
        n = strategy.num_replicas_in_sync

        def dataset_fn(ctx):
            # Replica r of step s gets rows [r*8/n, (r+1)*8/n) of batch s: the global batch is unchanged.
            per = 8 // n
            parts = [b[r * per:(r + 1) * per] for b in batches for r in range(n)]
            ds = tf.data.Dataset.from_tensor_slices((np.stack(parts), np.zeros((len(parts), per), "int32")))
            return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id) if n == 1 else ds

        ds = strategy.distribute_datasets_from_function(dataset_fn)
        initial = [v.numpy() for v in model.weights]
        history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
        return initial, [v.numpy() for v in model.weights], history.history["contrast_loss"][0]

    init1, w1, loss1 = run(tf.distribute.get_strategy())
    init2, w2, loss2 = run(two_cpu_strategy)
    np.testing.assert_allclose(loss1, loss2, rtol=1e-4)
    for a, b in zip(init1, init2):
        np.testing.assert_array_equal(a, b)
    # Weights after 2 steps agree to within 2% of how far each step moved them: float32
    # rounding in synchronized batch norm differs, but a wrong gradient scale or
    # un-gathered negatives would be off by the whole update (tested by breaking them).
    for a, b, start in zip(w1, w2, init1):
        moved = np.max(np.abs(a - start))
        np.testing.assert_allclose(a, b, rtol=0, atol=0.02 * moved + 1e-7)
