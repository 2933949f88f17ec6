"""The SimCLR model: encoder + projection head (+ supervised head), and its training step.

Chen et al. 2020 (SimCLR) and Chen et al. 2020b (SimCLRv2, "Big Self-Supervised
Models are Strong Semi-Supervised Learners"). Pretraining, linear evaluation and
fine-tuning differ only in which head is trained and which variables are frozen,
so one class with one `train_step` serves all three.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from tf_simclr import heads as heads_lib
from tf_simclr import objective
from tf_simclr import replica
from tf_simclr import resnet as resnet_lib
from tf_simclr.config import ModelConfig

TRAIN_MODES = ("pretrain", "finetune")


class SimCLRModel(keras.Model):
    """Encoder, projection head and an optional supervised (linear) head.

    Called on images `[B, H, W, 3]` (float32 in [0, 1]) it returns a dict of the
    encoder's intermediate outputs (`initial_conv` ... `final_avg_pool`), the
    projection head's input and output and, with a supervised head, `logits_sup`.
    In pretraining, `fit` feeds batches `(images [B, H, W, 6], labels)` that hold two
    augmented views side by side on the channel axis; in fine-tuning and eval the
    images have 3 channels.

    Args:
        encoder: A `resnet.resnet(...)` model returning the dict of outputs.
        projection_head: `heads.ProjectionHead`.
        supervised_head: `heads.SupervisedHead` or None.
        train_mode: 'pretrain' (NT-Xent; the supervised head, if any, learns on
            stop-gradient features: linear eval while pretraining) or 'finetune'
            (cross-entropy on the supervised head only).
        temperature: NT-Xent temperature. Defaults to 0.1.
        hidden_norm: L2-normalize projections in the loss. Defaults to True.
        ft_proj_selector: Which projection-head layer feeds the supervised head
            (0 = the encoder output, -1 = the head's output), as SimCLRv2.
        skip_nonfinite: Skip a step whose loss or gradients are NaN/inf on any
            replica instead of applying it: weights, optimizer slots and batch-norm
            moving statistics stay as they were, the step's losses stay out of the
            running means, `optimizer.iterations` still advances (it counts batches)
            and the `nonfinite_steps` log counts such steps. Defaults to False (the
            step is applied as computed).
        device_augment: A `device_augment.DeviceAugment` layer: pretraining batches
            are then uint8 images `[B, H, W, 3]` that the step turns into two views
            on the accelerator (`--augment_on=device`). Defaults to None (views come
            from the host pipeline).
    """

    def __init__(
        self,
        encoder: keras.Model,
        projection_head: keras.layers.Layer,
        supervised_head: Optional[keras.layers.Layer] = None,
        *,
        train_mode: str = "pretrain",
        temperature: float = 0.1,
        hidden_norm: bool = True,
        ft_proj_selector: int = 0,
        skip_nonfinite: bool = False,
        device_augment: Optional[keras.layers.Layer] = None,
        name: str = "simclr",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}. Received: train_mode={train_mode!r}")
        if train_mode == "finetune" and supervised_head is None:
            raise ValueError("train_mode='finetune' needs a supervised_head (the number of classes).")
        self.encoder = encoder
        self.projection_head = projection_head
        self.supervised_head = supervised_head
        self.train_mode = train_mode
        self.temperature = temperature
        self.hidden_norm = hidden_norm
        self.ft_proj_selector = ft_proj_selector
        self.device_augment = device_augment
        self.skip_nonfinite = bool(skip_nonfinite)
        self.l2_weight_decay = 0.0
        # Ids, not a list: Keras would track a list of variables as new state.
        self._l2_decay_ids: frozenset = frozenset()
        names = ["total_loss", "contrast_loss", "contrast_acc", "contrast_entropy", "sup_loss", "sup_acc", "weight_decay"]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._nonfinite_steps = RunningTotal(name="nonfinite_steps")
        self._eval_trackers = {
            "top_1_accuracy": keras.metrics.SparseCategoricalAccuracy(name="top_1_accuracy"),
            "top_5_accuracy": keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top_5_accuracy"),
            "sup_loss": keras.metrics.Mean(name="sup_loss"),
        }

    # ---------------------------------------------------------------- Forward pass
    def call(self, images, training=False):
        outputs = dict(self.encoder(images, training=training))
        hiddens = self.projection_head(outputs["final_avg_pool"], training=training)
        outputs["proj_head_input"] = hiddens[0]
        outputs["proj_head_output"] = hiddens[-1]
        if self.supervised_head is not None:
            features = hiddens[self.ft_proj_selector]
            if self.train_mode == "pretrain":
                features = ops.stop_gradient(features)  # Linear eval must not shape the encoder.
            outputs["logits_sup"] = self.supervised_head(features, training=training)
        return outputs

    def checkpoint_parts(self) -> dict:
        """Groups saved separately, so a new supervised head can skip a pretraining checkpoint's."""
        parts = {"encoder": self.encoder, "projection_head": self.projection_head}
        if self.supervised_head is not None:
            parts["supervised_head"] = self.supervised_head
        if self.device_augment is not None:
            parts["device_augment"] = self.device_augment  # Its seed state: resumed runs draw new views.
        return parts

    def augment_on_device(self, images):
        """Two views of each uint8 image `[B, H, W, 3]`, drawn inside the compiled step (`--augment_on=device`).

        Returns `[2B, S, S, 3]`: every image's first view, then every second view
        (the encoder's batch as the contrastive loss pairs it). Every replica
        advances the same seed state, so the replica id is folded into the key:
        replicas must not draw the same crops for their different images.
        """
        from tf_simclr import device_augment as device_augment_lib

        layer = self.device_augment
        seed = ops.cast(layer.seed_generator.next(), "int32")
        replica_id = ops.cast(replica.current().replica_id, "int32")
        seed = seed + ops.stack([ops.zeros_like(replica_id), replica_id * 65599])
        return device_augment_lib.stacked_views(
            images, seed, image_size=layer.image_size, color_jitter_strength=layer.color_jitter_strength,
            blur=layer.blur, num_views=2,
        )

    # ---------------------------------------------------------------- Weight decay
    def weight_decay_exclusions(self) -> list:
        """Variables never decayed nor LARS-adapted: batch-norm parameters and biases.

        Decided by layer type and variable role, not by name matching (in Keras 3
        `variable.name` carries no layer path, which broke the reference's rule).
        """
        excluded = {}
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                for v in layer.weights:
                    excluded[id(v)] = v
            bias = getattr(layer, "bias", None)
            if bias is not None and isinstance(bias, keras.Variable):
                excluded[id(bias)] = bias
        return list(excluded.values())

    def configure_weight_decay(self, weight_decay: float, optimizer_applies_decay: bool) -> list:
        """Decides which variables get the L2 penalty in the loss; returns those the optimizer must skip.

        As the reference: with LARS the optimizer decays the encoder and projection
        head itself, and the loss carries only the supervised head's kernel decay;
        with momentum or Adam the loss carries decay of every non-batch-norm weight.

        Returns:
            The variables the optimizer must exclude from its own decay (and, for
            LARS, from the trust ratio).
        """
        excluded = self.weight_decay_exclusions()
        excluded_ids = {id(v) for v in excluded}
        self.l2_weight_decay = weight_decay
        if optimizer_applies_decay:
            head = self.supervised_head.trainable_weights if self.supervised_head is not None else []
            head_kernels = [v for v in head if id(v) not in excluded_ids]
            self._l2_decay_ids = frozenset(id(v) for v in head_kernels)
            return excluded + head_kernels
        batch_norm_ids = {
            id(v)
            for layer in self._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in layer.weights
        }
        self._l2_decay_ids = frozenset(id(v) for v in self.trainable_weights if id(v) not in batch_norm_ids)
        return excluded

    def l2_decay_variables(self) -> list:
        """Trainable variables whose L2 penalty is added to the loss (frozen ones drop out)."""
        return [v for v in self.trainable_weights if id(v) in self._l2_decay_ids]

    def weight_decay_loss(self):
        """`weight_decay * sum(||v||^2 / 2)` over `l2_decay_variables()` (tf.nn.l2_loss convention)."""
        if not self.l2_weight_decay:
            return ops.convert_to_tensor(0.0)
        terms = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in self.l2_decay_variables()]
        if not terms:
            return ops.convert_to_tensor(0.0)
        return self.l2_weight_decay * 0.5 * ops.sum(ops.stack(terms))

    # ---------------------------------------------------------------- Losses
    def compute_losses(self, images, labels, training: bool = True):
        """Backend-neutral loss of one (per-replica) batch.

        Returns:
            `(total_loss, logs)` where logs maps tracker names to scalar tensors.
        """
        logs = {}
        if self.train_mode == "pretrain":
            if self.device_augment is not None and images.shape[-1] == 3:
                images = self.augment_on_device(images)  # Already [2B, S, S, 3].
            else:
                if images.shape[-1] != 6:
                    raise ValueError(
                        "Pretraining expects two views stacked on the channel axis, images of shape "
                        f"[B, H, W, 6]. Received shape {tuple(images.shape)}: build the dataset with mode='pretrain'."
                    )
                view1, view2 = ops.split(images, 2, axis=-1)
                images = ops.concatenate([view1, view2], axis=0)
            labels = ops.concatenate([labels, labels], axis=0)
        outputs = self(images, training=training)
        total = ops.convert_to_tensor(0.0)
        if self.train_mode == "pretrain":
            loss, logits_ab, con_labels = objective.contrastive_loss(
                outputs["proj_head_output"], hidden_norm=self.hidden_norm, temperature=self.temperature
            )
            logs["contrast_loss"] = loss
            logs["contrast_acc"], logs["contrast_entropy"] = objective.contrastive_metrics(logits_ab, con_labels)
            total = total + loss
        if "logits_sup" in outputs:
            sup_loss, sup_acc = supervised_loss(labels, outputs["logits_sup"])
            logs["sup_loss"], logs["sup_acc"] = sup_loss, sup_acc
            total = total + sup_loss
        decay = self.weight_decay_loss()
        logs["weight_decay"] = decay
        logs["total_loss"] = total + decay
        return logs["total_loss"], logs

    # ---------------------------------------------------------------- Steps (TensorFlow backend)
    def make_train_function(self, force=False):
        """Keras's loop, except several steps per call on several replicas.

        Keras 3.15's `steps_per_execution` loop (a `while_loop` over optional
        inputs) fails under MirroredStrategy with distributed datasets ("You must
        feed a value for placeholder tensor 'while/cond/Placeholder'"). Our training
        datasets repeat forever and `steps_per_execution` divides every epoch, so a
        plain loop of `steps_per_execution` steps serves instead.
        """
        if keras.backend.backend() != "tensorflow":
            return super().make_train_function(force)  # JAX: Keras's own jitted loop.
        import tensorflow as tf

        strategy = self.distribute_strategy
        if self.steps_per_execution == 1 or strategy.num_replicas_in_sync == 1 or self.run_eagerly:
            return super().make_train_function(force)
        if self.train_function is not None and not force:
            return self.train_function
        from keras.src.backend.tensorflow.trainer import reduce_per_replica

        def one_step(data):
            outputs = strategy.run(self.train_step, args=(data,))
            return reduce_per_replica(outputs, strategy, reduction="auto")

        @tf.function(reduce_retracing=True)
        def multi_step(iterator):
            outputs = one_step(next(iterator))
            for _ in tf.range(self.steps_per_execution - 1):
                outputs = one_step(next(iterator))
            return outputs

        self.train_function = multi_step
        return multi_step

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras's peek at the first batch when model and optimizer are already built.

        The peek consumes a training batch at every `fit` call (a resumed run would see
        another data order than an uninterrupted one) and, under
        MultiWorkerMirroredStrategy, fails reducing the per-replica batch.
        """
        built = all(layer.built for layer in self._flatten_layers())
        if keras.backend.backend() == "tensorflow" and built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, *args):
        """One optimizer step: `train_step(data)` under TensorFlow, `train_step(state, data)` under JAX."""
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        return self._tf_train_step(*args)

    def _tf_train_step(self, data):
        import tensorflow as tf  # The TF trainer's step; the math above is backend-neutral.

        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        optimizer = self.optimizer
        bn_statistics = self._batch_norm_statistics() if self.skip_nonfinite else []
        saved_statistics = [tf.identity(v.value) for v in bn_statistics]  # Read before the forward pass.
        loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        iterations_before = tf.identity(optimizer.iterations.value) if loss_scaling else None
        with tf.GradientTape() as tape:
            total, logs = self.compute_losses(images, labels, training=True)
            # Keras sums gradients over replicas; dividing gives the global-batch mean.
            # A LossScaleOptimizer (float16) scales here and unscales in `apply`.
            scaled = optimizer.scale_loss(total / replica.num_replicas())
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        learning_rate = ops.cast(optimizer.learning_rate, "float32")  # The rate this step uses.
        if self.skip_nonfinite:
            # A LossScaleOptimizer judges its (scaled) gradients itself: an overflow there
            # means "lower the scale", not "bad batch", so only the loss is checked.
            checked = [] if loss_scaling else gradients
            finite = _finite_on_all_replicas([total, *checked])

            def apply(grads):
                optimizer.apply_gradients(zip(grads, variables))

            def skip(saved):
                for variable, value in zip(bn_statistics, saved):
                    variable.assign(value)
                optimizer.iterations.assign_add(1)

            _apply_or_skip(finite, apply, (gradients,), skip, (saved_statistics,))
        else:
            finite = None
            optimizer.apply_gradients(zip(gradients, variables))
        if loss_scaling:
            # A LossScaleOptimizer that skips an overflow leaves `iterations` alone; count
            # the batch anyway so iterations stays the number of batches trained on.
            not_advanced = ops.equal(tf.identity(optimizer.iterations.value), iterations_before)
            optimizer.iterations.assign_add(ops.cast(not_advanced, optimizer.iterations.dtype))
        self._update_trackers(logs, finite)
        results = {**self._results(), "learning_rate": learning_rate}
        if self.skip_nonfinite:
            results["nonfinite_steps"] = self._nonfinite_steps.result()
        if loss_scaling:
            results["loss_scale"] = ops.cast(optimizer.dynamic_scale, "float32")
        return _for_keras_reduction(results)

    # ---------------------------------------------------------------- Steps (JAX backend)
    def _jax_train_step(self, state, data):
        """The TF step's maths, stateless: Keras's JAX trainer threads the variables through `state`.

        `state` is `(trainable, non_trainable, optimizer, metrics)` variable values in
        the order of `self.trainable_variables`, `self.non_trainable_variables`,
        `self.optimizer.variables` and `self.metrics_variables`. Under
        `keras.distribution.DataParallel` the batch is one global (sharded) array, so
        there is no per-replica scaling and no gather: XLA inserts the all-reduces.
        """
        import jax

        trainable, non_trainable, optimizer_values, metric_values = state
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        optimizer = self.optimizer
        loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        optimizer_state = list(zip(optimizer.variables, optimizer_values))

        def scaled_loss(trainable_values):
            model_state = list(zip(self.trainable_variables, trainable_values)) + list(
                zip(self.non_trainable_variables, non_trainable)
            )
            (total, logs), updated = _stateless(
                lambda: self.compute_losses(images, labels, training=True), model_state, self.non_trainable_variables
            )
            scaled, _ = _stateless(lambda: optimizer.scale_loss(total), optimizer_state, [])
            return scaled, (total, logs, updated)

        (_, (total, logs, new_non_trainable)), gradients = jax.value_and_grad(scaled_loss, has_aux=True)(trainable)
        learning_rate, _ = _stateless(lambda: ops.cast(optimizer.learning_rate, "float32"), optimizer_state, [])
        new_trainable, new_optimizer = optimizer.stateless_apply(optimizer_values, gradients, trainable)
        finite = None
        if self.skip_nonfinite:
            # As the TF step: a LossScaleOptimizer judges its own (scaled) gradients.
            finite = ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in [total, *([] if loss_scaling else gradients)]]))
            keep = lambda new, old: [ops.where(finite, n, o) for n, o in zip(new, old)]  # noqa: E731
            new_trainable = keep(new_trainable, trainable)
            new_optimizer = keep(new_optimizer, optimizer_values)
            new_non_trainable = keep(new_non_trainable, non_trainable)
        # `iterations` counts batches, skipped ones included (the TF step's rule).
        new_optimizer = _advance_iterations(optimizer, optimizer_values, new_optimizer)

        def update_metrics():
            self._update_trackers(logs, finite)
            results = {**self._results(), "learning_rate": learning_rate}
            if self.skip_nonfinite:
                results["nonfinite_steps"] = self._nonfinite_steps.result()
            return results

        results, new_metrics = _stateless(update_metrics, list(zip(self.metrics_variables, metric_values)), self.metrics_variables)
        if loss_scaling:
            scale, _ = _stateless(lambda: ops.cast(optimizer.dynamic_scale, "float32"), list(zip(optimizer.variables, new_optimizer)), [])
            results["loss_scale"] = scale
        return results, (new_trainable, new_non_trainable, new_optimizer, new_metrics)

    def _jax_test_step(self, state, data):
        """`_eval_batch` run stateless on `(trainable, non_trainable, metrics)` values."""
        trainable, non_trainable, metric_values = state
        mapping = (
            list(zip(self.trainable_variables, trainable))
            + list(zip(self.non_trainable_variables, non_trainable))
            + list(zip(self.metrics_variables, metric_values))
        )
        results, updated = _stateless(
            lambda: self._eval_batch(data), mapping, self.non_trainable_variables + self.metrics_variables
        )
        count = len(self.non_trainable_variables)
        return results, (trainable, updated[:count], updated[count:])

    def _update_trackers(self, logs, finite):
        """Adds the step's losses to the running means, unless the step was skipped (`finite` False)."""
        if finite is None:
            for name, value in logs.items():
                self._trackers[name].update_state(value)
            return
        weight = ops.cast(finite, "float32")
        for name, value in logs.items():
            # NaN * 0 is NaN: replace the value, not only its weight.
            self._trackers[name].update_state(ops.where(finite, value, 0.0), sample_weight=weight)
        self._nonfinite_steps.update_state(1.0 - weight)

    def _batch_norm_statistics(self) -> list:
        """Moving means and variances: the forward pass updates them, a skipped step restores them."""
        return [
            variable
            for layer in self._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)
            for variable in (layer.moving_mean, layer.moving_variance)
        ]

    def test_step(self, *args):
        """Evaluation of the supervised head: `test_step(data)` (TensorFlow), `test_step(state, data)` (JAX)."""
        if keras.backend.backend() == "jax":
            return self._jax_test_step(*args)
        return self._eval_batch(args[0])

    def _eval_batch(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.supervised_head is None:
            raise ValueError("Evaluation needs a supervised head: pretrain with lineareval_while_pretraining or fine-tune.")
        logits = self(images, training=False)["logits_sup"]
        labels = ops.cast(labels, "int32")
        sup_loss, _ = supervised_loss(labels, logits)
        self._eval_trackers["top_1_accuracy"].update_state(labels, logits)
        if ops.shape(logits)[-1] >= 5:
            self._eval_trackers["top_5_accuracy"].update_state(labels, logits)
        self._eval_trackers["sup_loss"].update_state(sup_loss)
        return _for_keras_reduction({name: m.result() for name, m in self._eval_trackers.items()})

    def _results(self):
        return {name: m.result() for name, m in self._trackers.items() if self._reports(name)}

    def _reports(self, name):
        if name.startswith("contrast"):
            return self.train_mode == "pretrain"
        if name.startswith("sup"):
            return self.supervised_head is not None
        return True

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._eval_trackers.values()) + [self._nonfinite_steps]


