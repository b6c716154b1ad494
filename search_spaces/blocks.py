"""The building blocks of a residual network, each with a cost function beside it (pycls style).

Every module here has a static `cost(...)` that returns its parameter count and multiply-adds
from plain numbers alone, so `search_spaces.cost` can price a spec without building it. Keep
each constructor and its cost function in step: the tests compare them on every zoo model and
on random samples of every preset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.layers import (
    LN_EPS,
    Cost,
    LayerNorm2d,
    bn_cost,
    conv,
    conv_cost,
    conv_out,
    pad_to_multiple,
    patchify_cost,
    trunc_normal_init,
)
from search_spaces.spec import PATCH_STEMS, ZERO_INIT_SKIPS, ArchitectureSpec, StageSpec

# -- stem ----------------------------------------------------------------------------------
# (kernel, stride) of the conv stems.
STEM_CONVS = {"imagenet": (7, 2), "cifar": (3, 1), "regnet": (3, 2)}


class Stem(nn.Module):
    """`imagenet`: 7x7/2 conv-BN-ReLU + 3x3/2 max-pool; `cifar`: 3x3/1 conv-BN-ReLU;
    `regnet`: 3x3/2 conv-BN-ReLU (RegNet's `SimpleStemIN`);
    `patch`: a p x p conv of stride p with bias (ViT's patch embedding); `patch_ln`: the same
    + LayerNorm (ConvNeXt's patchify stem). Patch stems pad sizes up to a multiple of p.

    With pre-activation the `cifar` stem is a bare conv: the first block's BN-ReLU follows
    (He et al. 2016, as in their CIFAR code). The `imagenet` stem keeps its BN-ReLU because
    the max-pool needs an activated input. `relu=False` leaves the ReLU out (conv-BN: the
    `cifar` stem before a cell, `ArchitectureSpec.stem_relu`).
    """

    def __init__(
        self, kind: str, in_channels: int, width: int, preact: bool = False,
        patch_size: int = 4, *, relu: bool = True,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.relu = relu
        self.bn = self.norm = self.pool = None
        if kind in PATCH_STEMS:
            self.conv = nn.Conv2d(in_channels, width, patch_size, stride=patch_size, bias=True)
            if kind == "patch_ln":
                self.norm = LayerNorm2d(width, eps=LN_EPS)
            return
        kernel, stride = STEM_CONVS[kind]
        self.conv = conv(in_channels, width, kernel, stride)
        self.bn = None if (preact and kind == "cifar") else nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if kind == "imagenet" else None

    def own_init(self) -> None:
        if self.kind in PATCH_STEMS:  # as ConvNeXt initialises its stem
            trunc_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind in PATCH_STEMS:
            x = self.conv(pad_to_multiple(x, self.conv.stride[0]))
            return x if self.norm is None else self.norm(x)
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x)) if self.relu else self.bn(x)
        if self.pool is not None:
            x = self.pool(x)
        return x

    @staticmethod
    def cost(
        kind: str, in_channels: int, width: int, preact: bool, h: int, w: int, patch_size: int = 4
    ) -> Cost:
        if kind == "none":
            return Cost(0, 0, h, w)
        if kind in PATCH_STEMS:
            c = patchify_cost(in_channels, width, patch_size, h, w)
            return c + bn_cost(width, c.height, c.width) if kind == "patch_ln" else c
        kernel, stride = STEM_CONVS[kind]
        c = conv_cost(in_channels, width, kernel, stride, h, w)
        if not (preact and kind == "cifar"):
            c = c + bn_cost(width, c.height, c.width)
        if kind == "imagenet":
            c = c + Cost(0, 0, conv_out(c.height, 3, 2), conv_out(c.width, 3, 2))
        return c


# -- squeeze-excitation and shortcuts -------------------------------------------------------
class SqueezeExcite(nn.Module):
    """Channel attention on the branch output (Hu et al. 2018): pool, reduce, expand, gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))

    @staticmethod
    def reduced(channels: int, se_ratio: float) -> int:
        return max(1, int(channels * se_ratio))

    @staticmethod
    def reduced_from_input(in_channels: int, se_ratio: float) -> int:
        """RegNetY's squeeze width: se_ratio x the block's input channels, rounded."""
        return max(1, int(round(in_channels * se_ratio)))

    @staticmethod
    def cost(channels: int, reduced: int, h: int, w: int) -> Cost:
        # Both 1x1 convs see the pooled 1x1 map; the output keeps the input's resolution.
        params = channels * reduced + reduced + reduced * channels + channels
        return Cost(params, 2 * channels * reduced, h, w)


class Projection(nn.Module):
    """1x1 strided conv (+ BN, except in pre-activation blocks): ResNet shortcut "B"/"C"."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, with_bn: bool = True) -> None:
        super().__init__()
        self.conv = conv(in_ch, out_ch, 1, stride)
        self.bn = nn.BatchNorm2d(out_ch) if with_bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)

    @staticmethod
    def cost(in_ch: int, out_ch: int, stride: int, h: int, w: int, with_bn: bool = True) -> Cost:
        c = conv_cost(in_ch, out_ch, 1, stride, h, w)
        return c + bn_cost(out_ch, c.height, c.width) if with_bn else c


class ZeroPad(nn.Module):
    """Parameter-free shortcut "A": strided subsampling, then zero channels appended."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(
                f"`skip` got 'zero_pad' with channels {in_ch} -> {out_ch}; allowed: zero_pad "
                "only where channels do not shrink"
            )
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(
    skip: str, in_ch: int, out_ch: int, stride: int, preact: bool
) -> nn.Module | None:
    """The shortcut module of one block (None for `none`: a plain block has no shortcut)."""
    changes = stride != 1 or in_ch != out_ch
    if skip == "none":
        return None
    if skip == "dense":
        # Pooling (not a conv) keeps the concatenated input parameter-free, as in DenseNet.
        return nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else nn.Identity()
    if skip == "projection" or (changes and skip in ("identity", "gated")):
        return Projection(in_ch, out_ch, stride, with_bn=not preact)
    if skip == "zero_pad" and changes:
        return ZeroPad(in_ch, out_ch, stride)
    return nn.Identity()


