"""A downstream Keras app: train a digit classifier on an exported SimCLR encoder.

    python examples/finetune_exported_encoder.py --export exported_models/<run>/<step>
    python examples/finetune_exported_encoder.py                 # exports a random tiny model first
    python examples/finetune_exported_encoder.py --linear_probe  # frozen encoder, train the head only

Uses scikit-learn's bundled 8x8 digits (no download), upsampled to the export's
image size and repeated to RGB, so it runs on a CPU in well under a minute for a
tiny encoder. Everything the app needs about the encoder comes from the export:
`export_meta.json` gives the input contract (float32 RGB in [0, 1], image size),
`tf_simclr.export.load_encoder` gives a Keras 3 model that `fit` can fine-tune.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Run from a checkout.

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_simclr import export  # noqa: E402


def digits_as_images(image_size: int, seed: int = 0):
    """scikit-learn digits as float32 RGB images in [0, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    import tensorflow as tf

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]  # 8x8 values 0..16.
    images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    images = np.clip(np.repeat(images, 3, axis=-1), 0.0, 1.0)  # Grey to RGB, as the contract asks.
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], digits.target[order].astype("int32")
    split = int(0.8 * len(images))
    return images[:split], labels[:split], images[split:], labels[split:]


def export_random_tiny_model(folder: str) -> str:
    """Exports an untrained ResNet-18 at width 1/8 so the example runs without a training run."""
    from tf_simclr.config import Config, ModelConfig
    from tf_simclr.models import build_model

    config = Config(model=ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=32, proj_out_dim=16, global_bn=False))
    model = build_model(config.model)
    return export.export_saved_model(model, os.path.join(folder, "0"), step=0, meta={"config": config.to_dict()})


def build_classifier(export_path: str, num_classes: int, fine_tune: bool, image_size: int) -> keras.Model:
    encoder = export.load_encoder(export_path, trainable=fine_tune, output_key="default")
    images = keras.Input((image_size, image_size, 3), name="images")
    features = encoder(images)
    logits = keras.layers.Dense(num_classes, name="classifier")(features)
    return keras.Model(images, logits, name="digits_classifier")


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default=None, help="Module folder or base folder of <step>/ modules (default: export a random tiny model).")
    parser.add_argument("--linear_probe", action="store_true", help="Freeze the encoder; train only the linear classifier.")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        path = args.export or export_random_tiny_model(scratch)
        meta = export.read_export_meta(path)
        size = int(meta["input"]["image_size"])
        print(f"Encoder: {export.resolve_export(path)} (step {meta['step']}, {size}x{size} RGB in [0, 1], "
              f"features {meta['outputs']['default']['shape']})")
        x_train, y_train, x_test, y_test = digits_as_images(size)
        # Whole batches only: TF 2.21's oneDNN kernels have crashed this ResNet's
        # training step on odd batch sizes (a last partial batch of 29) on CPU.
        keep = len(x_train) // args.batch_size * args.batch_size
        x_train, y_train = x_train[:keep], y_train[:keep]
        model = build_classifier(path, 10, fine_tune=not args.linear_probe, image_size=size)
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
        _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    mode = "linear probe" if args.linear_probe else "fine-tuned"
    print(f"Test accuracy ({mode}, {len(y_test)} digits): {accuracy:.3f}")
    return float(accuracy)


if __name__ == "__main__":
    main()
