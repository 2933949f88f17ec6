"""The reference model's structure, read from its variables' attribute paths, and where each goes in tf_simclr.

The reference (`tf2/resnet.py`, `tf2/model.py`) keeps its layers in Python lists,
so a variable's path says which list and which position it sits at:

    resnet_model/initial_conv_relu_max_pool/<i>/conv2d/kernel      stem convs and batch norms
    resnet_model/block_groups/<g>/layers/<b>/<list>/<i>/...        a block's layers
        projection_layers, conv_relu_dropblock_layers              bottleneck blocks (ResNet-50 and deeper)
        shortcut_layers, conv2d_bn_layers, se_layer                basic blocks (ResNet-18/34)
    _projection_head/linear_layers/<j>/{dense/kernel, bn_relu/bn/*}
    supervised_head/linear_layer/dense/{kernel, bias}

Positions shift with the options (DropBlock and pooling layers hold no variables,
selective kernels replace a conv and its batch norm), so each list's layers are
told apart by what they hold and matched in order to tf_simclr's explicitly
named layers (`models/backbones/resnet.py`): the k-th conv of a bottleneck is
`conv1`, `conv2`, `conv3` (or `conv1`, `conv3` beside `sk_conv2`), and so on.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Union

BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")

_STEM = re.compile(r"^resnet_model/initial_conv_relu_max_pool/(\d+)/(.+)$")
_BLOCK_LIST = re.compile(
    r"^resnet_model/block_groups/(\d+)/layers/(\d+)/"
    r"(projection_layers|shortcut_layers|conv_relu_dropblock_layers|conv2d_bn_layers)/(\d+)/(.+)$"
)
_BLOCK_SE = re.compile(r"^resnet_model/block_groups/(\d+)/layers/(\d+)/se_layer/(.+)$")
_PROJECTION = re.compile(r"^_projection_head/linear_layers/(\d+)/(dense/kernel|bn_relu/bn/\w+)$")
_SUPERVISED = re.compile(r"^supervised_head/linear_layer/dense/(kernel|bias)$")

_SHORTCUT_LISTS = ("projection_layers", "shortcut_layers")
_BOTTLENECK_MAIN = "conv_relu_dropblock_layers"
_BASIC_MAIN = "conv2d_bn_layers"

# What each kind of reference layer holds: its variable's path inside the layer -> tf_simclr attribute.
_CONV = {"conv2d/kernel": "kernel"}
_BN = {f"bn/{name}": name for name in BN_VARIABLES}
_SELECTIVE_KERNEL = {
    "conv2d_fixed_padding/conv2d/kernel": "conv.kernel",
    **{f"batch_norm_relu/bn/{name}": f"bn.{name}" for name in BN_VARIABLES},
    "conv2d_0/kernel": "mix_conv0.kernel",
    **{f"batch_norm_relu_1/bn/{name}": f"mix_bn.{name}" for name in BN_VARIABLES},
    "conv2d_1/kernel": "mix_conv1.kernel",
}
_SQUEEZE_EXCITE = {f"{conv}/{var}": f"{conv}.{var}" for conv in ("se_reduce", "se_expand") for var in ("kernel", "bias")}
_KINDS = {"conv": _CONV, "bn": _BN, "sk": _SELECTIVE_KERNEL, "se": _SQUEEZE_EXCITE}


class UnknownLayoutError(ValueError):
    """The variables do not have the structure of the reference's ResNet and heads."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one reference variable goes in a `SimCLRModel`.

    Attributes:
        part: "encoder", "projection_head" or "supervised_head" (the checkpoint parts).
        layer: The encoder layer's name, the projection head's layer index, or None.
        attribute: Dotted attribute path on that layer (`kernel`, `mix_bn.moving_mean`).
    """

    part: str
    layer: Union[str, int, None]
    attribute: str


@dataclasses.dataclass
class Element:
    """One reference layer with variables: its kind and its variables (tf_simclr attribute -> reference path)."""

    kind: str
    variables: dict

    def path(self, attribute: str) -> str:
        return self.variables[attribute]


@dataclasses.dataclass
class Block:
    """One residual block: `bottleneck` (ResNet-50+) or basic (ResNet-18/34)."""

    group: int  # 1..4, as `block_group<g>`
    index: int
    bottleneck: bool
    shortcut: list
    main: list
    squeeze_excite: Optional[Element] = None

    @property
    def name(self) -> str:
        return f"block_group{self.group}_block{self.index}"

    def of_kind(self, kind: str) -> list:
        return [e for e in self.main if e.kind == kind]


@dataclasses.dataclass
class Layout:
    """The reference model as tf_simclr sees it."""

    stem: list
    blocks: list
    projection: list  # One dict (tf_simclr attribute -> reference path) per linear layer, in order.
    supervised: dict
    unrecognized: list

    def blocks_per_group(self) -> tuple:
        counts = [0, 0, 0, 0]
        for block in self.blocks:
            counts[block.group - 1] += 1
        return tuple(counts)


def _element(inner: dict, where: str) -> Element:
    """Classifies one reference layer by the variables it holds."""
    for kind, table in _KINDS.items():
        if set(inner) <= set(table) and inner:
            required = set(table) - ({"bn/beta"} if kind == "bn" else set())  # BN without center has no beta.
            if kind == "sk":
                required -= {"batch_norm_relu/bn/beta", "batch_norm_relu_1/bn/beta"}
            if required <= set(inner):
                return Element(kind, {table[name]: path for name, path in inner.items()})
    raise UnknownLayoutError(f"Unrecognized reference layer at {where}: it holds {sorted(inner)}.")


def _ordered_elements(entries: dict, where: str) -> list:
    """`{index: {inner path: reference path}}` -> layers in list order."""
    return [_element(entries[i], f"{where}/{i}") for i in sorted(entries)]


def parse(paths) -> Layout:
    """Reads the structure from the reference's attribute paths (`files.attribute_paths`)."""
    stem: dict = {}
    blocks: dict = {}
    projection: dict = {}
    supervised: dict = {}
    unrecognized = []
    for path in sorted(paths):
        if m := _STEM.match(path):
            stem.setdefault(int(m.group(1)), {})[m.group(2)] = path
        elif m := _BLOCK_LIST.match(path):
            key = (int(m.group(1)), int(m.group(2)))
            blocks.setdefault(key, {}).setdefault(m.group(3), {}).setdefault(int(m.group(4)), {})[m.group(5)] = path
        elif m := _BLOCK_SE.match(path):
            key = (int(m.group(1)), int(m.group(2)))
            blocks.setdefault(key, {}).setdefault("se_layer", {})[m.group(3)] = path
        elif m := _PROJECTION.match(path):
            inner = m.group(2)
            attribute = "dense.kernel" if inner == "dense/kernel" else "bn." + inner.rsplit("/", 1)[1]
            projection.setdefault(int(m.group(1)), {})[attribute] = path
        elif m := _SUPERVISED.match(path):
            supervised[m.group(1)] = path
        else:
            unrecognized.append(path)
    parsed_blocks = [_block(g, b, lists) for (g, b), lists in sorted(blocks.items())]
    return Layout(
        stem=_ordered_elements(stem, "resnet_model/initial_conv_relu_max_pool"),
        blocks=parsed_blocks,
        projection=[projection[j] for j in sorted(projection)],
        supervised=supervised,
        unrecognized=unrecognized,
    )


