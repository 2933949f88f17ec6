"""Features of a frozen encoder for every example of a dataset, in inference mode.

The inference call is compiled (`tf.function` on TensorFlow, `jax.jit` on JAX):
eager calls of a ResNet cost several times a compiled call.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable, Iterable, Optional, Union

import keras
import numpy as np
from keras import ops

from tf_simclr.evaluation.checks import to_numpy

log = logging.getLogger("tf_simclr")

FeatureFn = Callable[[Any], Any]


def _select(outputs, key: str):
    """The requested output of a model that returns a dict, or the output itself."""
    if isinstance(outputs, dict):
        if key not in outputs:
            raise KeyError(f"The model's outputs have no {key!r}. Received: key={key!r}; available: {sorted(outputs)}")
        return outputs[key]
    return outputs


# Compiled inference calls per model, so repeated extractions do not retrace.
# Weak keys: the cache must not keep a model alive.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tf_compiled(model: keras.Model, key: str, images) -> FeatureFn:
    """A `tf.function` for this model, output key and image shape (any batch size)."""
    import tensorflow as tf  # Only to compile the call; the math is backend-neutral.

    images = tf.convert_to_tensor(images)
    spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
    signature = (key, tuple(spec.shape.as_list()), spec.dtype.name)
    cache = _COMPILED.setdefault(model, {})
    if signature not in cache:
        model_ref = weakref.ref(model)  # A strong reference would pin the weak key forever.
        cache[signature] = tf.function(
            lambda x: _select(model_ref()(x, training=False), key), input_signature=[spec]
        )
    return cache[signature]


def _inference_fn(model: Union[keras.Model, FeatureFn], key: str) -> FeatureFn:
    """`images -> features` in inference mode, compiled when `model` is a Keras model.

    Eager calls of a ResNet cost several times a compiled call, so Keras models
    are wrapped in `tf.function` (TensorFlow) or `jax.jit` over `stateless_call`
    (JAX); other callables are called as they are (compile them yourself).
    """
    if not isinstance(model, keras.Model):
        return lambda images: _select(model(images), key)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return lambda images: _tf_compiled(model, key, images)(images)
    if backend == "jax":
        import jax

        @jax.jit
        def call(trainable, non_trainable, images):
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
            return _select(outputs, key)

        def run(images):
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return call(trainable, non_trainable, to_numpy(images))

        return run
    return lambda images: _select(model(images, training=False), key)


def _unpack(batch):
    """(images, labels) from a tuple/list batch or a dict with 'image' and 'label'."""
    if isinstance(batch, dict):
        try:
            return batch["image"], batch["label"]
        except KeyError:
            raise ValueError(f"A dict batch needs 'image' and 'label'. Received keys: {sorted(batch)}") from None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "extract_features needs batches of (images, labels), e.g. from "
        "data.build_dataset(..., is_training=False, mode='eval'). "
        f"Received a batch of type {type(batch).__name__}."
    )


def extract_features(
    model_or_encoder_fn: Union[keras.Model, FeatureFn],
    dataset: Iterable,
    *,
    key: str = "final_avg_pool",
    max_batches: Optional[int] = None,
    log_every: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every example of a batched dataset, with the model in inference mode.

    Args:
        model_or_encoder_fn: A `SimCLRModel`, an encoder (`resnet.resnet(...)`) or
            any Keras model called as `model(images, training=False)`; or any
            callable `images -> dict | array`. Dict outputs are indexed by `key`.
        dataset: Iterable of batches `(images [B, H, W, 3], labels [B])` (e.g. a
            `tf.data.Dataset` from `data.build_dataset(..., mode='eval')`), or of
            dicts with 'image' and 'label'.
        key: Which output to use: 'final_avg_pool' (encoder features, the
            SimCLR linear-eval input), 'proj_head_input', 'proj_head_output', ...
            Outputs with more than 2 dimensions are flattened per example.
        max_batches: Stop after this many batches. Defaults to None (all).
        log_every: Log progress every this many batches (0 = never).

    Returns:
        `(features float32 [N, D], labels int64 [N])` as numpy arrays.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None. Received: max_batches={max_batches}")
    fn = _inference_fn(model_or_encoder_fn, key)
    features, labels = [], []
    count, start = 0, time.perf_counter()
    for step, batch in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            break
        images, batch_labels = _unpack(batch)
        if getattr(images, "shape", None) is not None and len(images.shape) == 4 and images.shape[-1] == 6:
            raise ValueError(
                "Images have 6 channels: two pretraining views stacked. Build the dataset with "
                f"mode='eval' (or is_training=False). Received images of shape {tuple(images.shape)}"
            )
        out = to_numpy(fn(images)).astype(np.float32, copy=False)
        features.append(out.reshape(out.shape[0], -1))
        labels.append(to_numpy(batch_labels).astype(np.int64).reshape(-1))
        count += out.shape[0]
        if log_every and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - start
            total = f"/{max_batches}" if max_batches else ""
            log.info("extract_features: %d%s batches, %d examples, %.1f examples/s", step + 1, total, count, count / max(elapsed, 1e-9))
    if not features:
        raise ValueError("The dataset yielded no batches: nothing to extract features from.")
    return np.concatenate(features, axis=0), np.concatenate(labels, axis=0)




def raw_pixels(images):
    """The baseline "encoder": the images themselves, flattened (`[B, H*W*C]`)."""
    images = ops.convert_to_tensor(images)
    return ops.reshape(images, (ops.shape(images)[0], -1))
