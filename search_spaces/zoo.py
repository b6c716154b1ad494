"""Named reference architectures: the residual family from ResNet to ViT, written as specs.

They prove the spec expresses the published networks exactly: the tests compare parameter
counts with torchvision (ImageNet models: ResNet, ResNeXt, Wide ResNet, DenseNet, ConvNeXt,
ViT) and He et al. 2016 (CIFAR models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from search_spaces.spec import ArchitectureSpec, StageSpec

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)


def imagenet_resnet(
    depths: tuple[int, ...],
    block: str,
    *,
    groups: int = 1,
    width_per_group: int = 64,
    name: str | None = None,
) -> ArchitectureSpec:
    """A torchvision-style ImageNet ResNet (shortcut "B": projection where the shape changes).

    Args:
        depths: blocks per stage (four stages, widths 64..512, strides 1, 2, 2, 2).
        block: `basic` or `bottleneck` (expansion 4).
        groups: groups of the bottleneck 3x3 conv (ResNeXt).
        width_per_group: base width per group (128 gives Wide ResNet-50-2).
        name: label stored in the spec.
    """
    if len(depths) != len(IMAGENET_WIDTHS):
        raise ValueError(f"`depths` got {depths!r}; allowed: four blocks-per-stage counts")
    stages = tuple(
        StageSpec(
            depth=d,
            width=w,
            stride=1 if i == 0 else 2,
            block=block,
            groups=groups,
            width_per_group=width_per_group,
            skip="identity",
        )
        for i, (d, w) in enumerate(zip(depths, IMAGENET_WIDTHS, strict=True))
    )
    return ArchitectureSpec(
        stages=stages, stem="imagenet", stem_width=64, in_channels=3, num_classes=1000, name=name
    )


def cifar_resnet(
    depth: int, skip: str = "zero_pad", *, name: str | None = None
) -> ArchitectureSpec:
    """He et al. 2016 section 4.2: `6n+2` layers, three stages of `n` basic blocks, 16/32/64.

    Args:
        depth: total weighted layers, `6n + 2` (20, 32, 44, 56, 110, ...).
        skip: `zero_pad` (option A, the paper's choice), `none` for the plain nets, or any
            other skip type.
        name: label stored in the spec.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"`depth` got {depth!r}; allowed: 6n + 2 with n >= 1 (20, 32, 56, ...)")
    n = (depth - 2) // 6
    stages = tuple(
        StageSpec(depth=n, width=w, stride=1 if i == 0 else 2, block="basic", skip=skip)
        for i, w in enumerate(CIFAR_WIDTHS)
    )
    return ArchitectureSpec(
        stages=stages, stem="cifar", stem_width=16, in_channels=3, num_classes=10, name=name
    )


def preact_resnet18(name: str | None = None) -> ArchitectureSpec:
    """Pre-activation ResNet-18 for CIFAR (He et al. 2016 "Identity Mappings"; 3x3 stem 64)."""
    stages = tuple(
        StageSpec(depth=2, width=w, stride=1 if i == 0 else 2, block="basic", skip="identity")
        for i, w in enumerate(IMAGENET_WIDTHS)
    )
    return ArchitectureSpec(
        stages=stages, stem="cifar", stem_width=64, preact=True, num_classes=10, name=name
    )


