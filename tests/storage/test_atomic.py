"""Atomic files and folders on the local disk and on a `tf.io.gfile` filesystem (TensorFlow's `ram://`)."""

import json
import os
import uuid

import pytest

from tf_simclr.storage import atomic, fs

MARKER = "meta.json"
NAMES = r"ckpt-\d+"


@pytest.fixture(params=["local", "ram"])
def parent(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"ram://atomic-{uuid.uuid4().hex}/run"


def _publish(parent, name, payload, marker=True):
    with atomic.publishing(fs.join(parent, name), MARKER) as folder:
        with fs.open_file(fs.join(folder, "data.bin"), "wb") as f:
            f.write(payload)
        if marker:
            with fs.open_file(fs.join(folder, MARKER), "w") as f:
                f.write(json.dumps({"payload": payload.decode()}))


def test_json_and_text_writes_are_whole_and_leave_no_temporary(parent):
    path = fs.join(parent, "flags.json")
    atomic.write_json(path, {"b": 2, "a": [1]})
    atomic.write_json(path, {"a": 3})
    assert atomic.read_json(path) == {"a": 3}
    assert fs.listdir(parent) == ["flags.json"]
    assert fs.read_text(path) == json.dumps({"a": 3}, indent=1, sort_keys=True)


def test_a_published_folder_replaces_the_old_one_only_when_complete(parent):
    fs.makedirs(parent)
    _publish(parent, "ckpt-1", b"first")
    with pytest.raises(RuntimeError, match="commit marker"):
        _publish(parent, "ckpt-2", b"no marker", marker=False)
    assert atomic.complete_entries(parent, MARKER, NAMES) == ["ckpt-1"]
    _publish(parent, "ckpt-1", b"second")  # Same name again: replaced.
    assert atomic.read_json(fs.join(parent, "ckpt-1", MARKER)) == {"payload": "second"}
    assert fs.listdir(parent) == ["ckpt-1"]


def test_a_failing_writer_publishes_nothing(parent):
    fs.makedirs(parent)
    _publish(parent, "ckpt-1", b"kept")
    with pytest.raises(KeyError):
        with atomic.publishing(fs.join(parent, "ckpt-2"), MARKER) as folder:
            with fs.open_file(fs.join(folder, "data.bin"), "wb") as f:
                f.write(b"partial")
            raise KeyError("crash")
    assert fs.listdir(parent) == ["ckpt-1"]


def test_recover_removes_uncommitted_folders_and_temporaries(parent):
    fs.makedirs(parent)
    _publish(parent, "ckpt-1", b"good")
    fs.makedirs(fs.join(parent, "ckpt-2"))  # What a writer killed before its marker leaves on an object store.
    with fs.open_file(fs.join(parent, "ckpt-2", "data.bin"), "wb") as f:
        f.write(b"half")
    fs.makedirs(fs.join(parent, ".tmp-ckpt-3-abcd1234"))  # What one killed mid-write leaves on a local disk.
    fs.makedirs(fs.join(parent, "notes"))  # Not ours: left alone.
    assert sorted(atomic.recover(parent, MARKER, NAMES)) == [".tmp-ckpt-3-abcd1234", "ckpt-2"]
    assert fs.listdir(parent) == ["ckpt-1", "notes"]


def test_recover_puts_back_a_folder_whose_replacement_never_arrived(tmp_path):
    parent = str(tmp_path)
    _publish(parent, "ckpt-4", b"old")
    os.rename(os.path.join(parent, "ckpt-4"), os.path.join(parent, ".old-ckpt-4-0000beef"))  # Killed between renames.
    assert atomic.recover(parent, MARKER, NAMES) == [".old-ckpt-4-0000beef"]
    assert atomic.read_json(os.path.join(parent, "ckpt-4", MARKER)) == {"payload": "old"}


def test_urls_and_local_paths_are_told_apart():
    assert fs.is_url("gs://bucket/run") and fs.is_url("ram://x") and not fs.is_url("/tmp/run")
    assert fs.parent("gs://bucket/a/b/") == "gs://bucket/a" and fs.basename("gs://bucket/a/b") == "b"
    assert fs.join("gs://bucket/run", "ckpt-1") == "gs://bucket/run/ckpt-1"
