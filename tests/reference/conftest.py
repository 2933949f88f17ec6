"""The fixture model converted once per session by `tf_simclr convert` (what most reference tests start from)."""

import contextlib
import io
import os

import pytest

import helpers
from tests.reference import fixture_files


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """`tf_simclr convert <fixture SavedModel> --verify`: its printed lines and the checkpoint and export it wrote."""
    root = tmp_path_factory.mktemp("converted")
    model_dir, export_dir = str(root / "r50_sk1_w0125"), str(root / "exports")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = helpers.run_cli("convert", fixture_files.SAVED_MODEL, f"--model_dir={model_dir}",
                                 f"--export_dir={export_dir}", "--image_size=64", "--verify")
    assert status == 0, printed.getvalue()
    return {"stdout": printed.getvalue(), "model_dir": model_dir, "checkpoint": os.path.join(model_dir, "ckpt-0"),
            "export": os.path.join(export_dir, "0")}
