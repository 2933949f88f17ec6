"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations" (2020), eq. 1. Written with `keras.ops` only so it runs under
every Keras backend; the cross-replica gather comes from `distribute.replica`.
Registered as the `nt_xent` entry of `losses.LOSSES` (`NTXent`).
"""

from __future__ import annotations

from keras import ops

from tf_simclr.distribute import replica as replica_lib

# Subtracted from the logits of an example with itself so that it is never its
# own positive. The reference uses 1e9, which overflows float16; we always do the
# loss math in float32, where 1e9 is exact enough and exp(-1e9) is 0.
_SELF_MASK = 1e9


def contrastive_loss(hidden, hidden_norm: bool = True, temperature: float = 1.0, *, context=None):
    """NT-Xent over the two views stacked in `hidden`, with negatives from all replicas.

    `hidden` holds this replica's projections as `[view1 of B images; view2 of the
    same B images]` (shape `[2B, D]`). Every view's positive is the other view of its
    image; its negatives are the other 2N-2 views of the global batch of N images
    (all replicas together). Under a distribution strategy N replicas each holding
    B/N images give the same loss and gradients as one replica holding all B, once
    the caller divides by the replica count before summing gradients, as the
    train steps (`steps.tf_step`) do.

    Note: the value is the reference's (google-research/simclr `add_contrastive_loss`):
    mean over anchors of `loss_view1 + loss_view2`, i.e. twice the paper's mean over
    the 2N anchors. We keep it so the reference's published learning rates,
    temperatures and weight decays carry over unchanged.

    Args:
        hidden: `[2B, D]` projection-head outputs (any float dtype; math is float32).
        hidden_norm: L2-normalize the vectors first (cosine similarity). Defaults to True.
        temperature: Softmax temperature. Defaults to 1.0.
        context: A `replica.ReplicaContext`; defaults to the caller's (`replica.current()`).

    Returns:
        `(loss, logits_ab, labels)`: the scalar loss; `[B, N]` logits of view 1 of this
        replica's images against view 2 of all N images; `[B, 2N]` one-hot labels whose
        first N columns mark each anchor's positive in `logits_ab`. Metrics reuse them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
    context = context or replica_lib.current()
    hidden = ops.cast(hidden, "float32")
    if hidden_norm:
        hidden = ops.normalize(hidden, axis=-1, order=2, epsilon=1e-12)
    hidden1, hidden2 = ops.split(hidden, 2, axis=0)
    batch_size = ops.shape(hidden1)[0]

    if context.num_replicas > 1:
        hidden1_large = context.all_gather(hidden1)
        hidden2_large = context.all_gather(hidden2)
        offset = ops.cast(context.replica_id, "int32") * batch_size
    else:
        hidden1_large, hidden2_large, offset = hidden1, hidden2, 0
    global_batch = ops.shape(hidden1_large)[0]

    positives = ops.arange(batch_size, dtype="int32") + offset
    labels = ops.one_hot(positives, 2 * global_batch, dtype="float32")
    self_mask = ops.one_hot(positives, global_batch, dtype="float32") * _SELF_MASK

    def similarity(a, b):
        return ops.matmul(a, ops.transpose(b)) / temperature

    logits_aa = similarity(hidden1, hidden1_large) - self_mask
    logits_bb = similarity(hidden2, hidden2_large) - self_mask
    logits_ab = similarity(hidden1, hidden2_large)
    logits_ba = similarity(hidden2, hidden1_large)

    loss_a = _softmax_cross_entropy(labels, ops.concatenate([logits_ab, logits_aa], axis=1))
    loss_b = _softmax_cross_entropy(labels, ops.concatenate([logits_ba, logits_bb], axis=1))
    return ops.mean(loss_a + loss_b), logits_ab, labels


def _softmax_cross_entropy(labels, logits):
    return -ops.sum(labels * ops.log_softmax(logits, axis=-1), axis=-1)


def contrastive_metrics(logits_ab, labels):
    """Contrastive accuracy and entropy, as the reference reports them.

    Returns:
        `(accuracy, entropy)`: the share of view-1 anchors whose most similar view-2
        vector (over the global batch) is their own positive, and the mean entropy of
        the softmax over those similarities (falls as the encoder grows confident).
    """
    num_columns = ops.shape(logits_ab)[1]
    target = ops.argmax(labels[:, :num_columns], axis=-1)
    accuracy = ops.mean(ops.cast(ops.equal(ops.argmax(logits_ab, axis=-1), target), "float32"))
    prob = ops.softmax(logits_ab, axis=-1)
    entropy = -ops.mean(ops.sum(prob * ops.log(prob + 1e-8), axis=-1))
    return accuracy, entropy


def embedding_std(hidden):
    """The collapse monitor (SimSiam, Chen & He 2021): mean over dimensions of the batch std of l2-normalized vectors.

    About 1/sqrt(d) for vectors spread over the sphere; 0 when every input maps to
    the same point. Computed on this replica's batch, without gradient.
    """
    z = ops.normalize(ops.stop_gradient(ops.cast(hidden, "float32")), axis=-1, order=2, epsilon=1e-12)
    return ops.mean(ops.std(z, axis=0))


class NTXent:
    """The `nt_xent` pretraining objective: `contrastive_loss` on the projection head's output.

    A pretraining loss is a callable `(outputs, labels) -> (loss, logs)` on one
    replica's batch of views (`outputs` is the model's dict, views stacked
    `[view 1 of B images; view 2]`), with `metric_names` naming the scalars of
    `logs` the trainer tracks. Add one by writing such a class and
    `losses.register_loss(name, factory)`.
    """

    metric_names = ("contrast_loss", "contrast_acc", "contrast_entropy", "embedding_std")
    num_views = 2

    def __init__(self, temperature: float = 0.1, hidden_norm: bool = True):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
        self.temperature = float(temperature)
        self.hidden_norm = bool(hidden_norm)

    def __call__(self, outputs: dict, labels=None):
        loss, logits_ab, con_labels = contrastive_loss(
            outputs["proj_head_output"], hidden_norm=self.hidden_norm, temperature=self.temperature
        )
        accuracy, entropy = contrastive_metrics(logits_ab, con_labels)
        logs = {"contrast_loss": loss, "contrast_acc": accuracy, "contrast_entropy": entropy,
                "embedding_std": embedding_std(outputs["proj_head_output"])}
        return loss, logs

    @classmethod
    def from_config(cls, train_config) -> "NTXent":
        return cls(train_config.temperature, train_config.hidden_norm)
