"""The architecture of a reference model, inferred from its variables' shapes, and flags that contradict it.

Nothing is assumed about the model: the depth comes from the blocks per group,
the width from block_group1's first convolution, selective kernels, squeeze-
excitation and the stem from which layers exist, their ratios from the widths
of their bottlenecks, the projection head from its linear layers and the
classes from the supervised head's kernel. What the variables cannot tell
(the training image size, which projection layer fed the supervised head) is
left to flags.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from tf_simclr.config import ModelConfig
from tf_simclr.models.backbones.resnet import BLOCKS_PER_DEPTH, BOTTLENECK_DEPTHS, scaled_channels
from tf_simclr.reference.layout import Layout, UnknownLayoutError

SK_MIN_DIM = 32  # The reference's SK_Conv2D min_dim (tf_simclr's SelectiveKernelConv has the same).
PREFERRED_SK_RATIOS = (0.0625,)  # What every published SimCLRv2 model with selective kernels used.
PREFERRED_SE_RATIOS = (0.25, 0.125, 0.0625, 0.5)
GROUP_BASE_FILTERS = (64, 128, 256, 512)
CIFAR_IMAGE_SIZE = 32  # tf_simclr (and the reference) use the CIFAR stem for --image_size <= 32.
IMAGENET_IMAGE_SIZE = 224


def sk_mix_width(filters: int, ratio: float) -> int:
    return max(int(filters * ratio), SK_MIN_DIM)


def se_reduce_width(filters: int, ratio: float) -> int:
    return max(1, int(filters * ratio))


@dataclasses.dataclass(frozen=True)
class ReferenceArchitecture:
    """What a reference model's variables say about it.

    `sk_widths` and `se_widths` keep the observed `(block width, bottleneck width)`
    pairs: several ratios give the same widths, and any of them builds the model.
    """

    resnet_depth: int
    width_multiplier: float
    sk_ratio: float
    se_ratio: float
    cifar_stem: bool
    proj_head_mode: str
    num_proj_layers: int
    proj_out_dim: int
    num_classes: int  # 0: no supervised head.
    head_input_dim: int
    feature_dim: int
    sk_widths: tuple = ()
    se_widths: tuple = ()
    sk_ratio_shown: bool = True  # False: a CIFAR-stem ResNet-18/34, whose variables look the same either way.

    @property
    def has_supervised_head(self) -> bool:
        return self.num_classes > 0

    def default_image_size(self) -> int:
        """The size the model's stem is for: 32 (CIFAR stem), else 224 as the official models."""
        return CIFAR_IMAGE_SIZE if self.cifar_stem else IMAGENET_IMAGE_SIZE

    def model_config(self, image_size: Optional[int] = None, **fields) -> ModelConfig:
        """A `ModelConfig` that builds this model (other fields, e.g. `ft_proj_selector`, as given)."""
        values = dict(
            backbone="resnet", resnet_depth=self.resnet_depth, width_multiplier=self.width_multiplier,
            sk_ratio=self.sk_ratio, se_ratio=self.se_ratio, proj_head_mode=self.proj_head_mode,
            image_size=int(image_size or self.default_image_size()),
        )
        if self.proj_head_mode != "none":
            values.update(num_proj_layers=self.num_proj_layers, proj_out_dim=self.proj_out_dim)
        values.update(fields)
        return ModelConfig(**values)

    def hidden_widths(self) -> list:
        """Widths of the projection head's hiddens (`--ft_proj_selector` picks one): input, then each layer."""
        if self.proj_head_mode == "none":
            return [self.feature_dim]
        return [self.feature_dim] * self.num_proj_layers + [self.proj_out_dim]

    def flags(self) -> str:
        """The tf_simclr (and reference) flags that build this architecture (the stem follows --image_size)."""
        parts = [f"--resnet_depth={self.resnet_depth}", f"--width_multiplier={self.width_multiplier:g}",
                 f"--sk_ratio={self.sk_ratio:g}", f"--se_ratio={self.se_ratio:g}",
                 f"--proj_head_mode={self.proj_head_mode}"]
        if self.proj_head_mode != "none":
            parts += [f"--num_proj_layers={self.num_proj_layers}", f"--proj_out_dim={self.proj_out_dim}"]
        return " ".join(parts)

    def describe(self) -> str:
        options = [f"selective kernels (sk_ratio {self.sk_ratio:g})" if self.sk_ratio else "",
                   f"squeeze-excitation (se_ratio {self.se_ratio:g})" if self.se_ratio else "",
                   "CIFAR stem (--image_size <= 32)" if self.cifar_stem else
                   ("ResNet-D stem" if self.sk_ratio else "ImageNet stem") + " (--image_size > 32)"]
        head = ("no projection head" if self.proj_head_mode == "none"
                else f"{self.num_proj_layers}-layer projection head to {self.proj_out_dim}")
        classes = f"{self.num_classes}-class supervised head" if self.num_classes else "no supervised head"
        return (f"ResNet-{self.resnet_depth} width {self.width_multiplier:g}, " + ", ".join(o for o in options if o)
                + f"; {head}; {classes}")


