"""NAS-Bench-201's cell network (Dong & Yang 2020): the cell, its five ops, the reduction block.

Layer for layer the reference code's `InferCell`, `ReLUConvBN` and `ResNetBasicblock`, so a
spec of three cell stages (`nb201_spec`) is NAS-Bench-201's `TinyNetwork` and its parameter
count is the table's model size. Module names follow the reference (`layers.<k>.op.1.weight`,
`conv_a`, `conv_b`, `downsample`), one `layers` entry per edge in `CELL_EDGES` order, `none`
edges included as they are there. Each module has a static `cost(...)` beside it, as in
`blocks.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from search_spaces.layers import Cost, bn_cost, conv_cost
from search_spaces.spec import CELL_EDGES, CELL_OPS, ArchitectureSpec, StageSpec

# (node, source node) of each edge, in `CELL_EDGES` order: "2<-1" is edge node1 -> node2.
EDGE_NODES = tuple((int(edge[0]), int(edge[-1])) for edge in CELL_EDGES)
# NAS-Bench-201's network: 3 stages of N=5 cells at C, 2C, 4C channels after a C-channel stem.
NB201_CELLS_PER_STAGE = 5
NB201_WIDTHS = (16, 32, 64)
# Kernel of each conv op.
CELL_CONV_KERNELS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


class ReLUConvBN(nn.Module):
    """ReLU, a bias-free k x k conv (padding k // 2), BatchNorm: NAS-Bench-201's conv op."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),  # the input is another edge's input too: never overwrite it
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    @staticmethod
    def cost(in_ch: int, out_ch: int, kernel: int, stride: int, h: int, w: int) -> Cost:
        c = conv_cost(in_ch, out_ch, kernel, stride, h, w)
        return c + bn_cost(out_ch, c.height, c.width)


class Zero(nn.Module):
    """The `none` op: zeros of the input's shape (x * 0, as the reference computes it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def cell_op(name: str, channels: int) -> nn.Module:
    """One edge's op at `channels` channels, stride 1 (a cell never changes its shape)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name in CELL_CONV_KERNELS:
        return ReLUConvBN(channels, channels, CELL_CONV_KERNELS[name])
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"`op` got {name!r}; allowed: {' | '.join(CELL_OPS)}")


