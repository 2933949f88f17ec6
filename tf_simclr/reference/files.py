"""Finding and reading the reference implementation's weight files (google-research/simclr `tf2/`).

The reference writes its model in two forms, both `tf.train` checkpoints of the
same object graph (`model/resnet_model/...`, `model/_projection_head/...`,
`model/supervised_head/...`):

* a SavedModel folder (`saved_model.pb`, `variables/variables.*`): what its
  `run.py` exports and what the official SimCLR v1/v2 models are;
* a `tf.train.CheckpointManager` checkpoint in a model_dir (`checkpoint`,
  `ckpt-N.index`, `ckpt-N.data-*`): a pretraining run's own state.

A SavedModel's variable file keys most variables by their position in flat
lists (`model/resnet_model/variables/229`), so names come from the object graph
stored beside them (`_CHECKPOINTABLE_OBJECT_GRAPH`): each variable's path
through named attributes, which is the same in both forms.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from tf_simclr.storage import fs

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_FOLDER = "saved_model"  # gs://simclr-checkpoints-tf2/simclrv2/<family>/<name>/saved_model/
SAVED_MODEL_VARIABLES = ("variables", "variables")
CHECKPOINT_STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's index of its ckpt-N prefixes.
MODEL_PREFIX = "model/"  # The reference saves `tf.train.Checkpoint(model=...)`, and its SavedModel `self.model`.
REFERENCE_MARKER = "model/resnet_model/"  # Only the reference's files hold variables under this path.
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE_ATTRIBUTE = "VARIABLE_VALUE"
# Edges that reach a variable a second time (Keras's flat variable lists, the SavedModel's `keras_api`
# copies, the module's `trainable_variables_list`): skipped, so each variable gets its one attribute path.
_ALIAS_EDGES = frozenset({
    "variables", "trainable_variables", "non_trainable_variables", "keras_api", "trainable_weights",
    "non_trainable_weights", "weights", "trainable_variables_list", "_variables",
})
_STEP_FOLDER = re.compile(r"^\d+$")


@dataclasses.dataclass(frozen=True)
class ReferenceFiles:
    """Where one reference model's variables are.

    Attributes:
        path: What the user named.
        prefix: The `tf.train` checkpoint prefix holding the variables.
        saved_model_dir: The SavedModel folder, or None for a training checkpoint.
    """

    path: str
    prefix: str
    saved_model_dir: Optional[str] = None

    @property
    def form(self) -> str:
        return "SavedModel" if self.saved_model_dir else "checkpoint"


def _index_exists(prefix: str) -> bool:
    return fs.exists(prefix + ".index")


def _newest_step_folder(path: str) -> Optional[str]:
    """`<path>/<step>/` SavedModels, as the reference's `model_dir/saved_model/` keeps them: the newest."""
    steps = [int(name) for name in fs.listdir(path)
             if _STEP_FOLDER.match(name) and fs.exists(fs.join(path, name, SAVED_MODEL_FILE))]
    return fs.join(path, str(max(steps))) if steps else None


def locate(path: str) -> Optional[ReferenceFiles]:
    """The variables a path names, if it has the reference's layout (no content is read).

    Accepts a SavedModel folder (or the official models' `<name>/` holding `saved_model/`),
    a folder of `<step>/` SavedModels, a model_dir with a `checkpoint` file (its newest
    `ckpt-N`) and a `ckpt-N` prefix.
    """
    path = str(path).rstrip("/") or str(path)
    if not fs.exists(fs.join(path, SAVED_MODEL_FILE)) and fs.exists(fs.join(path, SAVED_MODEL_FOLDER, SAVED_MODEL_FILE)):
        path = fs.join(path, SAVED_MODEL_FOLDER)  # The official models' `<name>/saved_model/`.
    if fs.exists(fs.join(path, SAVED_MODEL_FILE)):
        prefix = fs.join(path, *SAVED_MODEL_VARIABLES)
        return ReferenceFiles(path, prefix, path) if _index_exists(prefix) else None
    if _index_exists(path):
        return ReferenceFiles(path, path)
    if fs.exists(fs.join(path, CHECKPOINT_STATE_FILE)):
        import tensorflow as tf

        prefix = tf.train.latest_checkpoint(path)
        if prefix and _index_exists(prefix):
            return ReferenceFiles(path, prefix)
    if fs.isdir(path):
        newest = _newest_step_folder(path)
        if newest:
            return locate(newest)
    return None


def is_reference(path: str) -> bool:
    """Whether `path` holds a model written by the reference (its variable names say so; cheap)."""
    files = locate(path)
    if files is None:
        return False
    import tensorflow as tf

    try:
        names = [name for name, _ in tf.train.list_variables(files.prefix)]
    except (tf.errors.OpError, ValueError):
        return False
    return any(name.startswith(REFERENCE_MARKER) for name in names)


def attribute_paths(reader) -> dict[str, str]:
    """`resnet_model/.../conv2d/kernel` -> checkpoint key, for every variable of the reference's model.

    Walks the stored object graph breadth-first along named attributes, skipping the
    alias edges, so a variable's path is its place in the model's own structure.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    paths: dict[str, str] = {}
    seen = {0}
    frontier = [(0, "")]
    while frontier:
        following = []
        for node_id, prefix in frontier:
            node = graph.nodes[node_id]
            for attribute in node.attributes:
                if attribute.name == _VALUE_ATTRIBUTE and prefix.startswith(MODEL_PREFIX):
                    paths.setdefault(prefix[len(MODEL_PREFIX):], attribute.checkpoint_key)
            for child in node.children:
                if child.local_name in _ALIAS_EDGES or child.node_id in seen:
                    continue
                seen.add(child.node_id)
                following.append((child.node_id, f"{prefix}{child.local_name}/"))
        frontier = following
    return {path.rstrip("/"): key for path, key in paths.items()}


@dataclasses.dataclass
class ReferenceVariables:
    """The reference model's variables: shapes by attribute path, values on demand."""

    files: ReferenceFiles
    keys: dict  # attribute path -> checkpoint key
    shapes: dict  # attribute path -> tuple
    reader: object
    global_step: Optional[int] = None

    def value(self, path: str):
        return self.reader.get_tensor(self.keys[path])


def read_variables(path: str) -> ReferenceVariables:
    """Opens a reference model's variables (no array is read until `value`).

    Raises:
        ValueError: naming the path and what is accepted, when it holds no reference model.
    """
    import tensorflow as tf

    files = locate(path)
    if files is None or not is_reference(path):
        raise ValueError(
            f"{path} holds no model written by google-research/simclr: expected a SavedModel folder "
            "(saved_model.pb, variables/) or a model_dir / ckpt-N prefix written by its tf.train.CheckpointManager."
        )
    reader = tf.train.load_checkpoint(files.prefix)
    keys = attribute_paths(reader)
    shapes_by_key = reader.get_variable_to_shape_map()
    shapes = {p: tuple(int(d) for d in shapes_by_key[k]) for p, k in keys.items() if k in shapes_by_key}
    step = None
    if "global_step/.ATTRIBUTES/VARIABLE_VALUE" in shapes_by_key:
        step = int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE"))
    return ReferenceVariables(files, {p: keys[p] for p in shapes}, shapes, reader, step)