# ------------------------------------------------------------------ Inference
def _shape(shapes: dict, path: str) -> tuple:
    return tuple(shapes[path])


def _depth(layout: Layout) -> int:
    kinds = {block.bottleneck for block in layout.blocks}
    if len(kinds) != 1:
        raise UnknownLayoutError("The reference model mixes bottleneck and basic blocks, which its ResNet never does.")
    bottleneck = kinds.pop()
    counts = layout.blocks_per_group()
    for depth, blocks in BLOCKS_PER_DEPTH.items():
        if tuple(blocks) == counts and (depth in BOTTLENECK_DEPTHS) == bottleneck:
            return depth
    raise UnknownLayoutError(f"No ResNet depth has {counts} {'bottleneck' if bottleneck else 'basic'} blocks per group "
                             f"(known: {dict(BLOCKS_PER_DEPTH)}).")


def _block_width(block, shapes: dict) -> int:
    """Channels of a block's first convolution: the bottleneck width, or a basic block's width."""
    return _shape(shapes, block.of_kind("conv")[0].path("kernel"))[-1]


def _width_multiplier(layout: Layout, shapes: dict) -> float:
    firsts = {block.group: block for block in layout.blocks if block.index == 0}
    width = _block_width(firsts[1], shapes) / GROUP_BASE_FILTERS[0]
    width = float(round(width)) if abs(width - round(width)) < 1e-9 else width
    for group, base in enumerate(GROUP_BASE_FILTERS, start=1):
        found = _block_width(firsts[group], shapes)
        if found != scaled_channels(base, width):
            raise UnknownLayoutError(f"block_group{group} is {found} channels wide, not {base} x {width:g}: not the "
                                     "reference's ResNet widths.")
    return width


def _ratio(pairs: list, width_of, preferred: tuple, minimum: int) -> float:
    """A ratio that reproduces every observed `(block width, bottleneck width)` pair, preferring round values."""
    candidates = list(preferred)
    candidates += sorted({observed / filters for filters, observed in pairs})
    candidates += sorted({(observed + 0.5) / filters for filters, observed in pairs})
    widest = max(filters for filters, _ in pairs)
    candidates.append(minimum / widest)
    for ratio in candidates:
        if all(width_of(filters, ratio) == observed for filters, observed in pairs):
            return float(ratio)
    raise UnknownLayoutError(f"No single ratio gives these bottleneck widths {sorted(set(pairs))[:6]}.")


def _sk_ratio(layout: Layout, shapes: dict) -> tuple:
    pairs = []
    for block in layout.blocks:
        for element in block.of_kind("sk"):
            pairs.append((_block_width(block, shapes), _shape(shapes, element.path("mix_conv0.kernel"))[-1]))
    if not pairs:
        return 0.0, ()
    if len(pairs) != len(layout.blocks):
        raise UnknownLayoutError("Only some blocks have selective kernels; the reference uses them in all or none.")
    return _ratio(pairs, sk_mix_width, PREFERRED_SK_RATIOS, SK_MIN_DIM), tuple(pairs)


def _se_ratio(layout: Layout, shapes: dict) -> tuple:
    pairs = [(_block_width(block, shapes), _shape(shapes, block.squeeze_excite.path("se_reduce.kernel"))[-1])
             for block in layout.blocks if block.squeeze_excite is not None]
    if not pairs:
        return 0.0, ()
    if len(pairs) != len(layout.blocks):
        raise UnknownLayoutError("Only some blocks have squeeze-excitation; the reference uses it in all or none.")
    return _ratio(pairs, se_reduce_width, PREFERRED_SE_RATIOS, 1), tuple(pairs)


def _stem(layout: Layout, shapes: dict) -> str:
    """'cifar' (one 3x3 conv), 'imagenet' (one 7x7) or 'resnet_d' (three 3x3 convs, with --sk_ratio > 0)."""
    kernels = [_shape(shapes, e.path("kernel"))[0] for e in layout.stem if e.kind == "conv"]
    stems = {(3,): "cifar", (7,): "imagenet", (3, 3, 3): "resnet_d"}
    if tuple(kernels) not in stems:
        raise UnknownLayoutError(f"Stem convs of sizes {kernels}: the reference's stems are one 3x3 (CIFAR), one 7x7 "
                                 "(ImageNet) or three 3x3 (ResNet-D, with selective kernels).")
    return stems[tuple(kernels)]


def _projection_head(layout: Layout, shapes: dict) -> tuple:
    if not layout.projection:
        return "none", 3, 128
    last = layout.projection[-1]
    return "nonlinear", len(layout.projection), _shape(shapes, last["dense.kernel"])[-1]