class RunningTotal(keras.metrics.Sum):
    """A sum that `fit` does not reset every epoch: the run's total (of this process)."""

    def reset_state(self):
        pass

    def reset_total(self):
        super().reset_state()


def _stateless(fn, state_mapping, read_back):
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


def _finite_on_all_replicas(tensors):
    """One boolean, the same on every replica: are all `tensors` finite on all of them?

    Replicas must agree, because applying gradients all-reduces them and syncs variables.
    """
    import tensorflow as tf

    local = [ops.all(ops.isfinite(t)) for t in tensors if t is not None]
    nonfinite = 1.0 - ops.cast(ops.all(ops.stack(local)), "float32")
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        nonfinite = context.all_reduce(tf.distribute.ReduceOp.SUM, nonfinite)
    return ops.equal(nonfinite, 0.0)


def _apply_or_skip(finite, apply_fn, apply_args, skip_fn, skip_args):
    """Runs `apply_fn(*apply_args)` if `finite` else `skip_fn(*skip_args)`, on every replica.

    Optimizers update mirrored variables through `merge_call`, which TensorFlow forbids
    inside a replica-context `cond` (MirroredStrategy on CPUs, for one); there the cond
    runs in the cross-replica context, as Keras's LossScaleOptimizer does.
    """
    import tensorflow as tf

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


