"""Mixed precision (optim.precision: bfloat16/float16 + loss scaling) in train steps, XLA, and skipping non-finite steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from tf_simclr.models.factory import build_model
from tf_simclr.optim import optimizers, precision

TINY = helpers.tiny_model_config()
TINY_GLOBAL_BN = helpers.tiny_model_config(global_bn=True)
MICRO_GLOBAL_BN = helpers.micro_model_config(global_bn=True)  # Skipping a bad step is the subject, not the ResNet.


@pytest.fixture(autouse=True)
def float32_policy():
    """Other tests share the process: always leave the global policy at float32."""
    yield
    keras.config.set_dtype_policy("float32")


def _batch(seed, n=8):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, 6), dtype=np.float32), rng.integers(0, 3, n).astype("int32")


def _compile(model, name="lars", lr=0.1, wd=1e-4, precision_name="float32", jit_compile=False):
    return helpers.compile_simclr(model, name, lr, wd, precision=precision_name, jit_compile=jit_compile)


def _snapshot(model):
    return [v.numpy().copy() for v in model.weights] + [v.numpy().copy() for v in model.optimizer.variables]


def _state_names(model):
    return [v.path for v in model.weights] + ["optimizer/" + v.path for v in model.optimizer.variables]


# ------------------------------------------------------------------ API


def test_policies_and_unknown_names():
    for name, policy in [("float32", "float32"), ("bfloat16", "mixed_bfloat16"), ("float16", "mixed_float16")]:
        precision.set_precision(name)
        assert keras.config.dtype_policy().name == policy
    with pytest.raises(ValueError, match=r"precision='fp8'"):
        precision.set_precision("fp8")
    assert [precision.policy_name(n) for n in precision.PRECISIONS] == ["float32", "mixed_bfloat16", "mixed_float16"]
    with pytest.raises(ValueError, match=r"precision='fp8'"):
        precision.policy_name("fp8")
    inner = optimizers.build_optimizer("lars", 0.1)
    assert precision.wrap_optimizer(inner, "float32") is inner
    assert precision.wrap_optimizer(inner, "bfloat16") is inner
    wrapped = precision.wrap_optimizer(inner, "float16")
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer) and wrapped.inner_optimizer is inner
    assert precision.wrap_optimizer(wrapped, "float16") is wrapped  # No double scaling.
    with pytest.raises(ValueError, match="Expected one of"):
        precision.wrap_optimizer(inner, "half")


# ------------------------------------------------------------------ Mixed precision


@pytest.mark.parametrize("name, rtol", [("bfloat16", 0.03), ("float16", 0.005)])
def test_mixed_precision_matches_float32_and_trains(name, rtol):
    keras.utils.set_random_seed(0)
    reference = build_model(TINY, num_classes=3)
    x, y = _batch(0)
    want_total, want_logs = reference.compute_losses(x, y, training=False)

    precision.set_precision(name)
    model = build_model(TINY, num_classes=3)
    model.set_weights(reference.get_weights())
    compute = {"bfloat16": "bfloat16", "float16": "float16"}[name]
    assert model.encoder.dtype_policy.compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.weights)  # Master weights stay float32.
    total, logs = model.compute_losses(x, y, training=False)
    for key in ("total_loss", "contrast_loss", "sup_loss"):
        assert keras.backend.standardize_dtype(logs[key].dtype) == "float32", key
        np.testing.assert_allclose(float(logs[key]), float(want_logs[key]), rtol=rtol)

    opt = _compile(model, precision_name=name)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer) == (name == "float16")
    if name == "float16":
        # This tiny model's gradients reach ~50 at scale 1; 2**15 would overflow (and be halved)
        # for several steps. Start where float16 fits, so every step applies.
        opt.dynamic_scale.assign(16.0)
    start = [v.numpy().copy() for v in model.trainable_variables]
    losses = [model.train_on_batch(x, y, return_dict=True)["contrast_loss"] for _ in range(3)]
    assert np.all(np.isfinite(losses))
    # The first (training-mode) step sees the same weights as a float32 step.
    keras.config.set_dtype_policy("float32")
    _compile(reference)
    want = reference.train_on_batch(x, y, return_dict=True)["contrast_loss"]
    np.testing.assert_allclose(losses[0], want, rtol=rtol)
    assert int(model.optimizer.iterations.numpy()) == 3
    if name == "float16":
        assert model.train_on_batch(x, y, return_dict=True)["loss_scale"] == 16.0  # Never overflowed.
        assert int(opt.step_counter.numpy()) == 4  # Every step applied (counts toward growth).
    moved = [not np.array_equal(a, v.numpy()) for a, v in zip(start, model.trainable_variables)]
    assert sum(moved) > len(moved) // 2


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_mixed_precision_evaluation_matches_numpy_top_k(name):
    """Evaluation under mixed precision: top-1/top-5 of the half-precision logits, as NumPy counts them."""
    precision.set_precision(name)
    keras.utils.set_random_seed(2)
    model = build_model(TINY, num_classes=10)
    _compile(model, precision_name=name)
    rng = np.random.default_rng(2)
    x, y = rng.random((16, 16, 16, 3), dtype=np.float32), rng.integers(0, 10, 16).astype("int32")
    got = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    logits = np.asarray(model(x, training=False)["logits_sup"], np.float32)
    rank = (logits > logits[np.arange(16), y][:, None]).sum(axis=1)  # Classes scored above the true one.
    assert got["top_1_accuracy"] == pytest.approx(np.mean(rank == 0))
    assert got["top_5_accuracy"] == pytest.approx(np.mean(rank < 5))


def test_float16_overflow_skips_the_step_and_halves_the_scale():
    precision.set_precision("float16")
    keras.utils.set_random_seed(1)
    model = build_model(TINY)
    opt = _compile(model, precision_name="float16")
    x, y = _batch(1)
    model.train_on_batch(x, y)
    opt.dynamic_scale.assign(2.0**120)  # Scaled gradients overflow float16 activations.
    before = [v.numpy().copy() for v in model.trainable_variables]
    slots = [v.numpy().copy() for v in opt.inner_optimizer.variables if v is not opt.iterations]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["loss_scale"] == 2.0**119
    for a, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())
    for a, v in zip(slots, [v for v in opt.inner_optimizer.variables if v is not opt.iterations]):
        np.testing.assert_array_equal(a, v.numpy())
    # The skipped batch still counts: iterations is the number of batches trained on.
    assert int(opt.iterations.numpy()) == 2


def test_global_bn_bfloat16_on_two_replicas(two_cpu_strategy):
    """Synchronized batch norm under mixed_bfloat16: no dtype errors, finite float32 losses."""
    precision.set_precision("bfloat16")
    with two_cpu_strategy.scope():
        model = build_model(TINY_GLOBAL_BN)
        _compile(model, name="momentum", precision_name="bfloat16")
    x, _ = _batch(2)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(8, "int32"))).batch(8)
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["contrast_loss"][0])


# ------------------------------------------------------------------ XLA


def test_xla_train_step_matches_graph_mode():
    keras.utils.set_random_seed(3)
    first = build_model(TINY, num_classes=3)
    second = build_model(TINY, num_classes=3)
    second.set_weights(first.get_weights())
    initial = first.get_weights()
    _compile(first, name="momentum", jit_compile=False)
    _compile(second, name="momentum", jit_compile=True)
    assert second.jit_compile
    for seed in (3, 4):
        x, y = _batch(seed)
        a = first.train_on_batch(x, y, return_dict=True)
        b = second.train_on_batch(x, y, return_dict=True)
        for key in ("contrast_loss", "sup_loss", "total_loss"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4)
    # XLA fuses and reorders float32 sums: weights agree within 2% of how far training moved them.
    for start, u, v in zip(initial, first.weights, second.weights):
        moved = np.max(np.abs(u.numpy() - start))
        np.testing.assert_allclose(v.numpy(), u.numpy(), rtol=0, atol=0.02 * moved + 1e-7)


# ------------------------------------------------------------------ Non-finite steps


def _assert_state_equal(expected, model, skip_iterations=True):
    names = _state_names(model)
    for name, a, b in zip(names, expected, _snapshot(model)):
        if skip_iterations and name.endswith("iteration"):
            continue
        np.testing.assert_array_equal(a, b, err_msg=name)


def _train_skipping(strategy, batches, skip=True):
    keras.utils.set_random_seed(5)
    with strategy.scope():
        model = build_model(MICRO_GLOBAL_BN, num_classes=3, skip_nonfinite=skip)
        _compile(model, lr=0.5)
    n = strategy.num_replicas_in_sync

    def dataset(batch):
        x, y = batch

        def fn(ctx):
            # One input pipeline feeds the replicas in turn: element r is replica r's half.
            per = len(x) // n
            return tf.data.Dataset.from_tensor_slices((x.reshape(n, per, *x.shape[1:]), y.reshape(n, per)))

        return strategy.distribute_datasets_from_function(fn)

    return model, [dataset(b) for b in batches]


@pytest.mark.parametrize("replicas", [1, 2])
def test_nonfinite_batch_leaves_state_unchanged(replicas, two_cpu_strategy):
    strategy = two_cpu_strategy if replicas == 2 else tf.distribute.get_strategy()
    good1, good2 = _batch(6), _batch(7)
    poisoned = (good2[0].copy(), good2[1])
    poisoned[0][-1, 3, 3, 0] = np.nan  # Last image: only the last replica's half.
    model, (ds1, ds_bad, ds2) = _train_skipping(strategy, [good1, poisoned, good2])
    first = model.fit(ds1, epochs=1, verbose=0).history
    assert first["nonfinite_steps"] == [0.0]
    state = _snapshot(model)
    bad = model.fit(ds_bad, epochs=1, verbose=0).history
    assert bad["nonfinite_steps"] == [1.0]
    # Weights, batch-norm statistics and LARS momenta bit-identical; iterations counts the batch.
    _assert_state_equal(state, model)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert bad["contrast_loss"] == [0.0] and bad["sup_loss"] == [0.0]  # Nothing averaged in.
    after = model.fit(ds2, epochs=1, verbose=0).history
    assert after["nonfinite_steps"] == [1.0]  # A run total: fit's epoch reset keeps it.
    assert np.isfinite(after["contrast_loss"][0]) and after["contrast_loss"][0] > 0
    moved = [not np.array_equal(a, v.numpy()) for a, v in zip(state, model.weights)]
    assert sum(moved) > len(moved) // 2
    if replicas == 2:
        return  # The clean comparison below is the 1-replica case's (it doubles the run time).

    # Independent path: the same model trained on the good batches only.
    clean, (c1, c2) = _train_skipping(strategy, [good1, good2])
    clean.fit(c1, epochs=1, verbose=0)
    clean_after = clean.fit(c2, epochs=1, verbose=0).history
    np.testing.assert_allclose(after["contrast_loss"], clean_after["contrast_loss"], rtol=1e-5)
    for name, u, v in zip(_state_names(model), model.weights, clean.weights):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


def test_export_of_a_bfloat16_model_computes_in_float32():
    """The TF-Hub module's contract is float32 whatever --precision trained it."""
    from tf_simclr.export import network as export

    precision.set_precision("bfloat16")
    keras.utils.set_random_seed(2)
    mixed = build_model(TINY)
    network = export.export_network(mixed)
    assert keras.config.dtype_policy().name == "mixed_bfloat16"  # Restored after the copy.
    assert {layer.dtype_policy.name for layer in network._flatten_layers() if hasattr(layer, "dtype_policy")} == {"float32"}
    precision.set_precision("float32")
    reference = build_model(TINY)
    reference.set_weights(mixed.get_weights())
    images = _batch(4)[0][..., :3]
    expected = reference(images, training=False)["final_avg_pool"]
    got = network(images, training=False)["final_avg_pool"]
    assert got.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
