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

**Batch norm.** Each chunk normalizes with its own statistics. Which rows share
them is `--microbatch_bn`:

- `paired` (default): a chunk holds both views of its M images, so each chunk is
  what one replica of a run without `--global_bn` would see (negatives still
  come from the whole batch).
- `shifted`: chunk c holds view 1 of images chunk c and view 2 of images chunk
  c+1 (mod the number of chunks), so no chunk's statistics hold both views of
  one image: the idea behind MoCo's shuffled batch norm, against positives
  that match through shared batch statistics.

Pass 2 sees exactly pass
1's inputs and statistics, so it reproduces pass 1's embeddings (the step logs the
largest difference as `replay_error`); the moving averages are restored after
pass 1, so they move once per chunk, in pass 2. With `--global_bn` each chunk's
statistics are synchronized across replicas (chunk c of every replica together).

Backend-neutral pieces live here; `steps.tf_step.cached_gradients` and
`steps.jax_step.cached_gradients` run the passes.
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops


# `--microbatch_bn` -> how many chunks a chunk's second views are shifted by.
SHIFTS = {"paired": 0, "shifted": 1}


def check_microbatch(microbatch_size: int, per_replica_batch: int, flag: str = "--microbatch_size",
                     batch_norm: str = "paired") -> None:
    """The one rule: a chunk size of 0 (off) or a divisor of each replica's batch (two chunks at least if shifted)."""
    if batch_norm not in SHIFTS:
        raise ValueError(f"--microbatch_bn must be one of {sorted(SHIFTS)}. Received: {batch_norm!r}")
    if microbatch_size < 0 or (microbatch_size and per_replica_batch % microbatch_size):
        divisors = [d for d in range(1, per_replica_batch + 1) if per_replica_batch % d == 0]
        raise ValueError(
            f"{flag}={microbatch_size} must divide each replica's batch of {per_replica_batch} images "
            f"(--train_batch_size over the replicas); use one of {divisors[-6:]}, or 0 to turn chunking off."
        )
    if microbatch_size and SHIFTS[batch_norm] and per_replica_batch // microbatch_size < 2:
        raise ValueError(
            f"--microbatch_bn={batch_norm} pairs view 1 of one chunk with view 2 of the next, which needs at least "
            f"2 chunks per replica; {flag}={microbatch_size} of {per_replica_batch} images is one. Use "
            f"{flag}={per_replica_batch // 2} or smaller, or --microbatch_bn=paired."
        )


def chunk_rows(num_images: int, microbatch_size: int, index: int, shift: int = 0) -> tuple[slice, slice]:
    """Rows of chunk `index` in a `[view 1 of B images; view 2]` batch: view 1 of its M images, then view 2 of
    the M images `shift` chunks on (0: the same images)."""
    count = num_images // microbatch_size
    first = index * microbatch_size
    second = num_images + ((index + shift) % count) * microbatch_size
    return slice(first, first + microbatch_size), slice(second, second + microbatch_size)


def chunk_of(tensor, num_images: int, microbatch_size: int, index: int, shift: int = 0):
    """`[view 1 of M images; view 2 of M images]`: a batch the model reads as usual."""
    first, second = chunk_rows(num_images, microbatch_size, index, shift)
    return ops.concatenate([tensor[first], tensor[second]], axis=0)


def assemble(chunks: list, microbatch_size: int, shift: int = 0):
    """The inverse of `chunk_of` over all chunks: `[view 1 of all B images; view 2]`."""
    count = len(chunks)
    first = [c[:microbatch_size] for c in chunks]
    # View 2 of image chunk j is in the chunk i with i + shift = j (mod count).
    second = [chunks[(j - shift) % count][microbatch_size:] for j in range(count)]
    return ops.concatenate(first + second, axis=0)


class Split(NamedTuple):
    """One batch cut into chunks, as both passes read it."""

    both_labels: object  # The labels of `[view 1; view 2]`.
    shift: int
    chunks: list  # Each `chunk_of` the views.
    chunk_labels: list  # Each `chunk_of` both_labels.


def split_batch(views, labels, microbatch_size: int, batch_norm: str) -> Split:
    """The chunks of one replica's `[view 1 of B images; view 2]` views and their labels."""
    if views.shape[0] is None:
        raise ValueError("--microbatch_size needs batches of a static size (a dataset batched with "
                         "drop_remainder=True, as the training pipeline is).")
    num_images = int(views.shape[0]) // 2
    check_microbatch(microbatch_size, num_images, batch_norm=batch_norm)
    both = ops.concatenate([ops.cast(labels, "int32")] * 2, axis=0)
    shift = SHIFTS[batch_norm]
    indices = range(num_images // microbatch_size)
    return Split(both, shift, [chunk_of(views, num_images, microbatch_size, c, shift) for c in indices],
                 [chunk_of(both, num_images, microbatch_size, c, shift) for c in indices])


def step_totals(logs: dict, loss, decay, ce_sum, correct, num_labelled, replay, supervised: bool):
    """`(total, logs)` of a chunked step: the plain step's sum and metrics, plus `replay_error`."""
    logs = dict(logs)
    total = loss + decay
    if supervised:
        logs["sup_loss"], logs["sup_acc"] = ce_sum / num_labelled, correct / num_labelled
        total = total + logs["sup_loss"]
    logs.update(weight_decay=decay, total_loss=total, replay_error=replay)
    return total, logs


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
