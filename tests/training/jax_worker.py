"""The JAX half of tests/training/test_jax_backend.py, run as `KERAS_BACKEND=jax python jax_worker.py WORK_DIR`.

Not a test module. The pytest process is TensorFlow (Keras picks its backend once
per process), so the JAX side runs here. WORK_DIR holds what the TensorFlow side wrote:

- `config.json`: the `Config` both sides build their model and optimizer from;
- `batches.npz`: `images [k, B, S, S, 6]`, `labels [k, B]` (fixed training batches)
  and `probe [N, S, S, 3]` (fixed images whose features are compared);
- `tf_init/ckpt-0`: the TensorFlow model's initial weights and optimizer slots.

It restores that checkpoint, records the features of the probe images, trains
`k` steps through `fit` (LARS and the warm-up/cosine schedule of
`training.trainer.compile_model`), and writes `jax_ckpt/ckpt-<k>` and
`jax_result.npz` (per-step losses, features).
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_simclr.config import config_from_dict  # noqa: E402
from tf_simclr.distribute import jax_parallel  # noqa: E402
from tf_simclr.storage import checkpoint as ckpt_lib  # noqa: E402
from tf_simclr.training import trainer  # noqa: E402
from tf_simclr.optim.plan import make_plan  # noqa: E402


class StepLosses(keras.callbacks.Callback):
    """Running-mean logs after each batch (after batch 1 they are step 1's own values)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(np.asarray(v)) for k, v in (logs or {}).items()})


def features(model, images):
    return np.asarray(model(images, training=False)["final_avg_pool"])


def main(work_dir: str) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    with open(os.path.join(work_dir, "config.json")) as f:
        config = config_from_dict(json.load(f))
    data = np.load(os.path.join(work_dir, "batches.npz"))
    images, labels, probe = data["images"], data["labels"], data["probe"]
    steps = images.shape[0]

    # Several devices (XLA_FLAGS=--xla_force_host_platform_device_count=2) shard the batch.
    jax_parallel.setup_data_parallel()
    plan = make_plan(config, int(data["num_examples"]))
    model = trainer.compile_model(config, int(data["num_classes"]), plan)
    meta = ckpt_lib.restore_checkpoint(os.path.join(work_dir, "tf_init", "ckpt-0"), model, model.optimizer)
    features_restored = features(model, probe)

    import tensorflow as tf  # Only tf.data, as the trainer feeds a JAX run.

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    recorder = StepLosses()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[recorder], verbose=0, shuffle=False)
    step = int(np.asarray(model.optimizer.iterations))
    kept = {k: meta[k] for k in ("config", "dataset", "num_classes") if k in meta}
    path = ckpt_lib.save_checkpoint(os.path.join(work_dir, "jax_ckpt"), step, model, model.optimizer, meta=kept)
    names = sorted(recorder.logs[0])
    np.savez(
        os.path.join(work_dir, "jax_result.npz"),
        log_names=np.array(names),
        logs=np.array([[entry[n] for n in names] for entry in recorder.logs]),
        features_restored=features_restored,
        features_trained=features(model, probe),
        step=step,
        devices=jax_parallel.num_devices(),
    )
    print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1])
