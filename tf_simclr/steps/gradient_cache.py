"""The contrastive loss of a large batch, and its exact gradient, in chunks (`--microbatch_size`).

Gradient accumulation does not work for NT-Xent: every view's negatives are the
whole batch. Gradient caching does (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup"):

1. embed every chunk of M images (both views) without keeping activations;
2. compute the global batch's loss from those N x d embeddings (negatives
   all-gathered across replicas as usual) and its gradient with respect to them;
3. run each chunk again, with the same views, and back-propagate the cached
   embedding gradient (the surrogate `sum(z_chunk * dL/dz_chunk)`), accumulating
   the parameters' gradients for one optimizer step.

Memory is one chunk's activations plus the embeddings and the N x N logits.

**Batch norm.** A chunk holds both views of its M images and normalizes with its
own statistics: each chunk is what one replica of a run without `--global_bn`
would see (negatives still come from the whole batch). Pass 2 sees exactly pass
1's inputs and statistics, so it reproduces pass 1's embeddings (the step logs the
largest difference as `replay_error`); the moving averages are restored after
pass 1, so they move once per chunk, in pass 2. With `--global_bn` each chunk's
statistics are synchronized across replicas (chunk c of every replica together).

Backend-neutral pieces live here; `steps.tf_step.cached_gradients` and
`steps.jax_step.cached_gradients` run the passes.
"""

from __future__ import annotations

from keras import ops


def check_microbatch(microbatch_size: int, per_replica_batch: int, flag: str = "--microbatch_size") -> None:
    """The one rule: a chunk size of 0 (off) or a divisor of each replica's batch."""
    if microbatch_size < 0 or (microbatch_size and per_replica_batch % microbatch_size):
        divisors = [d for d in range(1, per_replica_batch + 1) if per_replica_batch % d == 0]
        raise ValueError(
            f"{flag}={microbatch_size} must divide each replica's batch of {per_replica_batch} images "
            f"(--train_batch_size over the replicas); use one of {divisors[-6:]}, or 0 to turn chunking off."
        )


def chunk_rows(num_images: int, microbatch_size: int, index: int) -> tuple[slice, slice]:
    """Rows of chunk `index` in a `[view 1 of B images; view 2]` batch: its M images' first and second views."""
    start = index * microbatch_size
    return slice(start, start + microbatch_size), slice(num_images + start, num_images + start + microbatch_size)


def chunk_of(tensor, num_images: int, microbatch_size: int, index: int):
    """`[view 1 of the chunk's M images; their view 2]`: a batch the model (and the loss) reads as usual."""
    first, second = chunk_rows(num_images, microbatch_size, index)
    return ops.concatenate([tensor[first], tensor[second]], axis=0)


def assemble(chunks: list, microbatch_size: int):
    """The inverse of `chunk_of` over all chunks: `[view 1 of all B images; view 2]`."""
    first = [c[:microbatch_size] for c in chunks]
    second = [c[microbatch_size:] for c in chunks]
    return ops.concatenate(first + second, axis=0)


def supervised_sums(labels, logits):
    """`(sum of cross-entropies, number correct, number labelled)` over labelled examples (label >= 0)."""
    labels = ops.cast(labels, "int32")
    valid = ops.cast(labels >= 0, "float32")
    safe = ops.maximum(labels, 0)
    logits = ops.cast(logits, "float32")
    ce = -ops.take_along_axis(ops.log_softmax(logits, axis=-1), safe[:, None], axis=-1)[:, 0]
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), safe), "float32")
    return ops.sum(ce * valid), ops.sum(correct * valid), ops.sum(valid)


def surrogate(outputs: dict, embedding_gradient, labels, num_labelled, scale):
    """Pass 2's loss of one chunk: its gradient is the chunk's share of the full-batch gradient.

    `sum(z * dL/dz)` carries the contrastive loss (`embedding_gradient` was taken of
    the scaled, replica-divided full loss); the supervised head's cross-entropy is
    exactly decomposable, so the chunk's sum over the batch's `num_labelled`
    examples goes through `scale` (the same scaling and division) directly.

    Returns:
        `(surrogate, ce_sum, correct)`; the last two are 0 without a supervised head.
    """
    z = ops.cast(outputs["proj_head_output"], "float32")
    value = ops.sum(z * ops.stop_gradient(embedding_gradient))
    ce_sum = correct = ops.convert_to_tensor(0.0)
    if "logits_sup" in outputs:
        ce_sum, correct, _ = supervised_sums(labels, outputs["logits_sup"])
        value = value + scale(ce_sum / num_labelled)
    return value, ce_sum, correct
