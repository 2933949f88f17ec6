"""Install tf_simclr: `pip install .` (library + the `tf_simclr` command), `pip install -e ".[test]"` for tests."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
readme = os.path.join(here, "README.md")

setup(
    name="tf_simclr",
    version="0.2.0",
    description="SimCLR v1/v2 self-supervised pretraining and transfer learning for TensorFlow / Keras 3.",
    long_description=open(readme).read() if os.path.exists(readme) else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tf_simclr", "tf_simclr.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets needs it to prepare datasets but does not require it.
        "importlib_resources",
        "tensorflow-hub>=0.16",
        "tensorboard",  # tf.summary needs it; TensorFlow 2.21 no longer installs it.
        "absl-py",
        "numpy",
        "pillow",
        "matplotlib",  # Learning curves and embeddings (every run draws model_dir/learning_curve.png).
        "scikit-learn",  # t-SNE embeddings and the digits transfer dataset.
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "tf_keras>=2.21,<2.22", "jax[cpu]"],
        "jax": ["jax"],
    },
    entry_points={"console_scripts": ["tf_simclr=tf_simclr.cli:main"]},
)