def shortcut_cost(
    skip: str, in_ch: int, out_ch: int, stride: int, preact: bool, h: int, w: int
) -> Cost:
    changes = stride != 1 or in_ch != out_ch
    if skip == "projection" or (changes and skip in ("identity", "gated")):
        return Projection.cost(in_ch, out_ch, stride, h, w, with_bn=not preact)
    return Cost(0, 0, conv_out(h, 1, stride), conv_out(w, 1, stride))


# -- residual blocks -----------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """What every block shares: the shortcut, squeeze-excitation, gate and the merge.

    Subclasses build the branch F(x) in `_branch` (post-activation: conv-BN-ReLU ... conv-BN;
    pre-activation: BN-ReLU-conv ...). The merge depends on `skip`:
    `none` F(x) · `dense` concat[shortcut(x), F(x)] · `gated` shortcut(x) + a F(x) ·
    otherwise shortcut(x) + F(x). Post-activation blocks end with a ReLU.
    """

    expansion = 1
    takes_inner_se = False  # whether `se_position: inner` has an inner conv to follow

    def __init__(
        self,
        in_ch: int,
        stage: StageSpec,
        stride: int,
        *,
        preact: bool = False,
        se_ratio: float = 0.0,
        se_position: str = "branch",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.skip = stage.skip
        self.preact = preact
        out = stage.branch_out
        inner_se = self.se_inside(se_ratio, se_position)
        self.se = (
            SqueezeExcite(out, SqueezeExcite.reduced(out, se_ratio))
            if se_ratio > 0 and not inner_se
            else None
        )
        # RegNetY's placement: after the 3x3 conv, squeezing to se_ratio x the block's input.
        self.se_inner = (
            SqueezeExcite(stage.inner_width, SqueezeExcite.reduced_from_input(in_ch, se_ratio))
            if inner_se
            else None
        )
        self.shortcut = make_shortcut(stage.skip, in_ch, out, stride, preact)
        # Pre-activation projections read the activated input, like He et al.'s code.
        self.shortcut_reads_preact = preact and isinstance(self.shortcut, Projection)
        self.gate = nn.Parameter(torch.zeros(())) if stage.skip == "gated" else None
        self.zero_init_residual = zero_init_residual and stage.skip in ZERO_INIT_SKIPS

    @classmethod
    def se_inside(cls, se_ratio: float, se_position: str) -> bool:
        """Whether the block's SE sits after its 3x3 conv (RegNetY), not on the branch output."""
        return se_ratio > 0 and se_position == "inner" and cls.takes_inner_se

    def last_norm(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def start_as_identity(self) -> None:
        """Zero the branch's last norm so the block starts as its shortcut (Goyal et al. 2017)."""
        nn.init.zeros_(self.last_norm().weight)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_in = F.relu(self.bn1(x)) if self.preact else x
        out = self._branch(branch_in)
        if self.se is not None:
            out = self.se(out)
        if self.shortcut is None:
            y = out
        else:
            short = self.shortcut(branch_in if self.shortcut_reads_preact else x)
            if self.skip == "dense":
                y = torch.cat([short, out], dim=1)
            elif self.gate is not None:
                y = short + self.gate * out
            else:
                y = short + out
        return y if self.preact else F.relu(y)

    @classmethod
    def cost(
        cls,
        in_ch: int,
        stage: StageSpec,
        stride: int,
        preact: bool,
        se_ratio: float,
        h: int,
        w: int,
        se_position: str = "branch",
    ) -> Cost:
        c = cls._branch_cost(in_ch, stage, stride, preact, h, w)
        out = stage.branch_out
        if cls.se_inside(se_ratio, se_position):
            reduced = SqueezeExcite.reduced_from_input(in_ch, se_ratio)
            c = c + SqueezeExcite.cost(stage.inner_width, reduced, c.height, c.width)
        elif se_ratio > 0:
            c = c + SqueezeExcite.cost(out, SqueezeExcite.reduced(out, se_ratio), c.height, c.width)
        if stage.skip != "none":
            s = shortcut_cost(stage.skip, in_ch, out, stride, preact, h, w)
            c = c + Cost(s.params, s.flops, c.height, c.width)
        if stage.skip == "gated":
            c = c + Cost(1, 0, c.height, c.width)
        return c

    @staticmethod
    def _branch_cost(
        in_ch: int, stage: StageSpec, stride: int, preact: bool, h: int, w: int
    ) -> Cost:
        raise NotImplementedError


class BasicBlock(ResidualBlock):
    """Two 3x3 convs; the first carries the stride. Outputs `width` channels."""

    expansion = 1

    def __init__(self, in_ch: int, stage: StageSpec, stride: int, **options) -> None:
        super().__init__(in_ch, stage, stride, **options)
        width = stage.width
        self.bn1 = nn.BatchNorm2d(in_ch if self.preact else width)
        self.conv1 = conv(in_ch, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, width, 3)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            return self.conv2(F.relu(self.bn2(self.conv1(x))))
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    @staticmethod
    def _branch_cost(
        in_ch: int, stage: StageSpec, stride: int, preact: bool, h: int, w: int
    ) -> Cost:
        width = stage.width
        c1 = conv_cost(in_ch, width, 3, stride, h, w)
        c2 = conv_cost(width, width, 3, 1, c1.height, c1.width)
        norms = Cost(2 * (in_ch if preact else width) + 2 * width, 0)
        return norms + c1 + c2


class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3 grouped conv with the stride (torchvision v1.5), 1x1 expand."""

    expansion = 4  # the class default; a stage may set its own (`StageSpec.expansion`)
    takes_inner_se = True

    def __init__(self, in_ch: int, stage: StageSpec, stride: int, **options) -> None:
        super().__init__(in_ch, stage, stride, **options)
        inner, out = stage.inner_width, stage.branch_out
        self.bn1 = nn.BatchNorm2d(in_ch if self.preact else inner)
        self.conv1 = conv(in_ch, inner, 1)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = conv(inner, inner, 3, stride, groups=stage.groups)
        self.bn3 = nn.BatchNorm2d(inner if self.preact else out)
        self.conv3 = conv(inner, out, 1)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            x = self.conv2(F.relu(self.bn2(self.conv1(x))))
            if self.se_inner is not None:
                x = self.se_inner(x)
            return self.conv3(F.relu(self.bn3(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if self.se_inner is not None:
            x = self.se_inner(x)
        return self.bn3(self.conv3(x))

    @staticmethod
    def _branch_cost(
        in_ch: int, stage: StageSpec, stride: int, preact: bool, h: int, w: int
    ) -> Cost:
        inner, out = stage.inner_width, stage.branch_out
        c1 = conv_cost(in_ch, inner, 1, 1, h, w)
        c2 = conv_cost(inner, inner, 3, stride, h, w, groups=stage.groups)
        c3 = conv_cost(inner, out, 1, 1, c2.height, c2.width)
        if preact:
            norms = Cost(2 * (in_ch + inner + inner), 0)
        else:
            norms = Cost(2 * (inner + inner + out), 0)
        return norms + c1 + c2 + c3


BLOCKS: dict[str, type[ResidualBlock]] = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


def block_inputs(stage: StageSpec, in_ch: int) -> list[tuple[int, int]]:
    """(input channels, stride) of each block of a stage: the first block carries the stride."""
    result, channels = [], in_ch
    for i in range(stage.depth):
        result.append((channels, stage.stride if i == 0 else 1))
        channels = channels + stage.branch_out if stage.skip == "dense" else stage.branch_out
    return result


class ResidualStage(nn.Sequential):
    """The `stage.depth` basic or bottleneck blocks of one stage (names `0`, `1`, ...)."""

    def __init__(self, spec: ArchitectureSpec, index: int, in_ch: int) -> None:
        stage = spec.stages[index]
        block_cls = BLOCKS[stage.block]
        super().__init__(
            *(
                block_cls(
                    channels,
                    stage,
                    stride,
                    preact=spec.preact,
                    se_ratio=spec.se_ratio,
                    se_position=spec.se_position,
                    zero_init_residual=spec.zero_init_residual,
                )
                for channels, stride in block_inputs(stage, in_ch)
            )
        )

    @staticmethod
    def cost(spec: ArchitectureSpec, index: int, in_ch: int, h: int, w: int) -> Cost:
        stage = spec.stages[index]
        block_cls = BLOCKS[stage.block]
        total = Cost(0, 0, h, w)
        for channels, stride in block_inputs(stage, in_ch):
            total = total + block_cls.cost(
                channels,
                stage,
                stride,
                spec.preact,
                spec.se_ratio,
                total.height,
                total.width,
                spec.se_position,
            )
        return total