def infer_architecture(layout: Layout, shapes: dict) -> ReferenceArchitecture:
    """The architecture of the model whose variables have these shapes (UnknownLayoutError if none fits)."""
    if not layout.blocks or not layout.stem:
        raise UnknownLayoutError("No ResNet variables (resnet_model/initial_conv_relu_max_pool, block_groups) found.")
    depth = _depth(layout)
    width = _width_multiplier(layout, shapes)
    sk_ratio, sk_widths = _sk_ratio(layout, shapes)
    se_ratio, se_widths = _se_ratio(layout, shapes)
    stem = _stem(layout, shapes)
    bottleneck = layout.blocks[0].bottleneck
    if stem == "resnet_d" and not bottleneck and not sk_ratio:
        sk_ratio = PREFERRED_SK_RATIOS[0]  # Basic blocks have no SK convs; --sk_ratio > 0 shows in stem and shortcuts.
    if (stem == "resnet_d") != (sk_ratio > 0) and stem != "cifar":
        raise UnknownLayoutError(f"A {stem} stem with sk_ratio {sk_ratio:g}: the reference uses the ResNet-D stem "
                                 "exactly when it uses selective kernels.")
    mode, num_layers, out_dim = _projection_head(layout, shapes)
    last_block = layout.blocks[-1]
    feature_dim = _shape(shapes, last_block.of_kind("conv")[-1].path("kernel"))[-1]
    num_classes = head_input = 0
    if "kernel" in layout.supervised:
        head_input, num_classes = _shape(shapes, layout.supervised["kernel"])
    return ReferenceArchitecture(
        resnet_depth=depth, width_multiplier=width, sk_ratio=sk_ratio, se_ratio=se_ratio,
        cifar_stem=stem == "cifar", proj_head_mode=mode, num_proj_layers=num_layers,
        proj_out_dim=out_dim, num_classes=int(num_classes), head_input_dim=int(head_input),
        feature_dim=int(feature_dim), sk_widths=sk_widths, se_widths=se_widths,
        sk_ratio_shown=bottleneck or stem != "cifar",
    )


# ------------------------------------------------------------------ Flags against it
def _same_width(a: float, b: float) -> bool:
    """Whether two multipliers give every layer the same channels (0.125 and 0.1251 build one model)."""
    bases = (32,) + GROUP_BASE_FILTERS
    return all(scaled_channels(base, a) == scaled_channels(base, b) for base in bases)


def contradictions(arch: ReferenceArchitecture, config: ModelConfig) -> list:
    """`--flag=value (found ...)` for every architecture flag that builds another model than the variables hold."""
    found = []
    if config.backbone != "resnet":
        found.append(f"--backbone={config.backbone} (found resnet)")
    if config.resnet_depth != arch.resnet_depth:
        found.append(f"--resnet_depth={config.resnet_depth} (found {arch.resnet_depth})")
    if not _same_width(config.width_multiplier, arch.width_multiplier):
        found.append(f"--width_multiplier={config.width_multiplier:g} (found {arch.width_multiplier:g})")
    if arch.sk_ratio_shown and ((config.sk_ratio > 0) != (arch.sk_ratio > 0) or any(
            sk_mix_width(f, config.sk_ratio) != w for f, w in arch.sk_widths)):
        found.append(f"--sk_ratio={config.sk_ratio:g} (found {arch.sk_ratio:g})")
    if (config.se_ratio > 0) != (arch.se_ratio > 0) or any(
            se_reduce_width(f, config.se_ratio) != w for f, w in arch.se_widths):
        found.append(f"--se_ratio={config.se_ratio:g} (found {arch.se_ratio:g})")
    if config.cifar_stem != arch.cifar_stem:
        stem = "the CIFAR stem, used for --image_size <= 32" if arch.cifar_stem else \
            "the ImageNet stem, used for --image_size > 32"
        found.append(f"--image_size={config.image_size} (found {stem})")
    if config.cifar_stem_stride != 1:
        found.append(f"--cifar_stem_stride={config.cifar_stem_stride} (the reference's stems have stride 1 there)")
    single_layer = arch.proj_head_mode == "nonlinear" and arch.num_proj_layers == 1
    mode_matches = config.proj_head_mode == arch.proj_head_mode or (single_layer and config.proj_head_mode == "linear")
    if not mode_matches:
        found.append(f"--proj_head_mode={config.proj_head_mode} (found {arch.proj_head_mode})")
    elif arch.proj_head_mode != "none":
        if config.proj_head_mode == "nonlinear" and config.num_proj_layers != arch.num_proj_layers:
            found.append(f"--num_proj_layers={config.num_proj_layers} (found {arch.num_proj_layers})")
        if config.proj_out_dim != arch.proj_out_dim:
            found.append(f"--proj_out_dim={config.proj_out_dim} (found {arch.proj_out_dim})")
    return found
