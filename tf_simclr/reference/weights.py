"""Loading a reference model's weights into a tf_simclr `SimCLRModel`, every shape checked first.

Batch-norm moving statistics are weights like any other here: the reference's
inference outputs depend on them, so they are copied with the kernels.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from tf_simclr.reference import files, layout
from tf_simclr.reference.architecture import ReferenceArchitecture, infer_architecture
from tf_simclr.storage.checkpoint import CheckpointMismatchError

log = logging.getLogger("tf_simclr")

MODEL_PARTS = ("encoder", "projection_head", "supervised_head")
_SHOWN_PROBLEMS = 5


@dataclasses.dataclass
class ReferenceModel:
    """A reference model on disk: its variables, structure, architecture and where each variable goes."""

    variables: files.ReferenceVariables
    layout: layout.Layout
    architecture: ReferenceArchitecture
    targets: dict  # reference path -> layout.Target

    @property
    def path(self) -> str:
        return self.variables.files.path

    @property
    def step(self) -> int:
        """The training step of a checkpoint (SavedModels do not keep it: 0)."""
        return int(self.variables.global_step or 0)


def open_reference(path: str) -> ReferenceModel:
    """Reads a reference model's variable names and shapes (no array) and infers its architecture.

    Raises:
        ValueError: no reference model at `path`, or variables tf_simclr has no place for.
    """
    variables = files.read_variables(path)
    structure = layout.parse(variables.shapes)
    try:
        architecture = infer_architecture(structure, variables.shapes)
        targets = layout.targets(structure)
    except layout.UnknownLayoutError as e:
        raise ValueError(f"{path}: {e}") from None
    return ReferenceModel(variables, structure, architecture, targets)


def target_variable(model, target: layout.Target):
    """The `SimCLRModel` variable a `Target` names (AttributeError/ValueError if the model has no such layer)."""
    if target.part == "encoder":
        holder = model.encoder.get_layer(target.layer)
    elif target.part == "projection_head":
        head = model.projection_head
        kind, _, rest = target.attribute.partition(".")
        holder = (head.dense_layers if kind == "dense" else head.bn_layers)[target.layer]
        return _attribute(holder, rest)
    else:
        holder = model.supervised_head
    return _attribute(holder, target.attribute)


def _attribute(holder, dotted: str):
    for name in dotted.split("."):
        holder = getattr(holder, name)
    return holder


def supervised_head_fits(reference: ReferenceModel, model) -> bool:
    """Whether the reference's supervised head has the model's classes and input width (then it is restored)."""
    head = getattr(model, "supervised_head", None)
    if head is None or not reference.architecture.has_supervised_head:
        return False
    kernel = reference.variables.shapes[reference.layout.supervised["kernel"]]
    return tuple(kernel) == tuple(head.linear_layer.kernel.shape)


def _pairs(reference: ReferenceModel, model, parts: tuple) -> list:
    """(reference path, model variable) for the parts, or CheckpointMismatchError listing what does not fit."""
    pairs, problems = [], []
    for path, target in sorted(reference.targets.items()):
        if target.part not in parts:
            continue
        try:
            variable = target_variable(model, target)
        except (AttributeError, ValueError, IndexError):
            problems.append(f"no {target.part} layer {target.layer} for {path}")
            continue
        stored, wanted = tuple(reference.variables.shapes[path]), tuple(variable.shape)
        if stored != wanted:
            problems.append(f"{path} {stored} vs {variable.path} {wanted}")
        pairs.append((path, variable))
    covered = {id(v) for _, v in pairs}
    for part in parts:
        holder = getattr(model, part, None)
        for variable in getattr(holder, "variables", []):
            if id(variable) not in covered:
                problems.append(f"{variable.path} {tuple(variable.shape)} has no reference variable")
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS]) + ("; ..." if len(problems) > _SHOWN_PROBLEMS else "")
        raise CheckpointMismatchError(
            f"{reference.path} ({reference.architecture.describe()}) does not fit this model: {len(problems)} "
            f"variables differ ({shown}). Pass the flags of its architecture: {reference.architecture.flags()}."
        )
    return pairs


def load_into(model, reference: ReferenceModel, *, supervised_head: bool = True) -> tuple:
    """Copies the reference's encoder, projection head and (if asked and it fits) supervised head into `model`.

    Nothing is assigned unless every variable of those parts fits.

    Returns:
        The parts restored.
    """
    parts = ["encoder", "projection_head"]
    if supervised_head and supervised_head_fits(reference, model):
        parts.append("supervised_head")
    parts = tuple(parts)
    pairs = _pairs(reference, model, parts)
    for path, variable in pairs:
        variable.assign(np.asarray(reference.variables.value(path)).astype(variable.dtype))
    log.info("Loaded %d variables (%s) of %s from %s", len(pairs), ", ".join(parts),
             reference.architecture.describe(), reference.path)
    return parts


def build_loaded_model(reference: ReferenceModel, config):
    """The model `config` describes (plain batch norm, outside any strategy) holding the reference's weights.

    For exports, conversion and evaluation: the supervised head is built when the
    reference has one (and `config` says the run has a head) and restored when it fits.
    """
    from tf_simclr.models import factory

    num_classes = reference.architecture.num_classes or None
    model = factory.model_from_config(config, num_classes, plain_batch_norm=True)
    load_into(model, reference, supervised_head=True)
    return model


def initialize(model, path: str, *, zero_init_logits_layer: bool = False) -> tuple:
    """`--checkpoint=<reference model>` at the start of a run: its weights, and its supervised head as the reference.

    The head is restored when it has the run's classes (and input width); with
    `--zero_init_logits_layer` it is zeroed instead, as the reference does after
    restoring. A head that does not fit starts fresh.

    Returns:
        The parts restored.
    """
    reference = open_reference(path)
    parts = load_into(model, reference, supervised_head=not zero_init_logits_layer)
    head = getattr(model, "supervised_head", None)
    if head is None:
        return parts
    if zero_init_logits_layer:
        for variable in head.trainable_weights:
            variable.assign(np.zeros(tuple(variable.shape), variable.dtype))
        log.info("--zero_init_logits_layer: the supervised head starts at zero.")
    elif "supervised_head" not in parts:
        found = reference.architecture
        why = (f"it has {found.num_classes} classes from {found.head_input_dim} features"
               if found.has_supervised_head else "it has none")
        log.info("The supervised head starts fresh: %s, this run's has %d classes from %d features.", why,
                 head.num_classes, int(head.linear_layer.kernel.shape[0]))
    return parts