def _block(group_index: int, block_index: int, lists: dict) -> Block:
    where = f"resnet_model/block_groups/{group_index}/layers/{block_index}"
    if group_index > 3:
        raise UnknownLayoutError(f"{where}: the reference's ResNet has 4 block groups, not {group_index + 1}.")
    bottleneck = _BOTTLENECK_MAIN in lists
    main_list = _BOTTLENECK_MAIN if bottleneck else _BASIC_MAIN
    if main_list not in lists:
        raise UnknownLayoutError(f"{where} has neither {_BOTTLENECK_MAIN} nor {_BASIC_MAIN}: {sorted(lists)}.")
    shortcut = []
    for name in _SHORTCUT_LISTS:
        if name in lists:
            shortcut += _ordered_elements(lists[name], f"{where}/{name}")
    squeeze_excite = _element(lists["se_layer"], f"{where}/se_layer") if "se_layer" in lists else None
    block = Block(group_index + 1, block_index, bottleneck, shortcut, _ordered_elements(lists[main_list], f"{where}/{main_list}"),
                  squeeze_excite)
    in_main = block.of_kind("se")
    if in_main:
        block.squeeze_excite = in_main[0]
        block.main = [e for e in block.main if e.kind != "se"]
    return block


# ------------------------------------------------------------------ tf_simclr names
def _names(elements: list, names: list, where: str) -> list:
    if len(elements) != len(names):
        raise UnknownLayoutError(f"{where}: expected {len(names)} layers of this kind, found {len(elements)}.")
    return list(zip(elements, names))


