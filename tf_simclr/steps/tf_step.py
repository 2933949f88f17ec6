"""The TensorFlow train step of `SimCLRModel`, and several steps per call under `tf.distribute`.

One optimizer step on one replica's batch: the model's `compute_losses` under a
`GradientTape`, the gradient of the global-batch mean (Keras sums gradients over
replicas, so each replica divides by their count), then the optimizer update, or,
with `--skip_nonfinite_steps`, no update at all when any replica saw a NaN/Inf.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tf_simclr import keras_internals
from tf_simclr.distribute import replica


def train_step(model, data):
    """One step of `model.fit` on the TensorFlow backend (what `SimCLRModel.train_step` runs)."""
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    optimizer = model.optimizer
    bn_statistics = model.batch_norm_statistics() if model.skip_nonfinite else []
    saved_statistics = [tf.identity(v.value) for v in bn_statistics]  # Read before the forward pass.
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    iterations_before = tf.identity(optimizer.iterations.value) if loss_scaling else None
    variables = model.trainable_variables
    if model.microbatch_size and model.train_mode == "pretrain":
        total, logs, gradients = cached_gradients(model, images, labels, variables)
    else:
        with tf.GradientTape() as tape:
            total, logs = model.compute_losses(images, labels, training=True)
            # Keras sums gradients over replicas; dividing gives the global-batch mean.
            # A LossScaleOptimizer (float16) scales here and unscales in `apply`.
            scaled = optimizer.scale_loss(total / replica.num_replicas())
        gradients = tape.gradient(scaled, variables)
    learning_rate = ops.cast(optimizer.learning_rate, "float32")  # The rate this step uses.
    finite = None
    if model.skip_nonfinite:
        # A LossScaleOptimizer judges its (scaled) gradients itself: an overflow there
        # means "lower the scale", not "bad batch", so only the loss is checked.
        finite = finite_on_all_replicas([total, *([] if loss_scaling else gradients)])

        def apply(grads):
            optimizer.apply_gradients(zip(grads, variables))

        def skip(saved):
            for variable, value in zip(bn_statistics, saved):
                variable.assign(value)
            optimizer.iterations.assign_add(1)

        apply_or_skip(finite, apply, (gradients,), skip, (saved_statistics,))
    else:
        optimizer.apply_gradients(zip(gradients, variables))
    if loss_scaling:
        # A LossScaleOptimizer that skips an overflow leaves `iterations` alone; count
        # the batch anyway so iterations stays the number of batches trained on.
        not_advanced = ops.equal(tf.identity(optimizer.iterations.value), iterations_before)
        optimizer.iterations.assign_add(ops.cast(not_advanced, optimizer.iterations.dtype))
    model.update_trackers(logs, finite)
    results = model.step_results(learning_rate)
    if loss_scaling:
        results["loss_scale"] = ops.cast(optimizer.dynamic_scale, "float32")
    return for_keras_reduction(results)


def cached_gradients(model, images, labels, variables):
    """`(total, logs, gradients)` of one pretraining batch, computed in chunks (`steps.gradient_cache`).

    The same values and gradients as the plain step's tape when batch norm is frozen
    or absent; with batch norm in training mode, each chunk normalizes with its own
    statistics (see `steps.gradient_cache`).
    """
    from tf_simclr.steps import gradient_cache as cache

    optimizer, m = model.optimizer, model.microbatch_size
    divide = float(replica.num_replicas())

    def scale(loss):  # What the plain step does to its loss before the tape's gradient.
        return optimizer.scale_loss(loss / divide)

    views = model.views(images)  # Augmented once: both passes see these very views.
    both, shift, chunks, chunk_labels = cache.split_batch(views, labels, m, model.microbatch_bn)
    num_images, count = int(images.shape[0]), len(chunks)

    # Pass 1: embeddings only, no tape; then the moving statistics go back (pass 2 moves them once).
    statistics = model.batch_norm_statistics()
    saved = [tf.identity(v.value) for v in statistics]
    embedded = []
    for chunk in chunks:
        chunk = after(embedded[-1:], chunk)
        embedded.append(tf.stop_gradient(model(chunk, training=True)["proj_head_output"]))
    with tf.control_dependencies(embedded):
        for variable, value in zip(statistics, saved):
            variable.assign(value)
    hidden = tf.cast(cache.assemble(embedded, m, shift), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        loss, logs = model.objective({"proj_head_output": hidden}, both)
        scaled = scale(loss)
    hidden_gradient = tape.gradient(scaled, hidden)

    # Pass 2: each chunk again, back-propagating its share of the cached gradient.
    num_labelled = tf.maximum(tf.reduce_sum(tf.cast(both >= 0, tf.float32)), 1.0)
    gradients = [tf.zeros_like(v) for v in variables]
    ce_sum = correct = replay = tf.constant(0.0)
    previous = [hidden_gradient]
    for c in range(count):
        with tf.GradientTape() as tape:
            outputs = model(after(previous, chunks[c]), training=True)
            value, chunk_ce, chunk_correct = cache.surrogate(
                outputs, cache.chunk_of(hidden_gradient, num_images, m, c, shift), chunk_labels[c], num_labelled, scale)
        chunk_gradients = tape.gradient(value, variables)
        gradients = [g if d is None else g + d for g, d in zip(gradients, chunk_gradients)]
        previous = gradients
        ce_sum, correct = ce_sum + chunk_ce, correct + chunk_correct
        difference = tf.cast(outputs["proj_head_output"], tf.float32) - tf.cast(embedded[c], tf.float32)
        replay = tf.maximum(replay, tf.reduce_max(tf.abs(difference)))
    with tf.GradientTape() as tape:
        decay = model.weight_decay_loss()
        scaled_decay = scale(decay)
    decay_gradients = tape.gradient(scaled_decay, variables)
    gradients = [g if d is None else g + d for g, d in zip(gradients, decay_gradients)]

    total, logs = cache.step_totals(logs, loss, decay, ce_sum, correct, num_labelled, replay,
                                    model.supervised_head is not None)
    return total, logs, gradients


def after(dependencies, tensor):
    """`tensor`, but read only once `dependencies` are computed.

    The chunk loop is unrolled in the graph, and nothing else orders its chunks:
    the executor may run several chunks' forward passes at once and keep all their
    activations alive, which is the memory chunking exists to save. Each chunk's
    input therefore waits for the previous chunk's result.
    """
    if not dependencies:
        return tensor
    with tf.control_dependencies(dependencies):
        return tf.identity(tensor)


def multi_step_function(model, force: bool = False):
    """Keras's train function, except several steps per call on several replicas; None to use Keras's own.

    Keras 3.15's `steps_per_execution` loop (a `while_loop` over optional inputs)
    fails under MirroredStrategy with distributed datasets ("You must feed a value
    for placeholder tensor 'while/cond/Placeholder'"). Our training datasets
    repeat forever and `steps_per_execution` divides every epoch, so a plain loop
    of `steps_per_execution` steps serves instead.
    """
    strategy = model.distribute_strategy
    if model.steps_per_execution == 1 or strategy.num_replicas_in_sync == 1 or model.run_eagerly:
        return None
    if model.train_function is not None and not force:
        return model.train_function

    def one_step(data):
        outputs = strategy.run(model.train_step, args=(data,))
        return keras_internals.reduce_per_replica(outputs, strategy, reduction="auto")

    @tf.function(reduce_retracing=True)
    def multi_step(iterator):
        outputs = one_step(next(iterator))
        for _ in tf.range(model.steps_per_execution - 1):
            outputs = one_step(next(iterator))
        return outputs

    return multi_step


def finite_on_all_replicas(tensors):
    """One boolean, the same on every replica: are all `tensors` finite on all of them?

    Replicas must agree, because applying gradients all-reduces them and syncs variables.
    """
    local = [ops.all(ops.isfinite(t)) for t in tensors if t is not None]
    nonfinite = 1.0 - ops.cast(ops.all(ops.stack(local)), "float32")
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        nonfinite = context.all_reduce(tf.distribute.ReduceOp.SUM, nonfinite)
    return ops.equal(nonfinite, 0.0)


def apply_or_skip(finite, apply_fn, apply_args, skip_fn, skip_args):
    """Runs `apply_fn(*apply_args)` if `finite` else `skip_fn(*skip_args)`, on every replica.

    Optimizers update mirrored variables through `merge_call`, which TensorFlow forbids
    inside a replica-context `cond` (MirroredStrategy on CPUs, for one); there the cond
    runs in the cross-replica context, as Keras's LossScaleOptimizer does.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: _no_output(apply_fn, apply_args), lambda: _no_output(skip_fn, skip_args))
        return

    def in_cross_replica(strategy, finite, apply_args, skip_args):
        # Every replica holds the same flag (it was all-reduced); take the first.
        decided = strategy.experimental_local_results(finite)[0]
        tf.cond(
            decided,
            lambda: _no_output(strategy.extended.call_for_each_replica, (apply_fn, apply_args)),
            lambda: _no_output(strategy.extended.call_for_each_replica, (skip_fn, skip_args)),
        )

    tf.distribute.get_replica_context().merge_call(in_cross_replica, args=(finite, apply_args, skip_args))


def _no_output(fn, args):
    fn(*args)
    return ops.convert_to_tensor(0)


def for_keras_reduction(logs: dict) -> dict:
    """Scalars as shape-[1] tensors under MultiWorkerMirroredStrategy.

    Keras 3 reduces step outputs across workers with `reduce("MEAN", v, axis=0)`,
    which fails on scalars; a [1] tensor reduces to the same scalar mean.
    """
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and keras_internals.in_multi_worker_mode(strategy):
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs
