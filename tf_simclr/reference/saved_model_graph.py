"""What a reference SavedModel's traced graph says that its variables cannot: the supervised head's input.

The reference feeds its supervised head `hiddens[--ft_proj_selector]` of the
projection head (0: the encoder output; SimCLRv2's fine-tuned models use a
projection layer). The kernel's shape cannot tell layers of equal width apart,
but the exported `__call__` graph names the tensor its `head_supervised` matmul
reads: `projection_head/proj_head_input` (0), `projection_head/Relu` (1),
`projection_head/Relu_<k>` (k + 1), or the last layer's output (-1).
"""

from __future__ import annotations

import re
from typing import Optional

from tf_simclr.storage import fs

_RELU = re.compile(r"^projection_head/Relu(?:_(\d+))?$")
_PASS_THROUGH = frozenset({"Identity", "StopGradient", "IdentityN"})
_MAX_HOPS = 16


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _selector_of(source: str) -> Optional[int]:
    if source.endswith("proj_head_input") or source.endswith("final_avg_pool"):
        return 0
    relu = _RELU.match(source)
    if relu:
        return int(relu.group(1) or 0) + 1
    if source.startswith("projection_head/"):
        return -1
    return None


def _function_selector(function) -> Optional[int]:
    nodes = {node.name: node for node in function.node_def}
    for node in function.node_def:
        if node.op != "MatMul" or not node.name.startswith("head_supervised/"):
            continue
        name = _node_name(node.input[0])
        for _ in range(_MAX_HOPS):
            selector = _selector_of(name)
            if selector is not None:
                return selector
            source = nodes.get(name)
            if source is None or source.op not in _PASS_THROUGH or not source.input:
                break
            name = _node_name(source.input[0])
    return None


def supervised_head_selector(saved_model_dir: str) -> Optional[int]:
    """The `--ft_proj_selector` the SavedModel's supervised head was traced with, or None if the graph does not say."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with fs.open_file(fs.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = set()
    for meta_graph in proto.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            selector = _function_selector(function)
            if selector is not None:
                found.add(selector)
    return found.pop() if len(found) == 1 else None
