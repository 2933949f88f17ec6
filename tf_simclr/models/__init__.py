"""The networks: encoders by name, the heads, the SimCLR model and the one factory that builds it.

    backbones  BACKBONES registry (resnet; register_backbone for your own encoder)
    layers     layers shared by encoders and heads (the reference's batch norm)
    heads      projection head and supervised head
    simclr     SimCLRModel: forward pass and losses
    factory    build_model / model_from_config: heads, freezing rules, once

Backend-neutral: keras, keras.layers and keras.ops only.
"""

from tf_simclr.models.backbones import BACKBONES, register_backbone
from tf_simclr.models.factory import build_model, has_supervised_head, model_from_config
from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.simclr import SimCLRModel

__all__ = ["BACKBONES", "register_backbone", "build_model", "has_supervised_head", "model_from_config",
           "ProjectionHead", "SupervisedHead", "SimCLRModel"]
