"""`--mode=export` and `--mode=eval` with a google-research/simclr `--checkpoint` (nothing of tf_simclr's needed).

The export is compared with the reference's recorded outputs; the evaluation with the reference SavedModel's own
logits on the same eval images (loaded with `tf.saved_model.load`, called with `trainable=False`).
"""

import numpy as np
import pytest
import tensorflow as tf

import helpers
from tests.reference import fixture_files
from tests.reference.test_finetune import NUM_CLASSES, _fixture_model_fields, write_tinted_folder
from tf_simclr import jobs
from tf_simclr.data import pipeline, sources
from tf_simclr.export import exports_dir

pytestmark = pytest.mark.slow
EVAL_BATCH = 10


@pytest.fixture(scope="module")
def tinted(tmp_path_factory):
    return write_tinted_folder(str(tmp_path_factory.mktemp("tinted")), per_class=2, seed=3)


def _config(tmp_path, tinted, mode, checkpoint=fixture_files.SAVED_MODEL, **train):
    return helpers.tiny_config(f"folder:{tinted}", str(tmp_path / "run"), model=_fixture_model_fields(),
                               run={"mode": mode}, checkpoint=checkpoint, train_mode="finetune",
                               export_dir=str(tmp_path / "exports"), eval_batch_size=EVAL_BATCH, **train)


@pytest.mark.parametrize("form", ["saved_model", "ckpt_prefix"])
def test_mode_export_writes_the_reference_model_as_a_module(tmp_path, tinted, form):
    done = jobs.run(_config(tmp_path, tinted, "export", fixture_files.FORMS[form]), tf.distribute.get_strategy())
    step = 0 if form == "saved_model" else fixture_files.CHECKPOINT_STEP
    assert done["export"] == str(tmp_path / "exports" / str(step))
    loaded = tf.saved_model.load(done["export"])
    images = fixture_files.recorded()["images"]
    fixture_files.assert_outputs_equal_recorded({k: v.numpy() for k, v in loaded(images, training=False).items()})
    assert exports_dir.read_export_meta(done["export"])["converted_from"].endswith(
        fixture_files.FORMS[form].rsplit("/", 1)[-1])


def _reference_scores(tinted):
    """Top-1 accuracy and mean cross-entropy of the reference SavedModel's logits_sup on the eval images."""
    source = sources.load_source(f"folder:{tinted}", splits=["validation"])
    module = tf.saved_model.load(fixture_files.SAVED_MODEL)
    correct, losses = [], []
    for images, labels in pipeline.eval_dataset(source, "validation", 64, EVAL_BATCH):
        logits = module(images, trainable=False)["logits_sup"]
        correct += list(np.argmax(logits, -1) == labels.numpy())
        losses += list(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy())
    assert len(correct) == 2 * NUM_CLASSES
    return float(np.mean(correct)), float(np.mean(losses))


def test_mode_eval_scores_the_reference_head_as_the_reference_computes_it(tmp_path, tinted, capsys):
    done = jobs.run(_config(tmp_path, tinted, "eval"), tf.distribute.get_strategy())
    (result,) = done["eval"]
    accuracy, loss = _reference_scores(tinted)
    assert result["global_step"] == 0
    assert result["top_1_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert result["sup_loss"] == pytest.approx(loss, rel=1e-4)
    assert f"Eval results of {fixture_files.SAVED_MODEL}:" in capsys.readouterr().out
