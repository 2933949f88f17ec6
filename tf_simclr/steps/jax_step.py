"""The JAX train and test steps of `SimCLRModel`: the TensorFlow step's mathematics, stateless.

Keras's JAX trainer jits a pure function of the variable values, so the step
runs the model's `compute_losses` inside a `keras.StatelessScope` and returns
the new values instead of assigning them. Under `keras.distribution.DataParallel`
the batch is one global (sharded) array: no per-replica scaling, no gather; XLA
inserts the all-reduces.
"""

from __future__ import annotations

import os

import keras
from keras import ops


def train_step(model, state, data):
    """`state` is `(trainable, non_trainable, optimizer, metrics)` variable values.

    In the order of `model.trainable_variables`, `model.non_trainable_variables`,
    `model.optimizer.variables` and `model.metrics_variables`.
    """
    import jax

    trainable, non_trainable, optimizer_values, metric_values = state
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    optimizer = model.optimizer
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    optimizer_state = list(zip(optimizer.variables, optimizer_values))

    def scaled_loss(trainable_values):
        model_state = list(zip(model.trainable_variables, trainable_values)) + list(
            zip(model.non_trainable_variables, non_trainable)
        )
        (total, logs), updated = stateless(
            lambda: model.compute_losses(images, labels, training=True), model_state, model.non_trainable_variables
        )
        scaled, _ = stateless(lambda: optimizer.scale_loss(total), optimizer_state, [])
        return scaled, (total, logs, updated)

    if model.microbatch_size and model.train_mode == "pretrain":
        total, logs, gradients, new_non_trainable = cached_gradients(
            model, trainable, non_trainable, optimizer_state, images, labels)
    else:
        (_, (total, logs, new_non_trainable)), gradients = jax.value_and_grad(scaled_loss, has_aux=True)(trainable)
    learning_rate, _ = stateless(lambda: ops.cast(optimizer.learning_rate, "float32"), optimizer_state, [])
    new_trainable, new_optimizer = optimizer.stateless_apply(optimizer_values, gradients, trainable)
    finite = None
    if model.skip_nonfinite:
        # As the TF step: a LossScaleOptimizer judges its own (scaled) gradients.
        checked = [total, *([] if loss_scaling else gradients)]
        finite = ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in checked]))

        def keep(new, old):
            return [ops.where(finite, n, o) for n, o in zip(new, old)]

        new_trainable = keep(new_trainable, trainable)
        new_optimizer = keep(new_optimizer, optimizer_values)
        new_non_trainable = keep(new_non_trainable, non_trainable)
    # `iterations` counts batches, skipped ones included (the TF step's rule).
    new_optimizer = _advance_iterations(optimizer, optimizer_values, new_optimizer)

    def update_metrics():
        model.update_trackers(logs, finite)
        return model.step_results(learning_rate)

    results, new_metrics = stateless(update_metrics, list(zip(model.metrics_variables, metric_values)),
                                     model.metrics_variables)
    if loss_scaling:
        scale, _ = stateless(lambda: ops.cast(optimizer.dynamic_scale, "float32"),
                             list(zip(optimizer.variables, new_optimizer)), [])
        results["loss_scale"] = scale
    return results, (new_trainable, new_non_trainable, new_optimizer, new_metrics)


