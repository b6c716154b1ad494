"""Transformer blocks on the residual stream (Vaswani et al. 2017; ViT, Dosovitskiy et al. 2021).

A transformer stage turns the feature map's positions into tokens, runs pre-norm blocks
x + MHSA(LN(x)) and x + MLP(LN(x)) over them, and turns them back into a map, so it can
follow or precede conv stages (a hybrid). The network's first transformer stage may add a
learned position embedding; with `pool: token` the last stage carries ViT's class token and
hands its tokens to the head.
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


class SelfAttention(nn.Module):
    """Multi-head self-attention: one linear for q, k and v, scaled dot products, a projection.

    The same parameters as `nn.MultiheadAttention` (4 C^2 + 4 C); written out so that every
    exporter sees plain linears and `scaled_dot_product_attention`.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(n, t, c))

    @staticmethod
    def cost(width: int, tokens: int, h: int, w: int) -> Cost:
        qkv = linear_cost(width, 3 * width, tokens, h, w)
        proj = linear_cost(width, width, tokens, h, w)
        # q k^T and attention x v: tokens^2 x width multiply-adds each.
        return qkv + proj + Cost(0, 2 * tokens * tokens * width, h, w)


class TransformerBlock(PreNormBlock):
    """x + drop(s1 * MHSA(LN(x))), then x + drop(s2 * MLP(LN(x))); MLP = Linear-GELU-Linear."""

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
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = SelfAttention(width, stage.heads)
        self.res1 = Residual(width, stage.skip, layer_scale, drop_rate)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.fc1 = nn.Linear(width, stage.inner_width)
        self.fc2 = nn.Linear(stage.inner_width, width)
        self.res2 = Residual(width, stage.skip, layer_scale, drop_rate)

    def start_as_identity(self) -> None:
        self.res1.start_as_identity(self.attn.proj)
        self.res2.start_as_identity(self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(x, self.attn(self.norm1(x)))
        return self.res2(x, self.fc2(F.gelu(self.fc1(self.norm2(x)))))

    @staticmethod
    def cost(stage: StageSpec, layer_scale: float, tokens: int, h: int, w: int) -> Cost:
        width, inner = stage.width, stage.inner_width
        norms = Cost(4 * width, 0, h, w)
        attn = SelfAttention.cost(width, tokens, h, w)
        mlp = linear_cost(width, inner, tokens, h, w) + linear_cost(inner, width, tokens, h, w)
        scales = Residual.cost(width, stage.skip, layer_scale, h, w)
        return norms + attn + mlp + scales + scales


def _token_and_grid(spec: ArchitectureSpec, index: int) -> tuple[bool, int]:
    """Whether stage `index` carries the class token (the last stage, with `pool: token`),
    and the side of its position-embedding grid (0 but at the first transformer stage)."""
    first = next(i for i, s in enumerate(spec.stages) if s.block == "transformer")
    return spec.pool == "token" and index == len(spec.stages) - 1, (
        spec.pos_embed if index == first else 0
    )


class TransformerStage(nn.Module):
    """Entry layer (stride or width change), map -> tokens (+ class token, + positions),
    `depth` blocks, tokens -> map (the last stage hands its tokens to the head instead)."""

    def __init__(self, spec: ArchitectureSpec, index: int, in_ch: int) -> None:
        super().__init__()
        stage = spec.stages[index]
        width = stage.width
        self.entry = make_entry(stage, in_ch)
        self.returns_tokens = index == len(spec.stages) - 1
        has_token, self.grid = _token_and_grid(spec, index)
        self.token = nn.Parameter(torch.zeros(1, 1, width)) if has_token else None
        self.pos = None
        if self.grid:
            self.pos = nn.Parameter(torch.empty(1, self.grid**2 + int(has_token), width))
            nn.init.normal_(self.pos, std=0.02)
        self.blocks = make_blocks(TransformerBlock, spec, index)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """The position embedding for an h x w map: the learned grid, resized if it differs."""
        extra = self.pos.shape[1] - self.grid**2
        grid = self.pos[:, extra:]
        if (h, w) != (self.grid, self.grid):
            grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            grid = grid.flatten(2).transpose(1, 2)
        return torch.cat([self.pos[:, :extra], grid], dim=1) if extra else grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = self.entry(x)
        n, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        if self.token is not None:
            x = torch.cat([self.token.expand(n, -1, -1), x], dim=1)
        if self.pos is not None:
            x = x + self.positions(h, w)
        x = self.blocks(x)
        if self.returns_tokens:
            return x
        return x.transpose(1, 2).reshape(n, c, h, w)

    @staticmethod
    def cost(spec: ArchitectureSpec, index: int, in_ch: int, h: int, w: int) -> Cost:
        stage = spec.stages[index]
        width = stage.width
        total = entry_cost(stage, in_ch, h, w)
        h, w = total.height, total.width
        has_token, grid = _token_and_grid(spec, index)
        tokens = h * w + int(has_token)
        extra = int(has_token) * width + (grid**2 + int(has_token)) * width * bool(grid)
        total = total + Cost(extra, 0, h, w)
        for _ in range(stage.depth):
            total = total + TransformerBlock.cost(stage, spec.layer_scale, tokens, h, w)
        return total
