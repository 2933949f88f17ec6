"""Where a run's files live, written so that a crash never leaves a partial one.

    fs          paths on any filesystem: local, or a tf.io.gfile URL (gs://, ram://)
    atomic      files and folders that are complete or absent; commit markers; crash recovery
    checkpoint  the checkpoint format: ckpt-<step>/variables.npz + meta.json (the marker)
"""
