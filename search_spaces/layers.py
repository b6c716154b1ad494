"""Layers every block family shares: cost arithmetic, conv helpers, norms, stochastic depth.

Modules here carry a static `cost(...)` beside their constructor, as in `blocks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.spec import ZERO_INIT_SKIPS, ArchitectureSpec, StageSpec

# LayerNorm epsilon of ConvNeXt and torchvision's ViT.
LN_EPS = 1e-6


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-adds of one module for one image, with its output resolution."""

    params: int = 0
    flops: int = 0
    height: int = 0
    width: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.flops + other.flops, other.height, other.width)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a conv with `padding = kernel // 2` (the only padding used here)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def conv_cost(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int,
    h: int,
    w: int,
    groups: int = 1,
    bias: bool = False,
) -> Cost:
    ho, wo = conv_out(h, kernel, stride), conv_out(w, kernel, stride)
    weights = out_ch * (in_ch // groups) * kernel * kernel
    return Cost(weights + (out_ch if bias else 0), weights * ho * wo, ho, wo)


def bn_cost(channels: int, h: int, w: int) -> Cost:
    return Cost(2 * channels, 0, h, w)


def patchify_cost(in_ch: int, out_ch: int, patch: int, h: int, w: int) -> Cost:
    """A biased `patch` x `patch` conv of stride `patch` after `pad_to_multiple` (sizes round
    up): the patch stems and the stage entry layers."""
    ho, wo = -(-h // patch), -(-w // patch)
    weights = out_ch * in_ch * patch * patch
    return Cost(weights + out_ch, weights * ho * wo, ho, wo)


def linear_cost(in_features: int, out_features: int, tokens: int, h: int, w: int) -> Cost:
    """A biased linear layer applied to `tokens` positions."""
    weights = in_features * out_features
    return Cost(weights + out_features, weights * tokens, h, w)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
    )


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ConvNeXt's `LayerNorm2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample while training.

    The kept branches are scaled by 1 / (1 - rate), so evaluation needs no correction.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Zero-pad height and width (bottom, right) up to a multiple of `m`, so an m x m conv of
    stride m keeps every pixel (sizes that divide already are left alone)."""
    h, w = x.shape[-2], x.shape[-1]
    if h % m or w % m:
        x = F.pad(x, (0, -w % m, 0, -h % m))
    return x


class StageEntry(nn.Module):
    """LayerNorm, then a 2x2/2 conv (stride 2) or a 1x1 conv (a new width): ConvNeXt's
    downsampling layer, used by convnext and transformer stages. Odd sizes round up."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_ch, eps=LN_EPS)
        self.conv = nn.Conv2d(in_ch, out_ch, stride, stride=stride, bias=True)

    def own_init(self) -> None:
        trunc_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.conv(pad_to_multiple(x, self.conv.stride[0]))

    @staticmethod
    def cost(in_ch: int, out_ch: int, stride: int, h: int, w: int) -> Cost:
        return Cost(2 * in_ch, 0, h, w) + patchify_cost(in_ch, out_ch, stride, h, w)


def trunc_normal_init(module: nn.Module) -> None:
    """ConvNeXt's and ViT's initialisation of convs and linears: N(0, 0.02) truncated at
    +-2 std, zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Residual(nn.Module):
    """How a convnext or transformer branch joins the stream: x + drop(g * s * F(x)).

    `s` is the per-channel layer scale (when `layer_scale` > 0), `g` the scalar gate of a
    `gated` skip (starts at 0), `drop` stochastic depth; a `none` skip returns F(x) alone.
    The branch is channels-last (`..., C`).
    """

    def __init__(self, width: int, skip: str, layer_scale: float, drop_rate: float) -> None:
        super().__init__()
        self.skip = skip
        adds = skip != "none"
        self.scale = (
            nn.Parameter(torch.full((width,), float(layer_scale)))
            if adds and layer_scale > 0
            else None
        )
        self.gate = nn.Parameter(torch.zeros(())) if skip == "gated" else None
        self.drop = DropPath(drop_rate) if adds and drop_rate > 0 else None

    def forward(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.skip == "none":
            return branch
        if self.scale is not None:
            branch = branch * self.scale
        if self.gate is not None:
            branch = branch * self.gate
        if self.drop is not None:
            branch = self.drop(branch)
        return x + branch

    def start_as_identity(self, last: nn.Linear) -> None:
        """Make the branch add nothing: a zero layer scale, else a zero last linear."""
        if self.scale is not None:
            nn.init.zeros_(self.scale)
        else:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @staticmethod
    def cost(width: int, skip: str, layer_scale: float, h: int, w: int) -> Cost:
        adds = skip != "none"
        params = (width if adds and layer_scale > 0 else 0) + (1 if skip == "gated" else 0)
        return Cost(params, 0, h, w)


class PreNormBlock(nn.Module):
    """What convnext and transformer blocks share: their family's initialisation, and an
    identity start (`start_as_identity`) where `zero_init_residual` meets an adding skip
    other than `gated` (whose gate starts at 0)."""

    def __init__(self, stage: StageSpec, zero_init_residual: bool) -> None:
        super().__init__()
        self.zero_init_residual = zero_init_residual and stage.skip in ZERO_INIT_SKIPS

    def own_init(self) -> None:
        trunc_normal_init(self)


def make_entry(stage: StageSpec, in_ch: int) -> StageEntry | None:
    """A convnext or transformer stage's entry layer, where its stride or width changes."""
    return StageEntry(in_ch, stage.width, stage.stride) if stage.has_entry(in_ch) else None


def make_blocks(block_cls: type[nn.Module], spec: ArchitectureSpec, index: int) -> nn.Sequential:
    """The blocks of stage `index`, each with its stochastic-depth rate (names `0`, `1`, ...)."""
    return nn.Sequential(
        *(
            block_cls(
                spec.stages[index],
                layer_scale=spec.layer_scale,
                drop_rate=rate,
                zero_init_residual=spec.zero_init_residual,
            )
            for rate in spec.drop_path_rates()[index]
        )
    )


def entry_cost(stage: StageSpec, in_ch: int, h: int, w: int) -> Cost:
    """Cost of `make_entry(stage, in_ch)` (nothing, where there is no entry layer)."""
    if stage.has_entry(in_ch):
        return StageEntry.cost(in_ch, stage.width, stage.stride, h, w)
    return Cost(0, 0, h, w)
