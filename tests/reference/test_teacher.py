"""A google-research/simclr model as the teacher of a distillation run: its logits are the reference's own."""

import numpy as np
import pytest

from tests.reference import fixture_files
from tf_simclr.models import teacher as teacher_lib


@pytest.mark.parametrize("form", ["saved_model", "ckpt_prefix"])
def test_reference_teacher_gives_the_recorded_logits(form):
    teacher, info = teacher_lib.load_teacher(fixture_files.FORMS[form])
    recorded = fixture_files.recorded()
    assert info.kind == "reference" and info.num_classes == recorded["logits_sup"].shape[1]
    assert not teacher.trainable_weights
    got = np.asarray(teacher(recorded["images"], training=False))
    np.testing.assert_allclose(got, recorded["logits_sup"], rtol=fixture_files.TOLERANCE, atol=fixture_files.TOLERANCE)