def _stem_targets(stem: list) -> list:
    convs = [e for e in stem if e.kind == "conv"]
    bns = [e for e in stem if e.kind == "bn"]
    if len(convs) == 3:  # ResNet-D: three 3x3 convs.
        conv_names, bn_names = ["initial_conv1", "initial_conv2", "initial_conv"], ["initial_bn1", "initial_bn2", "initial_bn"]
    else:
        conv_names, bn_names = ["initial_conv"], ["initial_bn"]
    where = "resnet_model/initial_conv_relu_max_pool"
    return _names(convs, conv_names, where) + _names(bns, bn_names, where)


def _block_targets(block: Block) -> list:
    name = block.name
    pairs = []
    where = f"block_group{block.group} block {block.index}"
    if block.shortcut:
        convs = [e for e in block.shortcut if e.kind == "conv"]
        bns = [e for e in block.shortcut if e.kind == "bn"]
        pairs += _names(convs, [f"{name}_proj_conv"], where) + _names(bns, [f"{name}_proj_bn"], where)
    selective = block.of_kind("sk")
    if block.bottleneck and selective:
        conv_names, bn_names = [f"{name}_conv1", f"{name}_conv3"], [f"{name}_bn1", f"{name}_bn3"]
        pairs += _names(selective, [f"{name}_sk_conv2"], where)
    elif block.bottleneck:
        conv_names = [f"{name}_conv1", f"{name}_conv2", f"{name}_conv3"]
        bn_names = [f"{name}_bn1", f"{name}_bn2", f"{name}_bn3"]
    else:
        conv_names, bn_names = [f"{name}_conv1", f"{name}_conv2"], [f"{name}_bn1", f"{name}_bn2"]
    pairs += _names(block.of_kind("conv"), conv_names, where) + _names(block.of_kind("bn"), bn_names, where)
    if block.squeeze_excite is not None:
        pairs.append((block.squeeze_excite, f"{name}_se"))
    return pairs


def targets(layout: Layout) -> dict:
    """reference path -> `Target`, for every variable of the model (ValueError if any has no place)."""
    if layout.unrecognized:
        shown = ", ".join(layout.unrecognized[:5]) + (" ..." if len(layout.unrecognized) > 5 else "")
        raise UnknownLayoutError(f"{len(layout.unrecognized)} reference variables have no place in tf_simclr's "
                                 f"ResNet or heads: {shown}")
    mapping = {}
    pairs = _stem_targets(layout.stem)
    for block in layout.blocks:
        pairs += _block_targets(block)
    for element, layer_name in pairs:
        for attribute, path in element.variables.items():
            mapping[path] = Target("encoder", layer_name, attribute)
    for index, variables in enumerate(layout.projection):
        for attribute, path in variables.items():
            mapping[path] = Target("projection_head", index, attribute)
    for attribute, path in layout.supervised.items():
        mapping[path] = Target("supervised_head", None, f"linear_layer.{attribute}")
    return mapping