def _for_keras_reduction(logs: dict) -> dict:
    """Scalars as shape-[1] tensors under MultiWorkerMirroredStrategy.

    Keras 3 reduces step outputs across workers with `reduce("MEAN", v, axis=0)`,
    which fails on scalars; a [1] tensor reduces to the same scalar mean.
    """
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode():
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs


def supervised_loss(labels, logits):
    """Mean softmax cross-entropy and accuracy over examples with a label (>= 0).

    Unlabeled examples (label -1, e.g. STL-10's `unlabelled` split or a flat image
    folder) are ignored, so linear eval while pretraining works on mixed data.
    """
    labels = ops.cast(labels, "int32")
    valid = ops.cast(labels >= 0, "float32")
    safe = ops.maximum(labels, 0)
    logits = ops.cast(logits, "float32")
    ce = -ops.take_along_axis(ops.log_softmax(logits, axis=-1), safe[:, None], axis=-1)[:, 0]
    count = ops.maximum(ops.sum(valid), 1.0)
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), safe), "float32")
    return ops.sum(ce * valid) / count, ops.sum(correct * valid) / count


def build_model(
    config: ModelConfig,
    *,
    num_classes: Optional[int] = None,
    train_mode: str = "pretrain",
    temperature: float = 0.1,
    hidden_norm: bool = True,
    zero_init_logits_layer: bool = False,
    skip_nonfinite: bool = False,
    device_augment: Optional[keras.layers.Layer] = None,
) -> SimCLRModel:
    """Builds (and initializes) a SimCLR model from a `ModelConfig`.

    Args:
        config: Encoder and head shapes.
        num_classes: Adds a supervised head with this many classes (needed for
            fine-tuning and for linear eval while pretraining). Defaults to None.
        train_mode: 'pretrain' or 'finetune'.
        temperature, hidden_norm: NT-Xent settings.
        zero_init_logits_layer: Start the supervised head at zero.
        skip_nonfinite, device_augment: See `SimCLRModel`.
    """
    encoder = resnet_lib.resnet(
        depth=config.resnet_depth,
        width_multiplier=config.width_multiplier,
        cifar_stem=config.cifar_stem,
        sk_ratio=config.sk_ratio,
        se_ratio=config.se_ratio,
        batch_norm_decay=config.batch_norm_decay,
        global_bn=config.global_bn,
    )
    projection_head = heads_lib.ProjectionHead(
        mode=config.proj_head_mode,
        out_dim=config.proj_out_dim,
        num_layers=config.num_proj_layers,
        batch_norm_decay=config.batch_norm_decay,
        global_bn=config.global_bn,
        name="projection_head",
    )
    supervised_head = None
    if num_classes:
        supervised_head = heads_lib.SupervisedHead(num_classes, zero_init=zero_init_logits_layer, name="head_supervised")
    model = SimCLRModel(
        encoder,
        projection_head,
        supervised_head,
        train_mode=train_mode,
        temperature=temperature,
        hidden_norm=hidden_norm,
        ft_proj_selector=config.ft_proj_selector,
        skip_nonfinite=skip_nonfinite,
        device_augment=device_augment,
    )
    if device_augment is not None:
        device_augment.build((None, None, None, 3))
    model(ops.zeros((1, config.image_size, config.image_size, 3)), training=False)
    return model