def regnet_stage(depth: int, width: int, group_width: int, stride: int = 2) -> StageSpec:
    """A RegNet stage (bottleneck multiplier 1: inner width = output width = `width`, in
    groups of `group_width` channels) as a bottleneck StageSpec.

    The spec writes a bottleneck's inner width as int(width x width_per_group / 64) x groups
    and its output as width x expansion; the smallest expansion for which some integer
    width_per_group gives exactly `group_width` channels per group is chosen. The canonical
    form keeps only the resulting inner width, so the id is that of the network.
    """
    if width % group_width:
        raise ValueError(f"`width` got {width}; allowed: a multiple of group_width {group_width}")
    groups = width // group_width
    for expansion in range(1, width + 1):
        if width % expansion:
            continue
        planes = width // expansion
        per_group = -(-group_width * 64 // planes)  # the smallest that can reach group_width
        if int(planes * (per_group / 64.0)) != group_width:
            continue
        return StageSpec(
            depth=depth,
            width=planes,
            stride=stride,
            block="bottleneck",
            expansion=expansion,
            groups=groups,
            width_per_group=per_group,
        )
    raise ValueError(f"`width` got {width}; no bottleneck writing has {group_width}-wide groups")


def regnet_y(
    depths: tuple[int, ...], widths: tuple[int, ...], group_width: int, *,
    name: str | None = None,
) -> ArchitectureSpec:
    """A torchvision RegNetY (Radosavovic et al. 2020): 3x3/2 stem of 32 channels, stages of
    bottlenecks (multiplier 1, group convs, stride 2 each), SE (ratio 0.25 of the block's
    input) after the 3x3 conv.

    Args:
        depths: blocks per stage (RegNetY-400MF: 1, 3, 6, 6).
        widths: channels per stage (48, 104, 208, 440).
        group_width: channels per group of the 3x3 convs (8).
        name: label stored in the spec.
    """
    stages = tuple(
        regnet_stage(d, w, group_width) for d, w in zip(depths, widths, strict=True)
    )
    return ArchitectureSpec(
        stages=stages,
        stem="regnet",
        stem_width=32,
        num_classes=1000,
        se_ratio=0.25,
        se_position="inner",
        name=name,
    )


def densenet(
    layers: tuple[int, ...], *, growth: int = 32, stem_width: int = 64, name: str | None = None
) -> ArchitectureSpec:
    """A torchvision DenseNet-BC (Huang et al. 2017): 7x7/2 stem + max-pool, dense blocks of
    `layers` layers (bn_size 4), a transition (compression 0.5) before each later block.

    Args:
        layers: dense layers per block (DenseNet-121: 6, 12, 24, 16).
        growth: channels each layer adds (32; 48 in DenseNet-161).
        stem_width: channels of the stem (64; 96 in DenseNet-161).
        name: label stored in the spec.
    """
    stages = tuple(
        StageSpec(depth=n, width=growth, stride=1 if i == 0 else 2, block="dense", skip="dense")
        for i, n in enumerate(layers)
    )
    return ArchitectureSpec(
        stages=stages, stem="imagenet", stem_width=stem_width, num_classes=1000, name=name
    )


def convnext(
    depths: tuple[int, ...], widths: tuple[int, ...], *, name: str | None = None
) -> ArchitectureSpec:
    """A torchvision ConvNeXt (Liu et al. 2022): 4x4/4 patchify stem + LayerNorm, four stages
    with LayerNorm + 2x2/2 downsampling between them, layer scale 1e-6, stochastic depth 0.1.

    Args:
        depths: blocks per stage (ConvNeXt-T: 3, 3, 9, 3).
        widths: channels per stage (ConvNeXt-T: 96, 192, 384, 768).
        name: label stored in the spec.
    """
    stages = tuple(
        StageSpec(depth=d, width=w, stride=1 if i == 0 else 2, block="convnext")
        for i, (d, w) in enumerate(zip(depths, widths, strict=True))
    )
    return ArchitectureSpec(
        stages=stages,
        stem="patch_ln",
        stem_width=widths[0],
        patch_size=4,
        num_classes=1000,
        layer_scale=1e-6,
        drop_path=0.1,
        name=name,
    )


def vit(
    patch: int, width: int, depth: int, heads: int, mlp: int, *, image: int = 224,
    name: str | None = None,
) -> ArchitectureSpec:
    """A torchvision Vision Transformer: patch embedding, class token, learned positions,
    `depth` pre-norm encoder blocks, final LayerNorm, the head on the class token.

    Args:
        patch: patch size (16 in ViT-B/16).
        width: embedding width (768).
        depth: encoder blocks (12).
        heads: attention heads (12).
        mlp: MLP hidden width (3072 = 4 x 768; a multiple of `width`).
        image: input size the position embedding is learned for (224).
        name: label stored in the spec.
    """
    stage = StageSpec(
        depth=depth, width=width, block="transformer", heads=heads, expansion=mlp // width
    )
    return ArchitectureSpec(
        stages=(stage,),
        stem="patch",
        stem_width=width,
        patch_size=patch,
        num_classes=1000,
        pos_embed=image // patch,
        pool="token",
        name=name,
    )


def hybrid_digits(name: str | None = None) -> ArchitectureSpec:
    """A small hybrid for 8x8 digits: two basic conv stages (8x8, then 4x4), then two
    transformer stages over the 16 positions with a learned position embedding."""
    stages = (
        StageSpec(depth=1, width=16, stride=1, block="basic"),
        StageSpec(depth=1, width=32, stride=2, block="basic"),
        StageSpec(depth=2, width=32, block="transformer", heads=4, expansion=2),
    )
    return ArchitectureSpec(
        stages=stages, stem="cifar", stem_width=16, in_channels=1, num_classes=10, pos_embed=4,
        name=name,
    )


_REGISTRY: dict[str, Callable[[str], ArchitectureSpec]] = {
    "resnet18": lambda n: imagenet_resnet((2, 2, 2, 2), "basic", name=n),
    "resnet34": lambda n: imagenet_resnet((3, 4, 6, 3), "basic", name=n),
    "resnet50": lambda n: imagenet_resnet((3, 4, 6, 3), "bottleneck", name=n),
    "resnet101": lambda n: imagenet_resnet((3, 4, 23, 3), "bottleneck", name=n),
    "resnet152": lambda n: imagenet_resnet((3, 8, 36, 3), "bottleneck", name=n),
    "resnext50_32x4d": lambda n: imagenet_resnet(
        (3, 4, 6, 3), "bottleneck", groups=32, width_per_group=4, name=n
    ),
    "wide_resnet50_2": lambda n: imagenet_resnet(
        (3, 4, 6, 3), "bottleneck", width_per_group=128, name=n
    ),
    "resnext101_32x8d": lambda n: imagenet_resnet(
        (3, 4, 23, 3), "bottleneck", groups=32, width_per_group=8, name=n
    ),
    "regnet_y_400mf": lambda n: regnet_y((1, 3, 6, 6), (48, 104, 208, 440), 8, name=n),
    "densenet121": lambda n: densenet((6, 12, 24, 16), name=n),
    "densenet169": lambda n: densenet((6, 12, 32, 32), name=n),
    "densenet201": lambda n: densenet((6, 12, 48, 32), name=n),
    "convnext_tiny": lambda n: convnext((3, 3, 9, 3), (96, 192, 384, 768), name=n),
    "convnext_small": lambda n: convnext((3, 3, 27, 3), (96, 192, 384, 768), name=n),
    "vit_b_16": lambda n: vit(16, 768, 12, 12, 3072, name=n),
    "resnet20": lambda n: cifar_resnet(20, name=n),
    "resnet32": lambda n: cifar_resnet(32, name=n),
    "resnet44": lambda n: cifar_resnet(44, name=n),
    "resnet56": lambda n: cifar_resnet(56, name=n),
    "resnet110": lambda n: cifar_resnet(110, name=n),
    "plain20": lambda n: cifar_resnet(20, "none", name=n),
    "plain56": lambda n: cifar_resnet(56, "none", name=n),
    "plain110": lambda n: cifar_resnet(110, "none", name=n),
    "preact_resnet18": lambda n: preact_resnet18(name=n),
    "hybrid_digits": lambda n: hybrid_digits(name=n),
}


# Input size each reference network is published for, where it is not 224 (ImageNet) or 32
# (CIFAR).
_INPUT_SIZES = {"hybrid_digits": 8}


def default_input_size(spec: ArchitectureSpec) -> int:
    """224 for an ImageNet-size head (1,000 classes), else CIFAR's 32."""
    return 224 if spec.num_classes == 1000 else 32


def input_size(name: str) -> int:
    """The input resolution a reference architecture is built and priced for (224, 32 or 8)."""
    return _INPUT_SIZES.get(name) or default_input_size(get(name))


def names() -> list[str]:
    """Names of the reference architectures, ImageNet models first."""
    return list(_REGISTRY)


def get(
    name: str, num_classes: int | None = None, in_channels: int | None = None
) -> ArchitectureSpec:
    """A reference architecture by name.

    Args:
        name: one of `names()`.
        num_classes: outputs of the head (default: 1000 for ImageNet models, 10 for CIFAR
            and digits ones).
        in_channels: input channels (default 3; 1 for `hybrid_digits`).

    Returns:
        The spec, with `name` set.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"`name` got {name!r}; allowed: {', '.join(names())}")
    spec = factory(name)
    changes = {}
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if in_channels is not None:
        changes["in_channels"] = in_channels
    return replace(spec, **changes) if changes else spec
