"""Runs a script as a JAX-only machine would: every TensorFlow import fails (`python without_tensorflow.py run.py ...`).

The GPU machines tf_simclr is measured on have Keras, JAX, NumPy and scikit-learn but
no TensorFlow. Here TensorFlow is installed, so the modules are blocked instead;
at exit the script prints which TensorFlow modules got loaded anyway (none must).
"""

import atexit
import os
import runpy
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
for name in ("tensorflow", "tensorflow_datasets", "tensorflow_hub", "tf_keras"):
    sys.modules[name] = None  # `import tensorflow` now raises ImportError, as on a machine without it.


@atexit.register
def _report():
    loaded = sorted(m for m, module in sys.modules.items() if m.startswith("tensorflow") and module is not None)
    print(f"tensorflow modules loaded: {loaded}", flush=True)


if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
