"""SimCLR pretraining from Python in a few lines: the library without run.py.

    python examples/pretrain_in_python.py [--steps 100] [--data_dir DIR]

Pretrains a tiny ResNet-18 on Fashion-MNIST (prepared offline from Debian's
dataset-fashion-mnist files if TFDS cannot download it) with LARS, then prints the
contrastive accuracy reached.
"""

import argparse

import tf_simclr


def main(steps: int = 100, data_dir=None, batch_size: int = 128):
    # Data: two augmented views of every image, stacked on the channel axis.
    source = tf_simclr.load_source("fashion_mnist", data_dir)
    dataset = tf_simclr.build_dataset(
        source, "train", batch_size=batch_size, is_training=True, mode="pretrain",
        image_size=28, color_jitter_strength=0.5,
    )
    # Model: encoder + projection head (+ a linear head trained on stop-gradient features).
    model = tf_simclr.build_model(
        tf_simclr.ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=28, global_bn=False),
        num_classes=source.num_classes, temperature=0.5,
    )
    # LARS with the reference's exclusions (batch norm, biases), decided by layer type.
    excluded = model.configure_weight_decay(1e-4, optimizer_applies_decay=True)
    learning_rate = tf_simclr.WarmUpAndCosineDecay(
        tf_simclr.scale_learning_rate(1.0, batch_size, "linear"), warmup_steps=steps // 10, total_steps=steps,
    )
    model.compile(optimizer=tf_simclr.build_optimizer("lars", learning_rate, weight_decay=1e-4, excluded_variables=excluded))
    history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=2)
    print(f"contrastive accuracy after {steps} steps: {history.history['contrast_acc'][-1]:.3f}")
    return model, history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    main(args.steps, args.data_dir)
