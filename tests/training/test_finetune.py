"""Fine-tuning from a pretraining checkpoint: what `--fine_tune_after_block` freezes stays bit-identical, the rest learns."""

import functools

import keras
import numpy as np
import pytest

import helpers
from tf_simclr.data import sources, subsets
from tf_simclr.evaluation import supervised
from tf_simclr.models.backbones import resnet
from tf_simclr.storage import checkpoint as ckpt_lib
from tf_simclr.training import trainer
from tf_simclr.optim.plan import make_plan

pytestmark = pytest.mark.slow


def fashion_config(data_dir, model_dir, **train):
    """Fashion-MNIST (train -> test) with the tiny model, batch 32."""
    values = dict(train_batch_size=32, learning_rate=1.0, weight_decay=1e-4, temperature=0.5, seed=1)
    values.update(train)
    return helpers.tiny_config("fashion_mnist", model_dir, data={"data_dir": data_dir, "eval_split": "test",
                                                                 "color_jitter_strength": 0.5}, **values)


@pytest.fixture(scope="module")
def pretrained(fashion_mnist_dir, tmp_path_factory):
    """A 20-step pretraining run (enough for settled batch-norm statistics): its model_dir and encoder arrays."""
    model_dir = str(tmp_path_factory.mktemp("pre") / "run")
    config = fashion_config(fashion_mnist_dir, model_dir, train_steps=20, checkpoint_steps=20)
    model = trainer.train(config)
    return model_dir, {**_stage_arrays(model), "proj": _arrays(model.projection_head)}


def _arrays(layer):
    return [(v.path, np.array(v.numpy())) for v in layer.weights]


def _stage_arrays(model):
    """{stage: [(path, array), ...]} for every encoder variable, moving BN statistics included."""
    return {stage: [(v.path, np.array(v.numpy())) for layer in layers for v in layer.weights]
            for stage, layers in enumerate(resnet.stages(model.encoder))}


class HeadAtStart(keras.callbacks.Callback):
    """The supervised head's values when fit begins: after the restore, before any step (the fresh head's init)."""

    def on_train_begin(self, logs=None):
        self.arrays = _arrays(self.model.supervised_head)


def _finetune(data_dir, pretrained_dir, model_dir, block, **overrides):
    config = fashion_config(
        data_dir, model_dir, train_mode="finetune", checkpoint=pretrained_dir, fine_tune_after_block=block,
        train_steps=6, checkpoint_steps=6, learning_rate=0.1, optimizer="momentum", **overrides,
    )
    head = HeadAtStart()
    return config, trainer.train(config, callbacks=[head]), head.arrays


def _recorded_ids(model_dir):
    return subsets.read_id_file(f"{model_dir}/{subsets.SUBSET_IDS_FILE}")


def _same(a, b):
    return all(pa == pb and np.array_equal(x, y) for (pa, x), (pb, y) in zip(a, b)) and len(a) == len(b)


_SEED3_IDS = {}


@functools.lru_cache(maxsize=1)
def train_labels(data_dir):
    return sources.load_source("fashion_mnist", data_dir).split_index("train")[0]


@pytest.mark.parametrize("block, frozen", [(4, range(5)), (-1, ()), (2, range(3))])
def test_fine_tune_after_block_freezes_exactly_the_stages_up_to_it(fashion_mnist_dir, pretrained, tmp_path, block, frozen):
    pre_dir, before = pretrained
    # Every run fine-tunes on the same 1% of the labels (seed 3): class-balanced, recorded, repeatable.
    _, model, head_at_start = _finetune(fashion_mnist_dir, pre_dir, str(tmp_path / "ft"), block,
                                        train_label_fraction=0.01, subset_seed=3)
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
            # Bit-identical to the pretrained arrays: kernels, BN scales and moving statistics alike.
            assert _same(before[stage], after[stage]), f"stage {stage} changed with fine_tune_after_block={block}"
        else:
            # Every variable of a trained stage moved: kernels and BN scales by gradient, moving statistics by updates.
            same = [p for (p, x), (_, y) in zip(before[stage], after[stage]) if np.array_equal(x, y)]
            assert not same, f"stage {stage} not trained with fine_tune_after_block={block}: {same}"
    # What was saved is what was trained.
    saved = ckpt_lib.restore_checkpoint(str(tmp_path / "ft"), model, None)
    assert saved["step"] == 6 and _same(_stage_arrays(model)[4], after[4])
    # The fresh supervised head learned: each of its variables moved from its value when training began.
    head_now = _arrays(model.supervised_head)
    assert [p for p, _ in head_now] == [p for p, _ in head_at_start] and head_now
    unmoved = [p for (p, x), (_, y) in zip(head_at_start, head_now) if np.array_equal(x, y)]
    assert not unmoved, f"the supervised head did not train: {unmoved}"


def test_linear_eval_trains_only_the_head_from_zero_and_beats_chance(fashion_mnist_dir, pretrained, tmp_path):
    pre_dir, before = pretrained
    model_dir = str(tmp_path / "lin")
    config = fashion_config(
        fashion_mnist_dir, model_dir, train_mode="finetune", checkpoint=pre_dir, fine_tune_after_block=4,
        zero_init_logits_layer=True, train_steps=0, checkpoint_steps=0, optimizer="momentum", learning_rate=1.0,
    )
    # Zero init: the head starts at exactly zero (a model built, not trained).
    plan = make_plan(config, 1000)
    fresh = trainer.compile_model(config, 10, plan)
    assert fresh.supervised_head.weights and all(not np.any(v.numpy()) for v in fresh.supervised_head.weights)

    id_file = subsets.write_id_file(str(tmp_path / "ids.txt"), [str(i) for i in range(0, 2560, 2)])  # Like 1percent.txt.
    config = config.replace(train={"train_steps": 60, "checkpoint_steps": 30, "eval_steps": 4, "eval_batch_size": 64,
                                   "train_subset_ids": id_file})
    model = trainer.train(config)
    assert _recorded_ids(model_dir) == [str(i) for i in range(0, 2560, 2)]
    assert _same([x for s in range(5) for x in before[s]], [x for s in range(5) for x in _stage_arrays(model)[s]])
    assert _same(before["proj"], _arrays(model.projection_head))
    assert np.any(model.supervised_head.weights[0].numpy())  # Moved from its all-zero start.
    results = supervised.evaluate_checkpoint(config)  # A fresh model restored from model_dir.
    assert results["global_step"] == 60
    assert helpers.beats_chance(results["top_1_accuracy"], 256, 10), results  # 4 batches of 64 test images.


@pytest.mark.parametrize("selector, trained", [(0, 0), (1, 1), (-1, 2), (2, 2)])
def test_projection_layers_after_the_selected_one_are_frozen(selector, trained, tmp_path):
    config = helpers.tiny_config("/unused", str(tmp_path / "m"), model={"ft_proj_selector": selector},
                                 train_mode="finetune", fine_tune_after_block=4)
    model = trainer.compile_model(config, 10, make_plan(config, 1000))
    head = model.projection_head
    expected = [v.path for layer in head.dense_layers[:trained] + head.bn_layers[:trained] for v in layer.trainable_weights]
    assert sorted(v.path for v in head.trainable_weights) == sorted(expected)
    assert len(head.dense_layers) == 2 and (trained == 0) == (not expected)
