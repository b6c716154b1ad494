"""ConvNeXt's block (Liu et al. 2022): the ResNet block redesigned with Transformer habits.

7x7 depthwise conv, LayerNorm, 1x1 expansion (x`expansion`) with GELU, 1x1 projection, a
layer scale and stochastic depth, on an additive shortcut. Stages change resolution and width
only in their entry layer (LayerNorm + 2x2/2 conv), never inside a block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.layers import (
    LN_EPS,
    Cost,
    PreNormBlock,
    Residual,
    entry_cost,
    linear_cost,
    make_blocks,
    make_entry,
)
from search_spaces.spec import ArchitectureSpec, StageSpec


class ConvNeXtBlock(PreNormBlock):
    """x + drop(scale * pw2(GELU(pw1(LN(dwconv7x7(x))))))."""

    def __init__(
        self,
        stage: StageSpec,
        *,
        layer_scale: float = 0.0,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(stage, zero_init_residual)
        width = stage.width
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width, bias=True)
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.pw1 = nn.Linear(width, stage.inner_width)
        self.pw2 = nn.Linear(stage.inner_width, width)
        self.res = Residual(width, stage.skip, layer_scale, drop_rate)

    def start_as_identity(self) -> None:
        self.res.start_as_identity(self.pw2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.dwconv(x).permute(0, 2, 3, 1)  # channels-last for the norm and linears
        branch = self.pw2(F.gelu(self.pw1(self.norm(branch))))
        return self.res(x.permute(0, 2, 3, 1), branch).permute(0, 3, 1, 2)

    @staticmethod
    def cost(stage: StageSpec, layer_scale: float, h: int, w: int) -> Cost:
        width, inner, positions = stage.width, stage.inner_width, h * w
        dw = Cost(width * 49 + width, width * 49 * positions, h, w)
        norm = Cost(2 * width, 0, h, w)
        mlp = linear_cost(width, inner, positions, h, w) + linear_cost(inner, width, positions, h, w)
        return dw + norm + mlp + Residual.cost(width, stage.skip, layer_scale, h, w)


class ConvNeXtStage(nn.Module):
    """An entry layer where the stride or the width changes, then `depth` ConvNeXt blocks."""

    def __init__(self, spec: ArchitectureSpec, index: int, in_ch: int) -> None:
        super().__init__()
        stage = spec.stages[index]
        self.entry = make_entry(stage, in_ch)
        self.blocks = make_blocks(ConvNeXtBlock, spec, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = self.entry(x)
        return self.blocks(x)

    @staticmethod
    def cost(spec: ArchitectureSpec, index: int, in_ch: int, h: int, w: int) -> Cost:
        stage = spec.stages[index]
        total = entry_cost(stage, in_ch, h, w)
        for _ in range(stage.depth):
            total = total + ConvNeXtBlock.cost(stage, spec.layer_scale, total.height, total.width)
        return total
