"""End-to-end transfer: a tiny encoder pretrained on Fashion-MNIST, then a linear head on scikit-learn's digits beats chance."""

import pytest

import helpers
from tf_simclr.data.sources import load_source
from tf_simclr.evaluation.supervised import evaluate_checkpoint
from tf_simclr.training.trainer import train


@pytest.mark.slow
def test_tiny_transfer_from_fashion_mnist(fashion_mnist_dir, digits_dir, tmp_path):
    pre = helpers.tiny_config(
        "fashion_mnist", str(tmp_path / "pre"),
        data={"data_dir": fashion_mnist_dir, "eval_split": "test", "color_jitter_strength": 0.5},
        train_batch_size=32, train_steps=20, checkpoint_steps=20,  # Settled BN statistics.
        learning_rate=1.0, weight_decay=1e-4, temperature=0.5, seed=1,
    )
    train(pre)
    source = load_source(f"folder:{digits_dir}")
    assert source.num_classes == 10 and source.num_examples("train") == 1437 and source.num_examples("test") == 360
    config = helpers.tiny_config(
        f"folder:{digits_dir}", str(tmp_path / "lin"), data={"eval_split": "test"},
        train_mode="finetune", checkpoint=str(tmp_path / "pre"), fine_tune_after_block=4, zero_init_logits_layer=True,
        train_batch_size=32, train_steps=240, checkpoint_steps=240, optimizer="momentum", learning_rate=1.0,
        weight_decay=0.0, eval_batch_size=120, seed=1,
    )
    train(config)
    results = evaluate_checkpoint(config)
    assert results["global_step"] == 240
    assert helpers.beats_chance(results["top_1_accuracy"], 360, 10), results  # 360 test digits.
