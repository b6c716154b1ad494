"""DenseNet's blocks (Huang et al. 2017, DenseNet-BC): layers that concatenate, transitions.

A dense stage's shortcut is a concatenation: each layer adds `growth` (the stage's `width`)
new channels onto everything before it. A stage with stride 2 starts with a transition that
compresses the channels and halves the resolution, as between DenseNet's dense blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.layers import Cost, bn_cost, conv, conv_cost
from search_spaces.spec import ArchitectureSpec


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to `bn_size` x growth, BN-ReLU-3x3 conv to growth; concatenated."""

    def __init__(self, in_ch: int, growth: int, bn_size: int) -> None:
        super().__init__()
        inner = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv(in_ch, inner, 1)
        self.norm2 = nn.BatchNorm2d(inner)
        self.conv2 = conv(inner, growth, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.norm1(x)))
        new = self.conv2(F.relu(self.norm2(new)))
        return torch.cat([x, new], dim=1)

    @staticmethod
    def cost(in_ch: int, growth: int, bn_size: int, h: int, w: int) -> Cost:
        inner = bn_size * growth
        c = bn_cost(in_ch, h, w) + conv_cost(in_ch, inner, 1, 1, h, w)
        return c + bn_cost(inner, h, w) + conv_cost(inner, growth, 3, 1, h, w)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression), 2x2/2 average pool (odd sizes round up)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.conv = conv(in_ch, out_ch, 1)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))

    @staticmethod
    def cost(in_ch: int, out_ch: int, h: int, w: int) -> Cost:
        c = bn_cost(in_ch, h, w) + conv_cost(in_ch, out_ch, 1, 1, h, w)
        return c + Cost(0, 0, -(-h // 2), -(-w // 2))


class DenseStage(nn.Module):
    """An optional transition (stride 2), then `depth` dense layers."""

    def __init__(self, spec: ArchitectureSpec, index: int, in_ch: int) -> None:
        super().__init__()
        stage = spec.stages[index]
        channels = stage.entry_channels(in_ch)
        self.transition = Transition(in_ch, channels) if stage.has_entry(in_ch) else None
        self.layers = nn.Sequential(
            *(
                DenseLayer(channels + i * stage.width, stage.width, stage.expansion)
                for i in range(stage.depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transition is not None:
            x = self.transition(x)
        return self.layers(x)

    @staticmethod
    def cost(spec: ArchitectureSpec, index: int, in_ch: int, h: int, w: int) -> Cost:
        stage = spec.stages[index]
        channels = stage.entry_channels(in_ch)
        total = Cost(0, 0, h, w)
        if stage.has_entry(in_ch):
            total = total + Transition.cost(in_ch, channels, h, w)
        for i in range(stage.depth):
            total = total + DenseLayer.cost(
                channels + i * stage.width, stage.width, stage.expansion, total.height, total.width
            )
        return total
