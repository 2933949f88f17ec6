"""SimCLR pretraining from Python: the library's pieces without the command line.

    python examples/pretrain_in_python.py [--steps 100] [--data_dir DIR]

Pretrains a tiny ResNet-18 on Fashion-MNIST (prepared offline from Debian's
dataset-fashion-mnist files if TFDS cannot download it) with LARS, then prints the
contrastive accuracy reached. For a whole configured job (checkpoints, resume,
summaries, export, reports) build a `tf_simclr.Config` and call `tf_simclr.run(config)`.
"""

import argparse

import tf_simclr
from tf_simclr.augment import AugmentSpec
from tf_simclr.optim.weight_decay import plan_weight_decay


def main(steps: int = 100, data_dir=None, batch_size: int = 128):
    # Data: two augmented views of every image, stacked on the channel axis.
    source = tf_simclr.load_source("fashion_mnist", data_dir)
    views = tf_simclr.Views("pretrain", AugmentSpec(image_size=28, color_jitter_strength=0.5, blur=False))
    dataset = tf_simclr.build_dataset(source, "train", views, batch_size)
    # Model: encoder + projection head (+ a linear head trained on stop-gradient features).
    model = tf_simclr.build_model(
        tf_simclr.ModelConfig(resnet_depth=18, width_multiplier=0.125, image_size=28, global_bn=False),
        num_classes=source.num_classes, objective=tf_simclr.NTXent(temperature=0.2),
    )
    # LARS with the reference's exclusions (batch norm, biases), decided by layer type.
    decay = plan_weight_decay(model, 1e-4, optimizer_applies_decay=True)
    model.set_weight_decay(decay)
    learning_rate = tf_simclr.WarmUpAndCosineDecay(
        tf_simclr.scale_learning_rate(1.0, batch_size, "linear"), warmup_steps=steps // 10, total_steps=steps,
    )
    optimizer = tf_simclr.build_optimizer("lars", learning_rate, weight_decay=1e-4,
                                          excluded_variables=decay.optimizer_excluded)
    model.compile(optimizer=optimizer)
    history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=2)
    print(f"contrastive accuracy after {steps} steps: {history.history['contrast_acc'][-1]:.3f}")
    return model, history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    main(args.steps, args.data_dir)
