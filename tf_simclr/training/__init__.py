"""Training: the loop, and what keeps a long run safe.

    trainer      train(config): pipeline, model, optimizer, restore, fit, export (top to bottom)
    restore      resume from model_dir, or start from --checkpoint
    callbacks    checkpoints and stopping, summaries, the kNN monitor, the learning curve
    preemption   SIGTERM as "checkpoint and stop"

The step itself is in `tf_simclr.steps`, the plan (steps, warmup, learning rate)
in `tf_simclr.optim.plan`, the checkpoint format in `tf_simclr.storage.checkpoint`.
"""
