"""The JAX half of tests/training/test_microbatch.py: `KERAS_BACKEND=jax python jax_microbatch_worker.py OUT.json`.

Not a test module. Builds the micro model with frozen batch norm, takes the full-batch
gradient (`jax.value_and_grad` of `compute_losses`) and the chunked one
(`steps.jax_step.cached_gradients`, in `LAYOUTS_AND_LOOPS`) of one batch, checks the
moving statistics against the chunks run one by one, then trains one chunked step through
`fit` with batch norm training, and writes the differences and logs as JSON.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import helpers  # noqa: E402
from tf_simclr.models import build_model  # noqa: E402
from tf_simclr.optim.optimizers import build_optimizer  # noqa: E402
from tf_simclr.steps import gradient_cache, jax_step  # noqa: E402

SIZE, IMAGES, CHUNK = 16, 8, 4  # 2 chunks.
# Gradients: both chunk layouts in pass 2's `scan`, and the CPU's unrolled loop once (steps.jax_step.chunk_loop);
# moving statistics: each layout and each loop once.
LAYOUTS_AND_LOOPS = [("paired", "scan"), ("shifted", "scan"), ("shifted", "unrolled")]
MOVING_LAYOUTS_AND_LOOPS = [("shifted", "scan"), ("paired", "unrolled")]
TINY = helpers.micro_model_config(image_size=SIZE)  # The encoder of test_microbatch.py's TINY.


def model(microbatch, frozen, batch_norm="paired"):
    keras.utils.set_random_seed(3)
    m = build_model(TINY, num_classes=3, microbatch_size=microbatch, microbatch_bn=batch_norm)
    if frozen:
        for layer in m._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    optimizer = build_optimizer("momentum", 0.1, momentum=0.9)
    m.compile(optimizer=optimizer, jit_compile=True)
    optimizer.build(m.trainable_variables)
    return m


def _largest_difference(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def main(out):
    rng = np.random.default_rng(0)
    views = rng.random((IMAGES, SIZE, SIZE, 6), dtype=np.float32)
    labels = rng.integers(-1, 3, IMAGES).astype(np.int32)
    plain = model(0, True)
    trainable = [v.value for v in plain.trainable_variables]
    others = [v.value for v in plain.non_trainable_variables]

    def loss(values):
        (total, logs), _ = jax_step.stateless(lambda: plain.compute_losses(views, labels, training=True),
                                              list(zip(plain.trainable_variables, values))
                                              + list(zip(plain.non_trainable_variables, others)), [])
        return total, logs

    (total, logs), expected = jax.jit(jax.value_and_grad(loss, has_aux=True))(trainable)
    chunked = {}
    for batch_norm, loop in LAYOUTS_AND_LOOPS:
        os.environ[jax_step.LOOP_VARIABLE] = loop
        m = model(CHUNK, True, batch_norm)
        optimizer_state = list(zip(m.optimizer.variables, [v.value for v in m.optimizer.variables]))
        got_total, got_logs, got, _ = jax.jit(lambda t, n: jax_step.cached_gradients(
            m, t, n, optimizer_state, views, labels))(trainable, others)
        chunked[f"{batch_norm} {loop}"] = {"total": float(got_total), "logs": {k: float(v) for k, v in got_logs.items()},
                                           "diffs": [_largest_difference(g, e) for g, e in zip(got, expected)]}
    scales = [float(np.max(np.abs(np.asarray(e)))) for e in expected]

    # Batch norm training: the moving statistics after a chunked step, against the chunks run one by one here.
    moving = {}
    for batch_norm, loop in MOVING_LAYOUTS_AND_LOOPS:
        os.environ[jax_step.LOOP_VARIABLE] = loop
        m = model(CHUNK, False, batch_norm)
        values = [v.value for v in m.trainable_variables]
        start = [v.value for v in m.non_trainable_variables]
        optimizer_state = list(zip(m.optimizer.variables, [v.value for v in m.optimizer.variables]))
        _, _, _, moved = jax.jit(lambda t, n: jax_step.cached_gradients(
            m, t, n, optimizer_state, views, labels))(values, start)
        split, _ = jax_step.stateless(lambda: m.views(views), [], [])
        current = start
        for c in range(IMAGES // CHUNK):
            chunk = gradient_cache.chunk_of(split, IMAGES, CHUNK, c, gradient_cache.SHIFTS[batch_norm])
            _, current = jax_step.stateless(lambda: m(chunk, training=True),
                                            list(zip(m.trainable_variables, values))
                                            + list(zip(m.non_trainable_variables, current)),
                                            m.non_trainable_variables)
        moving[f"{batch_norm} {loop}"] = {"diff": max(map(_largest_difference, moved, current)),
                                          "moved": max(map(_largest_difference, current, start))}

    del os.environ[jax_step.LOOP_VARIABLE]  # fit takes the default loop of this platform.
    training = model(CHUNK, False)
    recorded = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            recorded.append({k: float(np.asarray(v)) for k, v in logs.items()})

    import tensorflow as tf  # tf.data only.

    training.fit(tf.data.Dataset.from_tensors((views, labels)).repeat(), epochs=1, steps_per_epoch=2, verbose=0,
                 callbacks=[Record()])
    with open(out, "w") as f:
        json.dump({"total": float(total), "logs": {k: float(v) for k, v in logs.items()}, "chunked": chunked,
                   "scales": scales, "fit_logs": recorded, "moving": moving}, f)


if __name__ == "__main__":
    main(sys.argv[1])
