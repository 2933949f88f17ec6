"""SimCLR on arrays you already hold in memory, on Keras/JAX, with no TensorFlow installed.

    KERAS_BACKEND=jax python examples/jax_arrays_without_tensorflow.py [--steps 200] [--model_dir DIR]

Reads Fashion-MNIST's idx files (Debian's dataset-fashion-mnist) into NumPy arrays,
as any uint8 `[N, H, W, C]` images and integer labels would be, wraps them in an
`ArraySource`, pretrains a small ResNet-18 with the augmentation inside the
jitted step, and prints the frozen encoder's linear probe and kNN beside the raw
pixels and a random-init encoder. Every piece is the command line's own
(`tf_simclr.train`, `frozen_feature_report`); nothing here imports TensorFlow.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # Before Keras is imported.

import tf_simclr  # noqa: E402
from tf_simclr.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from tf_simclr.data import idx  # noqa: E402
from tf_simclr.evaluation import report  # noqa: E402


def main(steps: int = 200, model_dir: str = "runs/jax_arrays", folder: str = idx.FASHION_MNIST_DIR,
         examples: int = 0, width: float = 0.5) -> dict:
    splits = idx.read_idx_folder(folder)  # {"train": (uint8 [N, 28, 28, 1], int64 [N]), "test": ...}
    if examples:  # A quick look: the first `examples` images of each split.
        splits = {name: (images[:examples], labels[:examples]) for name, (images, labels) in splits.items()}
    source = tf_simclr.ArraySource(splits, name="fashion-mnist arrays", class_names=idx.FASHION_MNIST_CLASSES)
    config = Config(
        model=ModelConfig(resnet_depth=18, width_multiplier=width, image_size=28, cifar_stem_stride=2,
                          proj_out_dim=64, num_proj_layers=2),
        data=DataConfig(dataset="arrays", train_split="train", eval_split="test", augment_on="device",
                        color_jitter_strength=0.5, min_crop_area=0.2, use_blur=False),
        train=TrainConfig(model_dir=model_dir, train_steps=steps, train_batch_size=256, learning_rate=1.0,
                          temperature=0.2, warmup_epochs=0.2, checkpoint_steps=max(1, steps // 2), seed=0),
        run=RunConfig(use_tpu=False),
    )
    model = tf_simclr.train(config, source=source)
    scores = report.frozen_feature_report(config, model, source=source)
    print(report.format_report(scores))
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--model_dir", default="runs/jax_arrays")
    parser.add_argument("--folder", default=idx.FASHION_MNIST_DIR, help="a folder of idx files")
    parser.add_argument("--examples", type=int, default=0, help="use only the first N images of each split")
    parser.add_argument("--width", type=float, default=0.5)
    args = parser.parse_args()
    main(args.steps, args.model_dir, args.folder, args.examples, args.width)
