"""Softmax cross-entropy of the supervised head, ignoring unlabeled examples."""

from __future__ import annotations

from keras import ops


def supervised_loss(labels, logits):
    """Mean softmax cross-entropy and accuracy over examples with a label (>= 0).

    Unlabeled examples (label -1, e.g. STL-10's `unlabelled` split or a flat image
    folder) are ignored, so linear eval while pretraining works on mixed data.
    Computed in float32 whatever the compute dtype.
    """
    labels = ops.cast(labels, "int32")
    valid = ops.cast(labels >= 0, "float32")
    safe = ops.maximum(labels, 0)
    logits = ops.cast(logits, "float32")
    ce = -ops.take_along_axis(ops.log_softmax(logits, axis=-1), safe[:, None], axis=-1)[:, 0]
    count = ops.maximum(ops.sum(valid), 1.0)
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), safe), "float32")
    return ops.sum(ce * valid) / count, ops.sum(correct * valid) / count