def cached_gradients(model, trainable, non_trainable, optimizer_state, images, labels):
    """`(total, logs, gradients, new non-trainable values)` of one pretraining batch, in chunks.

    The TensorFlow step's `cached_gradients` (`steps.gradient_cache`), stateless: pass 1
    discards its batch-norm updates instead of restoring them, and pass 2 threads the
    moving statistics from chunk to chunk.
    """
    import jax

    from tf_simclr.steps import gradient_cache as cache

    m = model.microbatch_size
    variables, others = model.trainable_variables, model.non_trainable_variables

    def state(trainable_values, non_trainable_values):
        return list(zip(variables, trainable_values)) + list(zip(others, non_trainable_values))

    def scale(loss):
        return stateless(lambda: model.optimizer.scale_loss(loss), optimizer_state, [])[0]

    # Augmented once (its seed state moves here): both passes see these very views.
    views, current = stateless(lambda: model.views(images), state(trainable, non_trainable), others)
    both, shift, chunks, chunk_labels = cache.split_batch(views, labels, m, model.microbatch_bn)
    num_images, count = int(images.shape[0]), len(chunks)

    # The chunks are looped over with `lax.scan` (see `chunk_loop`): a loop body's buffers are reused from one
    # chunk to the next, so memory holds one chunk's activations.
    stacked, stacked_labels = ops.stack(chunks), ops.stack(chunk_labels)

    def embed(_, chunk):  # Pass 1: its batch-norm updates are dropped (pass 2 makes them, once per chunk).
        z = stateless(lambda: model(chunk, training=True)["proj_head_output"], state(trainable, current), [])[0]
        return None, jax.lax.stop_gradient(z)

    _, embedded = jax.lax.scan(embed, None, stacked)  # Forward convolutions run at full speed in a loop.
    hidden = ops.cast(cache.assemble([embedded[c] for c in range(count)], m, shift), "float32")

    def full_loss(h):
        (loss, logs), _ = stateless(lambda: model.objective({"proj_head_output": h}, both),
                                    state(trainable, current), [])
        return scale(loss), (loss, logs)

    (_, (loss, logs)), hidden_gradient = jax.value_and_grad(full_loss, has_aux=True)(hidden)
    num_labelled = ops.maximum(ops.sum(ops.cast(both >= 0, "float32")), 1.0)
    embedding_gradients = ops.stack([cache.chunk_of(hidden_gradient, num_images, m, c, shift) for c in range(count)])

    def replay_chunk(carry, inputs):  # Pass 2: gradients summed, moving statistics threaded chunk to chunk.
        gradients, moving, ce_sum, correct, replay = carry
        chunk, embedding_gradient, labels_c, z_before = inputs

        def chunk_loss(trainable_values):
            def run():
                outputs = model(chunk, training=True)
                value, chunk_ce, chunk_correct = cache.surrogate(
                    outputs, embedding_gradient, labels_c, num_labelled, scale)
                return value, (chunk_ce, chunk_correct, outputs["proj_head_output"])

            (value, aux), updated = stateless(run, state(trainable_values, moving), others)
            return value, (aux, updated)

        (_, ((chunk_ce, chunk_correct, z), updated)), grads = jax.value_and_grad(chunk_loss, has_aux=True)(trainable)
        difference = ops.max(ops.abs(ops.cast(z, "float32") - ops.cast(z_before, "float32")))
        return (
            [g + d for g, d in zip(gradients, grads)],
            [ops.cast(u, v.dtype) for u, v in zip(updated, moving)],  # A loop's carry keeps its dtypes.
            ce_sum + chunk_ce, correct + chunk_correct, ops.maximum(replay, difference),
        ), None

    zero = ops.convert_to_tensor(0.0)
    start = ([ops.zeros_like(v) for v in trainable], list(current), zero, zero, zero)
    (gradients, current, ce_sum, correct, replay), _ = _scan(
        replay_chunk, start, (stacked, embedding_gradients, stacked_labels, embedded), chunk_loop())

    def decay_loss(trainable_values):
        decay, _ = stateless(model.weight_decay_loss, state(trainable_values, current), [])
        return scale(decay), decay

    (_, decay), decay_gradients = jax.value_and_grad(decay_loss, has_aux=True)(trainable)
    gradients = [g + d for g, d in zip(gradients, decay_gradients)]
    total, logs = cache.step_totals(logs, loss, decay, ce_sum, correct, num_labelled, replay,
                                    model.supervised_head is not None)
    return total, logs, gradients, current


LOOP_VARIABLE = "TF_SIMCLR_JAX_CHUNK_LOOP"


def chunk_loop() -> str:
    """How pass 2 loops over the chunks: `scan` (memory of one chunk) or `unrolled`.

    `scan` on GPUs and TPUs. On the CPU XLA runs the gradient convolutions inside a
    loop body about 20x slower than outside one (jax-ml/jax#12868; measured in
    docs/scaling.md), so there the chunks are unrolled, which keeps every chunk's
    activations (XLA's CPU scheduler does not free them in between). The
    environment variable TF_SIMCLR_JAX_CHUNK_LOOP=scan|unrolled overrides the choice.
    """
    import jax

    choice = os.environ.get(LOOP_VARIABLE) or ("unrolled" if jax.default_backend() == "cpu" else "scan")
    if choice not in ("scan", "unrolled"):
        raise ValueError(f"{LOOP_VARIABLE} must be 'scan' or 'unrolled'. Received: {choice!r}")
    return choice


def _scan(body, carry, xs, loop: str):
    """`jax.lax.scan(body, carry, xs)`, or the same steps as a Python loop (`loop='unrolled'`), outputs dropped."""
    import jax

    if loop == "scan":
        return jax.lax.scan(body, carry, xs)
    for index in range(int(xs[0].shape[0])):
        carry, _ = body(carry, [x[index] for x in xs])
    return carry, None


def test_step(model, state, data):
    """`model.evaluate_batch` run stateless on `(trainable, non_trainable, metrics)` values."""
    trainable, non_trainable, metric_values = state
    mapping = (
        list(zip(model.trainable_variables, trainable))
        + list(zip(model.non_trainable_variables, non_trainable))
        + list(zip(model.metrics_variables, metric_values))
    )
    results, updated = stateless(
        lambda: model.evaluate_batch(data), mapping, model.non_trainable_variables + model.metrics_variables
    )
    count = len(model.non_trainable_variables)
    return results, (trainable, updated[:count], updated[count:])


def stateless(fn, state_mapping, read_back):
    """Runs `fn()` with variables mapped to values (JAX); returns `(fn's result, new values of read_back)`.

    Assignments inside `fn` land in the scope, not the variables, so the step stays
    a pure function that `jax.jit` and `jax.grad` can trace.
    """
    with keras.StatelessScope(state_mapping=state_mapping) as scope:
        result = fn()
    values = dict((id(v), value) for v, value in state_mapping)
    updated = []
    for variable in read_back:
        value = scope.get_current_value(variable)
        updated.append(value if value is not None else values.get(id(variable), variable.value))
    return result, updated


def _advance_iterations(optimizer, old_values, new_values):
    """Sets `optimizer.iterations` to its old value + 1 in `new_values` (the batch counts even if skipped)."""
    new_values = list(new_values)
    for index, variable in enumerate(optimizer.variables):
        if variable is optimizer.iterations:
            new_values[index] = old_values[index] + ops.cast(1, old_values[index].dtype)
    return new_values
