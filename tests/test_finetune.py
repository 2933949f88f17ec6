"""Fine-tuning from a pretraining checkpoint: what `--fine_tune_after_block` freezes stays bit-identical."""

import functools

import numpy as np
import pytest

from tf_simclr import checkpoint as ckpt_lib
from tf_simclr import data as data_lib
from tf_simclr import subsets
from tf_simclr import resnet as resnet_lib
from tf_simclr import train as train_lib

from tests.test_train import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(fashion_mnist_dir, tmp_path_factory):
    """A 20-step pretraining run (enough for settled batch-norm statistics): its model_dir and encoder arrays."""
    model_dir = str(tmp_path_factory.mktemp("pre") / "run")
    config = tiny_config(fashion_mnist_dir, model_dir, train_steps=20, checkpoint_steps=20)
    model = train_lib.train(config)
    return model_dir, {**_stage_arrays(model), "proj": _arrays(model.projection_head)}


def _arrays(layer):
    return [(v.path, np.array(v.numpy())) for v in layer.weights]


def _stage_arrays(model):
    """{stage: [(path, array), ...]} for every encoder variable, moving BN statistics included."""
    out = {}
    for stage in range(5):
        out[stage] = [(v.path, np.array(v.numpy())) for layer in resnet_lib.stage_layers(model.encoder, stage) for v in layer.weights]
    return out


def _finetune(data_dir, pretrained_dir, model_dir, block, **overrides):
    config = tiny_config(
        data_dir, model_dir, train_mode="finetune", checkpoint=pretrained_dir, fine_tune_after_block=block,
        train_steps=6, checkpoint_steps=6, learning_rate=0.1, optimizer="momentum", **overrides,
    )
    return config, train_lib.train(config)


def _recorded_ids(model_dir):
    return subsets.read_id_file(f"{model_dir}/{subsets.SUBSET_IDS_FILE}")


def _same(a, b):
    return all(pa == pb and np.array_equal(x, y) for (pa, x), (pb, y) in zip(a, b)) and len(a) == len(b)


_SEED3_IDS = {}


@functools.lru_cache(maxsize=1)
def train_labels(data_dir):
    return subsets.split_index(data_lib.load_source("fashion_mnist", data_dir), "train")[0]


@pytest.mark.parametrize("block, frozen", [(4, range(5)), (-1, ()), (2, range(3))])
def test_fine_tune_after_block_freezes_exactly_the_stages_up_to_it(fashion_mnist_dir, pretrained, tmp_path, block, frozen):
    pre_dir, before = pretrained
    # Every run fine-tunes on the same 1% of the labels (seed 3): class-balanced, recorded, repeatable.
    _, model = _finetune(fashion_mnist_dir, pre_dir, str(tmp_path / "ft"), block, train_label_fraction=0.01, subset_seed=3)
    ids = _recorded_ids(str(tmp_path / "ft"))
    labels = train_labels(fashion_mnist_dir)
    assert len(ids) == 600 and np.bincount(labels[np.asarray(ids, int)], minlength=10).tolist() == [60] * 10
    assert ids == _SEED3_IDS.setdefault("ids", ids)  # Identical across the parametrized runs.
    assert ids != [str(i) for i in subsets.balanced_subset_ids(labels, 0.01, seed=4)]  # The seed matters.
    after = _stage_arrays(model)
    # --ft_proj_selector=0: the head reads the encoder output, so the projection head stays as pretrained.
    assert _same(before["proj"], _arrays(model.projection_head))
    for stage in range(5):
        assert len(before[stage]) > 0
        if stage in frozen:
            assert _same(before[stage], after[stage]), f"stage {stage} changed with fine_tune_after_block={block}"
        else:
            # Every variable of a trained stage moved: kernels and BN scales by gradient, moving statistics by updates.
            same = [p for (p, x), (_, y) in zip(before[stage], after[stage]) if np.array_equal(x, y)]
            assert not same, f"stage {stage} not trained with fine_tune_after_block={block}: {same}"
    # What was saved is what was trained, and the fresh supervised head learned.
    saved = ckpt_lib.restore_checkpoint(str(tmp_path / "ft"), model, None)
    assert saved["step"] == 6 and _same(_stage_arrays(model)[4], after[4])
    assert np.abs(model.supervised_head.weights[0].numpy()).sum() > 0


def test_linear_eval_trains_only_the_head_from_zero_and_beats_chance(fashion_mnist_dir, pretrained, tmp_path):
    pre_dir, before = pretrained
    model_dir = str(tmp_path / "lin")
    config = tiny_config(
        fashion_mnist_dir, model_dir, train_mode="finetune", checkpoint=pre_dir, fine_tune_after_block=4,
        zero_init_logits_layer=True, train_steps=0, checkpoint_steps=0, optimizer="momentum", learning_rate=1.0,
    )
    # Zero init: the head starts at exactly zero (a model built, not trained).
    plan = train_lib.make_plan(config, 1000)
    fresh = train_lib.create_model(config, 10, plan)
    assert all(not np.any(v.numpy()) for v in fresh.supervised_head.weights)

    import dataclasses

    id_file = subsets.write_id_file(str(tmp_path / "ids.txt"), [str(i) for i in range(0, 2560, 2)])  # Like 1percent.txt.
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, train_steps=60, checkpoint_steps=30, eval_steps=4, eval_batch_size=64, train_subset_ids=id_file))
    model = train_lib.train(config)
    assert _recorded_ids(model_dir) == [str(i) for i in range(0, 2560, 2)]
    assert _same([x for s in range(5) for x in before[s]], [x for s in range(5) for x in _stage_arrays(model)[s]])
    assert np.any(model.supervised_head.weights[0].numpy())
    results = train_lib.evaluate_checkpoint(config)  # A fresh model restored from model_dir.
    assert results["global_step"] == 60
    assert results["top_1_accuracy"] > 0.25, results  # Chance is 0.1 on 10 classes (256 test images).


@pytest.mark.parametrize("selector, trained", [(0, 0), (1, 1), (-1, 2), (2, 2)])
def test_projection_layers_after_the_selected_one_are_frozen(selector, trained, tmp_path):
    import dataclasses

    config = tiny_config("/unused", str(tmp_path / "m"), train_mode="finetune", fine_tune_after_block=4)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, ft_proj_selector=selector))
    model = train_lib.create_model(config, 10, train_lib.make_plan(config, 1000))
    head = model.projection_head
    expected = [v.path for layer in head.dense_layers[:trained] + head.bn_layers[:trained] for v in layer.trainable_weights]
    assert sorted(v.path for v in head.trainable_weights) == sorted(expected)
    assert len(head.dense_layers) == 2 and (trained == 0) == (not expected)
