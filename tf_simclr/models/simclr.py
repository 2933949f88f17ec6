"""The SimCLR model: encoder + projection head (+ supervised head), its forward pass and its losses.

Chen et al. 2020 (SimCLR) and Chen et al. 2020b (SimCLRv2, "Big Self-Supervised
Models are Strong Semi-Supervised Learners"). Pretraining, linear evaluation and
fine-tuning differ only in which head is trained and which variables are frozen,
so one class serves all three. The steps that train it live in
`steps.tf_step` (TensorFlow) and `steps.jax_step` (JAX); the methods
below that Keras calls (`train_step`, `test_step`, `make_train_function`) only
hand over to them.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from tf_simclr import keras_internals
from tf_simclr.distribute import replica
from tf_simclr.losses import supervised_loss

TRAIN_MODES = ("pretrain", "finetune", "distill")
# What `fit` logs besides the objective's own metrics.
BASE_METRICS = ("total_loss", "sup_loss", "sup_acc", "weight_decay")


class SimCLRModel(keras.Model):
    """Encoder, projection head and an optional supervised (linear) head.

    Called on images `[B, H, W, 3]` (float32 in [0, 1]) it returns a dict of the
    encoder's outputs (`final_avg_pool`, and for ResNet `initial_conv` ...
    `block_group4`), the projection head's input and output and, with a
    supervised head, `logits_sup`. In pretraining, `fit` feeds batches
    `(images [B, H, W, 6], labels)` that hold two augmented views side by side on
    the channel axis (or uint8 images `[B, H, W, 3]` that `device_augment` turns
    into views); in fine-tuning and eval the images have 3 channels.

    Args:
        encoder: A functional model `images -> dict` with `final_avg_pool`
            (`models.backbones.build_encoder`).
        projection_head: `heads.ProjectionHead`.
        supervised_head: `heads.SupervisedHead` or None.
        objective: The pretraining loss (`losses.build_loss`, e.g. `NTXent`),
            or in distillation `losses.Distillation`; None in fine-tuning.
        train_mode: 'pretrain' (the objective; the supervised head, if any,
            learns on stop-gradient features: linear eval while pretraining),
            'finetune' (cross-entropy on the supervised head only) or 'distill'
            (the student's supervised head matches a frozen `teacher`'s logits on
            the same views).
        ft_proj_selector: Which projection-head layer feeds the supervised head
            (0 = the encoder output, -1 = the head's output), as SimCLRv2.
        skip_nonfinite: Skip a step whose loss or gradients are NaN/inf on any
            replica instead of applying it (see `steps.tf_step`).
        device_augment: An `augment.device.DeviceAugment` layer: pretraining
            batches are then uint8 images the model turns into views on the
            accelerator (`--augment_on=device`).
        teacher: Distillation's frozen `images -> logits` model
            (`models.teacher.load_teacher`), run in inference mode and never
            trained. Not one of `checkpoint_parts`: checkpoints and exports hold
            the student only, and a resumed run loads the teacher again. Models
            built to export or evaluate a student need none.
        microbatch_size: Pretraining computes each replica's loss and gradient
            in chunks of this many images (`steps.gradient_cache`); 0 = at once.
        microbatch_bn: Which rows a chunk holds, hence shares batch statistics
            with: 'paired' (both views of its images) or 'shifted' (view 2 of
            the next chunk's images).
    """

    def __init__(
        self,
        encoder: keras.Model,
        projection_head: keras.layers.Layer,
        supervised_head: Optional[keras.layers.Layer] = None,
        *,
        objective=None,
        train_mode: str = "pretrain",
        ft_proj_selector: int = 0,
        skip_nonfinite: bool = False,
        device_augment: Optional[keras.layers.Layer] = None,
        teacher: Optional[keras.Model] = None,
        microbatch_size: int = 0,
        microbatch_bn: str = "paired",
        name: str = "simclr",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}. Received: train_mode={train_mode!r}")
        if train_mode != "pretrain" and supervised_head is None:
            raise ValueError(f"train_mode={train_mode!r} needs a supervised_head (the number of classes).")
        if train_mode != "finetune" and objective is None:
            raise ValueError(f"train_mode={train_mode!r} needs an objective (e.g. losses.NTXent(), "
                             "losses.Distillation()).")
        self.encoder = encoder
        self.projection_head = projection_head
        self.supervised_head = supervised_head
        self.objective = objective if train_mode != "finetune" else None
        if teacher is not None and train_mode != "distill":
            raise ValueError(f"Only train_mode='distill' has a teacher. Received: train_mode={train_mode!r}")
        if teacher is not None:
            teacher.trainable = False
        self.teacher = teacher
        self.microbatch_size = int(microbatch_size) if train_mode == "pretrain" else 0
        self.microbatch_bn = microbatch_bn
        self.train_mode = train_mode
        self.ft_proj_selector = ft_proj_selector
        self.device_augment = device_augment
        self.skip_nonfinite = bool(skip_nonfinite)
        self.l2_weight_decay = 0.0
        # Ids, not a list: Keras would track a list of variables as new state.
        self._l2_decay_ids: frozenset = frozenset()
        base = [n for n in BASE_METRICS if train_mode != "distill" or not n.startswith("sup")]
        chunked = ("replay_error",) if self.microbatch_size else ()
        names = list(dict.fromkeys(base + list(getattr(self.objective, "metric_names", ())) + list(chunked)))
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._nonfinite_steps = RunningTotal(name="nonfinite_steps")
        self._eval_trackers = {
            "top_1_accuracy": keras.metrics.SparseCategoricalAccuracy(name="top_1_accuracy"),
            "sup_loss": keras.metrics.Mean(name="sup_loss"),
        }
        num_classes = getattr(supervised_head, "num_classes", 0) or 0
        if num_classes > 5:  # Top-5 means something only with more than 5 classes.
            self._eval_trackers["top_5_accuracy"] = keras.metrics.SparseTopKCategoricalAccuracy(
                k=5, name="top_5_accuracy")

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

    def views(self, images):
        """The encoder's batch of views `[2B, S, S, 3]` (all first views, then all second views).

        From `[B, H, W, 6]` host views, or from uint8 `[B, H, W, 3]` images augmented
        here (`--augment_on=device`).
        """
        if self.device_augment is not None and images.shape[-1] == 3:
            return self.device_augment(images, replica_id=replica.current().replica_id)
        if images.shape[-1] != 6:
            raise ValueError(
                "Pretraining expects two views stacked on the channel axis, images of shape "
                f"[B, H, W, 6]. Received shape {tuple(images.shape)}: build the dataset with mode='pretrain'."
            )
        view1, view2 = ops.split(images, 2, axis=-1)
        return ops.concatenate([view1, view2], axis=0)

    # ---------------------------------------------------------------- Losses
    def set_weight_decay(self, plan) -> None:
        """Uses an `optim.weight_decay.WeightDecayPlan`: which variables' L2 penalty the loss carries."""
        self.l2_weight_decay = plan.weight_decay
        self._l2_decay_ids = plan.loss_variable_ids

    def l2_decay_variables(self) -> list:
        """Trainable variables whose L2 penalty is added to the loss (frozen ones drop out)."""
        return [v for v in self.trainable_weights if id(v) in self._l2_decay_ids]

    def weight_decay_loss(self):
        """`weight_decay * sum(||v||^2 / 2)` over `l2_decay_variables()` (tf.nn.l2_loss convention)."""
        terms = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in self.l2_decay_variables()]
        if not self.l2_weight_decay or not terms:
            return ops.convert_to_tensor(0.0)
        return self.l2_weight_decay * 0.5 * ops.sum(ops.stack(terms))

    def compute_losses(self, images, labels, training: bool = True):
        """Backend-neutral loss of one (per-replica) batch.

        Returns:
            `(total_loss, logs)` where logs maps tracker names to scalar tensors.
        """
        logs = {}
        if self.train_mode == "pretrain":
            images = self.views(images)
            labels = ops.concatenate([labels, labels], axis=0)
        outputs = self(images, training=training)
        if self.train_mode == "distill":
            if self.teacher is None:
                raise ValueError("train_mode='distill' trains only with a teacher: build the model with teacher=...")
            # The teacher sees exactly the student's views, in inference mode (batch norm statistics fixed).
            outputs["teacher_logits"] = ops.stop_gradient(self.teacher(images, training=False))
        total = ops.convert_to_tensor(0.0)
        if self.objective is not None:
            loss, objective_logs = self.objective(outputs, labels)
            logs.update(objective_logs)
            total = total + loss
        if "logits_sup" in outputs and self.train_mode != "distill":  # Distillation weighs its labels itself.
            logs["sup_loss"], logs["sup_acc"] = supervised_loss(labels, outputs["logits_sup"])
            total = total + logs["sup_loss"]
        logs["weight_decay"] = self.weight_decay_loss()
        logs["total_loss"] = total + logs["weight_decay"]
        return logs["total_loss"], logs

    def evaluate_batch(self, data):
        """Top-1 (and top-5, with more than 5 classes) accuracy and loss of the supervised head on one batch."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.supervised_head is None:
            raise ValueError("Evaluation needs a supervised head: pretrain with lineareval_while_pretraining or fine-tune.")
        # Metrics in float32: top-k ops take no bfloat16/float16 logits (mixed precision).
        logits = ops.cast(self(images, training=False)["logits_sup"], "float32")
        labels = ops.cast(labels, "int32")
        sup_loss, _ = supervised_loss(labels, logits)
        for name, tracker in self._eval_trackers.items():
            tracker.update_state(sup_loss) if name == "sup_loss" else tracker.update_state(labels, logits)
        return {name: m.result() for name, m in self._eval_trackers.items()}

    # ---------------------------------------------------------------- Metrics
    def update_trackers(self, logs, finite=None):
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

    def step_results(self, learning_rate) -> dict:
        """What a train step reports: the running means it tracks, the learning rate, skipped steps."""
        results = {name: m.result() for name, m in self._trackers.items() if self._reports(name)}
        results["learning_rate"] = learning_rate
        if self.skip_nonfinite:
            results["nonfinite_steps"] = self._nonfinite_steps.result()
        return results

    def _reports(self, name):
        if name.startswith("sup") and self.train_mode != "distill":
            return self.supervised_head is not None
        return True

    def batch_norm_statistics(self) -> list:
        """Moving means and variances: the forward pass updates them, a skipped step restores them."""
        return [
            variable
            for layer in keras_internals.sublayers(self)
            if isinstance(layer, keras.layers.BatchNormalization)
            for variable in (layer.moving_mean, layer.moving_variance)
        ]

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._eval_trackers.values()) + [self._nonfinite_steps]

    # ---------------------------------------------------------------- Keras hooks (hand-overs)
    def train_step(self, *args):
        """One optimizer step: `train_step(data)` under TensorFlow, `train_step(state, data)` under JAX."""
        if keras.backend.backend() == "jax":
            from tf_simclr.steps import jax_step

            return jax_step.train_step(self, *args)
        from tf_simclr.steps import tf_step

        return tf_step.train_step(self, *args)

    def test_step(self, *args):
        """Evaluation of the supervised head: `test_step(data)` (TensorFlow), `test_step(state, data)` (JAX)."""
        if keras.backend.backend() == "jax":
            from tf_simclr.steps import jax_step

            return jax_step.test_step(self, *args)
        from tf_simclr.steps import tf_step

        return tf_step.for_keras_reduction(self.evaluate_batch(args[0]))

    def make_train_function(self, force=False):
        """Keras's, except several steps per call on several replicas (`steps.tf_step.multi_step_function`)."""
        if keras.backend.backend() == "tensorflow":
            from tf_simclr.steps import tf_step

            function = tf_step.multi_step_function(self, force)
            if function is not None:
                self.train_function = function
                return function
        return super().make_train_function(force)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras's peek at the first batch when model and optimizer are built (keras_internals, 3)."""
        built = all(layer.built for layer in keras_internals.sublayers(self))
        if keras.backend.backend() == "tensorflow" and built and (self.optimizer is None or self.optimizer.built):
            return
        keras_internals.parent_maybe_symbolic_build(SimCLRModel, self, iterator=iterator, data_batch=data_batch)


class RunningTotal(keras.metrics.Sum):
    """A sum that `fit` does not reset every epoch: the run's total (of this process)."""

    def reset_state(self):
        pass

    def reset_total(self):
        super().reset_state()
