"""One training process for tests/distribute/test_distributed.py (not a test module).

    python worker.py WORKDIR single          # one replica, the whole global batch
    python worker.py WORKDIR INDEX P0 P1     # worker INDEX of 2 on 127.0.0.1:P0/P1

Trains the tiny model of WORKDIR/init (a tf_simclr checkpoint) on the global batches
in WORKDIR/batches.npz, one `fit` epoch per step so each step's loss is logged on its
own, and writes WORKDIR/<name>.json (per-step losses) and, from the chief only,
WORKDIR/<name>/ckpt-<k> (the final weights, batch-norm statistics included).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
workdir, role = sys.argv[1], sys.argv[2]
if role != "single":
    port0, port1 = sys.argv[3], sys.argv[4]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
        "task": {"type": "worker", "index": int(role)},
    })

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import helpers  # noqa: E402
from tf_simclr.distribute import strategy as strategy_lib  # noqa: E402
from tf_simclr.models import build_model  # noqa: E402
from tf_simclr.optim.optimizers import build_optimizer  # noqa: E402
from tf_simclr.optim.weight_decay import plan_weight_decay  # noqa: E402
from tf_simclr.storage import checkpoint  # noqa: E402

CONFIG = helpers.micro_model_config(image_size=16, global_bn=True)  # The same model as the test's TINY.

strategy = strategy_lib.create_strategy()
batches = np.load(os.path.join(workdir, "batches.npz"))["images"]  # [steps, global_batch, 16, 16, 6]
steps, global_batch = batches.shape[:2]
with strategy.scope():
    model = build_model(CONFIG)
    checkpoint.restore_checkpoint(os.path.join(workdir, "init"), model)
    decay = plan_weight_decay(model, 1e-4, optimizer_applies_decay=True)
    model.set_weight_decay(decay)
    optimizer = build_optimizer("lars", 0.02, momentum=0.9, weight_decay=1e-4, excluded_variables=decay.optimizer_excluded)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)


def dataset_fn(ctx):
    # Pipeline i of n gets rows [i*B/n, (i+1)*B/n) of every global batch, in order.
    per = global_batch // ctx.num_input_pipelines
    rows = batches[:, ctx.input_pipeline_id * per:(ctx.input_pipeline_id + 1) * per]
    return tf.data.Dataset.from_tensor_slices((rows, np.zeros(rows.shape[:2], "int32")))


history = model.fit(strategy.distribute_datasets_from_function(dataset_fn), epochs=steps, steps_per_epoch=1, verbose=0)
name = "single" if role == "single" else f"worker{role}"
with open(os.path.join(workdir, name + ".json"), "w") as f:
    json.dump({"contrast_loss": [float(v) for v in history.history["contrast_loss"]],
               "replicas": strategy.num_replicas_in_sync, "chief": strategy_lib.is_chief(strategy)}, f)
if strategy_lib.is_chief(strategy):
    checkpoint.save_checkpoint(os.path.join(workdir, name), steps, model)
