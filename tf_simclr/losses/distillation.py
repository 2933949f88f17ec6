"""SimCLRv2's distillation loss: the student matches a frozen teacher's softened class distribution.

Chen et al. 2020b ("Big Self-Supervised Models are Strong Semi-Supervised Learners",
eq. 2-3): on unlabelled images, cross-entropy between the teacher's
`softmax(logits_T / tau)` and the student's `softmax(logits_S / tau)`, optionally
mixed with the ordinary cross-entropy on the examples that carry a label:

    loss = label_weight * CE(labels, logits_S) + (1 - label_weight) * distill

`label_weight` is the paper's `1 - alpha` (the paper weighs the distillation term
with alpha); 0 means distillation only, and labels are then never read. Both terms
are sums over examples divided by the batch size, as the paper's sums over the
labelled set and over all images: a labelled example weighs as much as any other.
(A mean over the batch's few labelled examples would weigh each of them ~100x at 1%
labels, and its noise swamps the distillation signal.)

The tau^2 factor: the reference's colab multiplies the distillation term by tau^2,
the paper's equation does not. Its gradient with respect to the student's logits is
`(p_S - p_T) / tau`, so tau^2 keeps the gradient's size, and with it the learning
rate, independent of tau (Hinton et al. 2015). Both are reasonable, they agree at
the default tau = 1, and `temperature_squared` picks one (default: the colab's).
Backend-neutral (keras.ops); computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

from keras import ops

from tf_simclr.losses.supervised import supervised_loss


def distillation_loss(teacher_logits, student_logits, temperature: float = 1.0, temperature_squared: bool = True):
    """Mean over the batch of `-sum_y p_T(y; tau) log p_S(y; tau)`, times tau^2 if asked.

    The teacher's logits are treated as constants (no gradient flows into them).
    """
    tau = float(temperature)
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
    student = ops.cast(student_logits, "float32")
    targets = ops.softmax(teacher / tau, axis=-1)
    per_example = -ops.sum(targets * ops.log_softmax(student / tau, axis=-1), axis=-1)
    loss = ops.mean(per_example)
    return loss * (tau * tau) if temperature_squared else loss


def agreement(teacher_logits, student_logits):
    """Share of examples whose student's top class is the teacher's: a label-free progress measure."""
    same = ops.equal(ops.argmax(teacher_logits, axis=-1), ops.argmax(student_logits, axis=-1))
    return ops.mean(ops.cast(same, "float32"))


class Distillation:
    """The `--train_mode=distill` objective on one replica's batch of single views.

    Called with the student's outputs (which hold `logits_sup`, and `teacher_logits`
    put there by the model from the frozen teacher on the same images) and the
    labels (-1 = unlabelled; not read at all when `label_weight` is 0).
    """

    num_views = 1

    def __init__(self, temperature: float = 1.0, label_weight: float = 0.0, temperature_squared: bool = True):
        if temperature <= 0:
            raise ValueError(f"--distill_temperature must be > 0. Received: {temperature}")
        if not 0.0 <= label_weight <= 1.0:
            raise ValueError(f"--distill_label_weight must be in [0, 1] (0 = distillation only). Received: {label_weight}")
        self.temperature = float(temperature)
        self.label_weight = float(label_weight)
        self.temperature_squared = bool(temperature_squared)
        self.metric_names = ("distill_loss", "teacher_agreement") + (("sup_loss", "sup_acc") if self.label_weight else ())

    def __call__(self, outputs: dict, labels=None):
        student, teacher = outputs["logits_sup"], outputs["teacher_logits"]
        distill = distillation_loss(teacher, student, self.temperature, self.temperature_squared)
        logs = {"distill_loss": distill, "teacher_agreement": agreement(teacher, student)}
        if not self.label_weight:
            return distill, logs
        logs["sup_loss"], logs["sup_acc"] = supervised_loss(labels, student)  # Means over labelled examples.
        labelled_share = ops.mean(ops.cast(ops.cast(labels, "int32") >= 0, "float32"))
        labelled = logs["sup_loss"] * labelled_share  # Their cross-entropies summed, over the batch size.
        return self.label_weight * labelled + (1.0 - self.label_weight) * distill, logs

    @classmethod
    def from_config(cls, train_config) -> "Distillation":
        return cls(train_config.distill_temperature, train_config.distill_label_weight,
                   train_config.distill_temperature_squared)