class Cell(nn.Module):
    """node0 = x; node_i = sum over its edges i<-j of op(node_j); returns node3."""

    def __init__(self, ops: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(cell_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            inputs = [
                layer(nodes[source])
                for layer, (target, source) in zip(self.layers, EDGE_NODES, strict=True)
                if target == node
            ]
            total = inputs[0]
            for more in inputs[1:]:
                total = total + more
            nodes.append(total)
        return nodes[3]

    @staticmethod
    def cost(ops: tuple[str, ...], channels: int, h: int, w: int) -> Cost:
        total = Cost(0, 0, h, w)
        for op in ops:
            if op in CELL_CONV_KERNELS:
                total = total + ReLUConvBN.cost(channels, channels, CELL_CONV_KERNELS[op], 1, h, w)
        return total


class ReductionBlock(nn.Module):
    """NAS-Bench-201's `ResNetBasicblock`: conv_b(conv_a(x)) + downsample(x), no ReLU after.

    conv_a (ReLU-3x3 conv-BN) carries the stride. The shortcut: stride 2 -> 2x2/2 average
    pool + 1x1 conv; stride 1 with a new width -> ReLU-1x1 conv-BN; else the identity. The
    pool rounds odd sizes up (`ceil_mode`) to meet conv_a's output; on even sizes (all of
    NAS-Bench-201's) it is the reference's pool exactly.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(in_ch, out_ch, 3, stride)
        self.conv_b = ReLUConvBN(out_ch, out_ch, 3)
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2, stride=2, ceil_mode=True),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
            )
        elif in_ch != out_ch:
            self.downsample = ReLUConvBN(in_ch, out_ch, 1)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))

    @staticmethod
    def cost(in_ch: int, out_ch: int, stride: int, h: int, w: int) -> Cost:
        a = ReLUConvBN.cost(in_ch, out_ch, 3, stride, h, w)
        c = a + ReLUConvBN.cost(out_ch, out_ch, 3, 1, a.height, a.width)
        if stride == 2:
            # The 1x1 conv reads the pooled map, which has conv_a's output size.
            c = c + conv_cost(in_ch, out_ch, 1, 1, a.height, a.width)
        elif in_ch != out_ch:
            c = c + ReLUConvBN.cost(in_ch, out_ch, 1, 1, h, w)
        return Cost(c.params, c.flops, a.height, a.width)


class CellStage(nn.Module):
    """A reduction block where the stride or the width changes, then `depth` cells."""

    def __init__(self, spec: ArchitectureSpec, index: int, in_ch: int) -> None:
        super().__init__()
        stage = spec.stages[index]
        self.entry = (
            ReductionBlock(in_ch, stage.width, stage.stride) if stage.has_entry(in_ch) else None
        )
        self.cells = nn.Sequential(*(Cell(stage.ops, stage.width) for _ in range(stage.depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = self.entry(x)
        return self.cells(x)

    @staticmethod
    def cost(spec: ArchitectureSpec, index: int, in_ch: int, h: int, w: int) -> Cost:
        stage = spec.stages[index]
        total = Cost(0, 0, h, w)
        if stage.has_entry(in_ch):
            total = total + ReductionBlock.cost(in_ch, stage.width, stage.stride, h, w)
        for _ in range(stage.depth):
            total = total + Cell.cost(stage.ops, stage.width, total.height, total.width)
        return total


# -- NAS-Bench-201's table keys -------------------------------------------------------------
def nb201_spec(key: str, num_classes: int) -> ArchitectureSpec:
    """NAS-Bench-201's network for a table key: `cifar` stem of 16, then 5 cells at 16, a
    reduction block and 5 cells at 32, the same at 64, BN-ReLU, pooling, linear head.

    Args:
        key: 6 digits, one per edge in `CELL_EDGES` order, each an index into `CELL_OPS`
            (e.g. `421211`: avg_pool_3x3, nor_conv_1x1, skip_connect, nor_conv_1x1, ...).
        num_classes: outputs of the head (10 for CIFAR-10, 100, 120 for ImageNet16-120).
    """
    if (
        not isinstance(key, str)
        or len(key) != len(CELL_EDGES)
        or any(c not in [str(i) for i in range(len(CELL_OPS))] for c in key)
    ):
        raise ValueError(
            f"`key` got {key!r}; allowed: {len(CELL_EDGES)} digits 0-{len(CELL_OPS) - 1} "
            f"(per edge {', '.join(CELL_EDGES)}: the index of its op in {', '.join(CELL_OPS)})"
        )
    ops = tuple(CELL_OPS[int(c)] for c in key)
    stages = tuple(
        StageSpec(
            depth=NB201_CELLS_PER_STAGE,
            width=width,
            stride=1 if i == 0 else 2,
            block="cell",
            ops=ops,
        )
        for i, width in enumerate(NB201_WIDTHS)
    )
    return ArchitectureSpec(
        stages=stages,
        stem="cifar",
        stem_width=NB201_WIDTHS[0],
        in_channels=3,
        num_classes=num_classes,
        name=f"nasbench201-{key}",
    )


def nb201_key(spec: dict[str, Any] | ArchitectureSpec) -> str | None:
    """The NAS-Bench-201 table key of a spec (dict or `ArchitectureSpec`), or None.

    A key only where the spec is NAS-Bench-201's network (`nb201_spec` of some key, any
    number of classes: the same `arch_id`): all stages cells with the same ops, and the
    table's stem, depths, widths and strides, since the table measured only that network.
    None for anything else, an invalid spec dict included.
    """
    try:
        if not isinstance(spec, ArchitectureSpec):
            spec = ArchitectureSpec.from_dict(spec)
    except (ValueError, TypeError):
        return None
    first = spec.stages[0].ops
    if not first or any(s.block != "cell" or s.ops != first for s in spec.stages):
        return None
    key = "".join(str(CELL_OPS.index(op)) for op in first)
    return key if nb201_spec(key, spec.num_classes).arch_id == spec.arch_id else None
