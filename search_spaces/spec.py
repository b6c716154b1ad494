"""The plain-data description of a residual network: what it is, not how it is trained.

Standard library only: the store (`db`) imports this module without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

STEM_TYPES = ("imagenet", "cifar", "regnet", "patch", "patch_ln", "none")
# Stems that cut the image into patch_size x patch_size patches (ViT, ConvNeXt).
PATCH_STEMS = ("patch", "patch_ln")
SE_POSITIONS = ("branch", "inner")
BLOCK_TYPES = ("basic", "bottleneck", "dense", "convnext", "transformer", "cell")
SKIP_TYPES = ("identity", "zero_pad", "projection", "gated", "dense", "none")
POOL_TYPES = ("avg", "token")
SPEC_VERSION = 1

# The ResNet family: blocks that take every skip type, pre-activation and squeeze-excitation.
RESNET_BLOCKS = ("basic", "bottleneck")
# Pre-norm blocks of the Transformer era: their shape never changes inside a stage (a stage
# entry layer does that), so they take the additive skips and `none` only.
TOKEN_BLOCKS = ("convnext", "transformer")
MODERN_SKIPS = ("identity", "zero_pad", "gated", "none")
# Skips that add a shortcut to a residual branch.
ADDITIVE_SKIPS = ("identity", "zero_pad", "projection", "gated")
# Where `zero_init_residual` zeroes the end of the branch. Not `gated`: its gate starts at 0
# already, and zeroing the branch too would leave both with zero gradient for good.
ZERO_INIT_SKIPS = ("identity", "zero_pad", "projection")
# Which stage fields each block reads beyond depth, width, stride and skip. The others are
# ignored by that block (and dropped from its canonical form).
BLOCK_FIELDS = {
    "basic": (),
    "bottleneck": ("expansion", "groups", "width_per_group"),
    "dense": ("expansion", "compression"),
    "convnext": ("expansion",),
    "transformer": ("expansion", "heads"),
    "cell": ("ops",),
}
# Weighted layers on a block's longest path (for `total_depth`); a cell's depends on its ops
# (`cell_layers`).
BLOCK_LAYERS = {"basic": 2, "bottleneck": 3, "dense": 2, "convnext": 3, "transformer": 4}

# NAS-Bench-201's cell (Dong & Yang 2020): a DAG of 4 nodes, node 0 its input, node i the sum
# of op(node j) over its edges i<-j, node 3 its output. Its 6 edges in NAS-Bench-201's order
# (the order of its arch strings and of a cell's `ops`), and the 5 ops an edge can be.
CELL_EDGES = ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")
CELL_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Ops with a conv: the weighted layers of a cell's paths.
CELL_CONV_OPS = ("nor_conv_1x1", "nor_conv_3x3")
# Bounds that catch typos and runaway spaces; every published model is far inside them.
MAX_DEPTH = 1000
MAX_WIDTH = 65536

# Defaults of the bottleneck-only fields; a basic block ignores them.
DEFAULT_EXPANSION = 4
DEFAULT_GROUPS = 1
DEFAULT_WIDTH_PER_GROUP = 64


def _fail(field_name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"`{field_name}` got {value!r}; allowed: {allowed}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(name, value, f"an integer >= {minimum}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(name, value, " | ".join(choices))


def cell_arch_str(ops: tuple[str, ...] | list[str]) -> str:
    """NAS-Bench-201's arch string of a cell's 6 ops (in `CELL_EDGES` order), e.g.
    `|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|`."""
    ops = _check_ops(ops)
    nodes, k = [], 0
    for node in (1, 2, 3):
        nodes.append("|" + "|".join(f"{ops[k + j]}~{j}" for j in range(node)) + "|")
        k += node
    return "+".join(nodes)


def parse_cell_arch_str(text: str) -> tuple[str, ...]:
    """The 6 ops (in `CELL_EDGES` order) of a NAS-Bench-201 arch string; the inverse of
    `cell_arch_str`. Raises ValueError naming what is wrong."""
    allowed = "a NAS-Bench-201 arch string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
    if not isinstance(text, str):
        raise _fail("ops", text, allowed)
    nodes = text.split("+")
    if len(nodes) != 3:
        raise _fail("ops", text, f"{allowed} (3 nodes joined by +)")
    ops = []
    for node, part in enumerate(nodes, start=1):
        inner = part[1:-1].split("|") if len(part) > 1 and part[0] == part[-1] == "|" else []
        if len(inner) != node:
            raise _fail("ops", text, f"{allowed} (node {node} has {node} edge(s))")
        for j, edge in enumerate(inner):
            op, _, source = edge.partition("~")
            if source != str(j):
                raise _fail("ops", text, f"{allowed} (edge {edge!r} of node {node} must read ~{j})")
            ops.append(op)
    return _check_ops(tuple(ops))


def _check_ops(ops: Any) -> tuple[str, ...]:
    """A cell's ops as a tuple: 6 of `CELL_OPS` (a list is accepted)."""
    allowed = f"6 ops (edges {', '.join(CELL_EDGES)}), each {' | '.join(CELL_OPS)}"
    if not isinstance(ops, (tuple, list)) or len(ops) != len(CELL_EDGES):
        raise _fail("ops", ops, allowed)
    for edge, op in zip(CELL_EDGES, ops, strict=True):
        if op not in CELL_OPS:
            raise _fail(f"ops[{edge}]", op, " | ".join(CELL_OPS))
    return tuple(ops)


def cell_layers(ops: tuple[str, ...]) -> int:
    """Convs on the cell's longest path from input to output (0 where none reaches it).

    `none` edges carry nothing, so they are no path; skip and pooling edges are paths
    without a weighted layer.
    """
    best: list[int | None] = [0, None, None, None]
    for edge, op in zip(CELL_EDGES, ops, strict=True):
        node, source = int(edge[0]), int(edge[-1])
        if op == "none" or best[source] is None:
            continue
        length = best[source] + (op in CELL_CONV_OPS)
        best[node] = length if best[node] is None else max(best[node], length)
    return best[3] or 0


def _check_number(name: str, value: Any, low: float, high: float, allowed: str, *,
                  low_open: bool = False, high_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        raise _fail(name, value, allowed)
    return float(value)


@dataclass(frozen=True)
class StageSpec:
    """One stage: `depth` blocks of the same kind, the first one carrying the `stride`.

    Args:
        depth: number of blocks (0 is not allowed; drop the stage instead).
        width: the block's base width ("planes"). A basic block outputs `width` channels, a
            bottleneck block `width * expansion`, a `dense` skip grows the stage by that much
            per block; a `dense` block's width is its growth rate; a `convnext` or
            `transformer` block's width is its channels (the embedding width).
        stride: stride of the first block (1 or 2). A `dense` stage with stride 2 starts with
            a DenseNet transition; a `convnext` or `transformer` stage starts with a
            LayerNorm + 2x2/2 conv where the stride is 2 (LayerNorm + 1x1 conv where only
            the width changes). A `cell` stage starts with NAS-Bench-201's reduction block
            (a ResNet basic block: ReLU-conv-BN twice, 2x2 average pool + 1x1 conv shortcut)
            where the stride is 2 or the width changes (stride 1: a ReLU-1x1 conv-BN
            shortcut, as in its code).
        block: `basic` (two 3x3 convs), `bottleneck` (1x1, 3x3 grouped, 1x1), `dense`
            (DenseNet-BC layer: BN-ReLU-1x1, BN-ReLU-3x3, concatenated onto its input),
            `convnext` (7x7 depthwise, LayerNorm, 1x1 up, GELU, 1x1 down), `transformer`
            (pre-norm multi-head self-attention and MLP over the map's positions) or `cell`
            (NAS-Bench-201's cell: a 4-node DAG of `ops`; see `search_spaces.cell`).
        expansion: the block's multiplier: bottleneck output (4 in ResNet-50), dense
            `bn_size` (the 1x1 conv gives expansion x growth), convnext and transformer MLP
            ratio. Ignored by basic blocks.
        groups: groups of the bottleneck 3x3 conv (32 in ResNeXt-50 32x4d).
        width_per_group: base width per group; inner width = int(width * wpg / 64) * groups.
        skip: how the block's input reaches its output (see `SKIP_TYPES`). A `dense` block
            always concatenates (its skip is set to `dense`); `convnext` and `transformer` take
            identity, zero_pad (the same, their shape never changes), gated or none. A `cell`
            takes `identity` only, meaning "the cell's own edges": its `skip_connect` edges
            are its shortcuts, so a skip around the cell would change NAS-Bench-201's network.
        heads: attention heads of a transformer block (a divisor of `width`).
        compression: a dense stage's transition keeps int(channels x compression) channels.
        ops: a `cell`'s 6 ops, one per edge in `CELL_EDGES` order (`1<-0, 2<-0, 2<-1, 3<-0,
            3<-1, 3<-2`), each one of `CELL_OPS`; a list or a NAS-Bench-201 arch string is
            accepted and stored as a tuple. Every cell of the stage has these ops. Empty for
            other blocks. Isomorphic cells (the same function drawn two ways) are not merged:
            NAS-Bench-201 trained each of its 15,625 op tuples separately, so each keeps its
            own `arch_id`.
    """

    depth: int
    width: int
    stride: int = 1
    block: str = "basic"
    expansion: int = DEFAULT_EXPANSION
    groups: int = DEFAULT_GROUPS
    width_per_group: int = DEFAULT_WIDTH_PER_GROUP
    skip: str = "identity"
    heads: int = 1
    compression: float = 0.5
    ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_int("depth", self.depth, 1)
        _check_int("width", self.width, 1)
        if self.depth > MAX_DEPTH:
            raise _fail("depth", self.depth, f"an integer in [1, {MAX_DEPTH}]")
        if self.width > MAX_WIDTH:
            raise _fail("width", self.width, f"an integer in [1, {MAX_WIDTH}]")
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise _fail("stride", self.stride, "1 | 2")
        _check_choice("block", self.block, BLOCK_TYPES)
        _check_int("expansion", self.expansion, 1)
        _check_int("groups", self.groups, 1)
        _check_int("width_per_group", self.width_per_group, 1)
        _check_choice("skip", self.skip, SKIP_TYPES)
        if self.block == "dense":
            # A dense block always concatenates: whatever skip was written, it is `dense`.
            object.__setattr__(self, "skip", "dense")
        _check_int("heads", self.heads, 1)
        compression = _check_number(
            "compression", self.compression, 0.0, 1.0, "a number in (0, 1]",
            low_open=True, high_open=False,
        )
        object.__setattr__(self, "compression", compression)
        if self.block in TOKEN_BLOCKS and self.skip not in MODERN_SKIPS:
            raise _fail("skip", self.skip, f"{' | '.join(MODERN_SKIPS)} for a {self.block} block")
        if self.block == "transformer" and self.width % self.heads:
            raise _fail("heads", self.heads, f"a divisor of the width {self.width}")
        if self.block == "bottleneck" and self.inner_width % self.groups:
            raise _fail(
                "groups", self.groups, f"a divisor of the inner width {self.inner_width}"
            )
        if self.block == "bottleneck" and self.inner_width < 1:
            raise _fail("width_per_group", self.width_per_group, "a value giving inner width >= 1")
        if self.block == "cell":
            ops = parse_cell_arch_str(self.ops) if isinstance(self.ops, str) else self.ops
            object.__setattr__(self, "ops", _check_ops(ops))
            if self.skip != "identity":
                raise _fail("skip", self.skip, "identity for a cell block (its edges are its "
                            "shortcuts)")
        elif self.ops not in ((), []):
            raise _fail("ops", self.ops, "none (empty) unless `block` is cell")
        else:
            object.__setattr__(self, "ops", ())

    @property
    def inner_width(self) -> int:
        """Channels inside the block (the 3x3 conv of a bottleneck; dense: bn_size x growth;
        convnext and transformer: the MLP's hidden width)."""
        if self.block == "bottleneck":
            return int(self.width * (self.width_per_group / 64.0)) * self.groups
        if self.block in ("dense", *TOKEN_BLOCKS):
            return self.width * self.expansion
        return self.width

    @property
    def branch_out(self) -> int:
        """Channels the residual branch F(x) produces (a dense layer's: its growth rate)."""
        return self.width * (self.expansion if self.block == "bottleneck" else 1)

    @property
    def concatenates(self) -> bool:
        """Whether each block concatenates its output onto its input (DenseNet style)."""
        return self.block == "dense" or (self.block in RESNET_BLOCKS and self.skip == "dense")

    def entry_channels(self, in_channels: int) -> int:
        """Channels after the stage's entry layer (a dense transition, a token projection or
        a cell stage's reduction block)."""
        if self.block == "dense":
            return int(in_channels * self.compression) if self.stride == 2 else in_channels
        if self.block in (*TOKEN_BLOCKS, "cell"):
            return self.width
        return in_channels

    def has_entry(self, in_channels: int) -> bool:
        """Whether the stage starts with an entry layer (dense transition, LN + conv, a cell
        stage's reduction block)."""
        if self.block == "dense":
            return self.stride == 2
        if self.block in (*TOKEN_BLOCKS, "cell"):
            return self.stride == 2 or in_channels != self.width
        return False

    @property
    def block_layers(self) -> int:
        """Weighted layers on one block's longest path (a cell: convs on its longest path)."""
        return cell_layers(self.ops) if self.block == "cell" else BLOCK_LAYERS[self.block]

    def entry_layers(self, in_channels: int) -> int:
        """Weighted layers on the entry layer's longest path (a reduction block has two)."""
        if not self.has_entry(in_channels):
            return 0
        return 2 if self.block == "cell" else 1

    def out_channels(self, in_channels: int) -> int:
        """Channels leaving the stage, given the channels entering it."""
        if self.concatenates:
            return self.entry_channels(in_channels) + self.depth * self.branch_out
        return self.branch_out

    def changes_shape(self, in_channels: int) -> bool:
        """Whether any block of the stage changes the tensor shape (channels or resolution)."""
        if self.block not in RESNET_BLOCKS:
            return False  # an entry layer changes it, never a block
        return self.stride != 1 or (self.skip != "dense" and in_channels != self.branch_out)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        # Written only where set, so the ResNet family's stored specs read as before.
        for name in ("heads", "compression"):
            if data[name] == _STAGE_DEFAULTS[name]:
                del data[name]
        # Only cells have ops: the other families' stored specs read as before.
        if self.block == "cell":
            data["ops"] = list(self.ops)
        else:
            del data["ops"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpec:
        return cls(**known_fields(cls, data, "stage"))


# Stage fields of the newer families, written by `to_dict` only where they differ from these.
_STAGE_DEFAULTS = {f.name: f.default for f in fields(StageSpec) if f.name in ("heads", "compression")}


@dataclass(frozen=True)
class ArchitectureSpec:
    """A whole residual network: stem, stages, head and options. Plain, JSON-ready data.

    Args:
        stages: the stages, input to output.
        stem: `imagenet` (7x7/2 conv + 3x3/2 max-pool), `cifar` (3x3/1 conv; conv-BN with
            no ReLU before a cell stage, as NAS-Bench-201's: `stem_relu`), `regnet`
            (3x3/2 conv, no pool), `patch`
            (ViT's patch embedding: a `patch_size` x `patch_size` conv with that stride),
            `patch_ln` (the same + LayerNorm: ConvNeXt's patchify stem) or `none`.
        stem_width: output channels of the stem (ignored, = in_channels, for `none`).
        in_channels: channels of the input images.
        num_classes: outputs of the linear head.
        preact: pre-activation blocks (BN-ReLU-conv, He et al. 2016 "Identity Mappings").
        zero_init_residual: zero-initialise the last norm of each residual branch.
        se_ratio: squeeze-excitation reduction ratio on each basic/bottleneck branch (0 = off).
        se_position: `branch` (on the branch output, squeezing to se_ratio x its channels:
            SE-ResNet) or `inner` (a bottleneck's SE after its 3x3 conv, squeezing to
            se_ratio x the block's input channels: RegNetY; basic blocks keep `branch`).
        patch_size: kernel and stride of a `patch` / `patch_ln` stem.
        layer_scale: initial value of a learned per-channel scale on each convnext and
            transformer branch (CaiT / ConvNeXt: 1e-6); 0 = no scale.
        drop_path: stochastic depth of convnext and transformer blocks: the rate rises
            linearly from 0 at the first such block to `drop_path` at the last (training only).
        pos_embed: side of a learned position-embedding grid added where the first
            transformer stage turns the map into tokens (bilinearly resized when the map is
            another size; 0 = none; ignored without a transformer stage).
        pool: `avg` (global average pooling) or `token` (a learned class token joins the last
            stage, which must be a transformer stage, and the head reads it, as ViT does).
    """

    stages: tuple[StageSpec, ...]
    stem: str = "cifar"
    stem_width: int = 16
    in_channels: int = 3
    num_classes: int = 10
    preact: bool = False
    zero_init_residual: bool = False
    se_ratio: float = 0.0
    se_position: str = "branch"
    patch_size: int = 4
    layer_scale: float = 0.0
    drop_path: float = 0.0
    pos_embed: int = 0
    pool: str = "avg"
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        stages = tuple(
            s if isinstance(s, StageSpec) else StageSpec.from_dict(s) for s in self.stages
        )
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise _fail("stages", [], "at least one stage")
        _check_choice("stem", self.stem, STEM_TYPES)
        _check_int("stem_width", self.stem_width, 1)
        _check_int("in_channels", self.in_channels, 1)
        _check_int("num_classes", self.num_classes, 1)
        for name in ("preact", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "true | false")
        if isinstance(self.se_ratio, bool) or not isinstance(self.se_ratio, (int, float)) or not (
            0.0 <= float(self.se_ratio) < 1.0
        ):
            raise _fail("se_ratio", self.se_ratio, "a number in [0, 1) (0 = off)")
        object.__setattr__(self, "se_ratio", float(self.se_ratio))
        _check_choice("se_position", self.se_position, SE_POSITIONS)
        _check_int("patch_size", self.patch_size, 1)
        object.__setattr__(self, "layer_scale", _check_number(
            "layer_scale", self.layer_scale, 0.0, 1e3, "a number >= 0 (0 = off)"
        ))
        object.__setattr__(self, "drop_path", _check_number(
            "drop_path", self.drop_path, 0.0, 1.0, "a number in [0, 1) (0 = off)"
        ))
        if isinstance(self.pos_embed, bool) or not isinstance(self.pos_embed, int) or not (
            0 <= self.pos_embed <= 1024
        ):
            raise _fail("pos_embed", self.pos_embed, "an integer grid side in [0, 1024] (0 = none)")
        _check_choice("pool", self.pool, POOL_TYPES)
        if self.pool == "token" and stages[-1].block != "transformer":
            raise _fail(
                "pool", self.pool, "avg, or token when the last stage is a transformer stage"
            )
        # Zero padding can add channels but never remove them (ResNet shortcut "A").
        channels = self.stem_out
        for i, stage in enumerate(stages):
            if stage.entry_channels(channels) < 1:
                raise _fail(
                    f"stages[{i}].compression",
                    stage.compression,
                    f"a value that keeps at least 1 of the {channels} channels entering the "
                    "transition",
                )
            if (
                stage.block in RESNET_BLOCKS
                and stage.skip == "zero_pad"
                and stage.branch_out < channels
            ):
                raise _fail(
                    f"stages[{i}].skip",
                    stage.skip,
                    f"a skip other than 'zero_pad' where channels shrink "
                    f"({channels} -> {stage.branch_out})",
                )
            channels = stage.out_channels(channels)

    # -- derived facts -------------------------------------------------------------------
    @property
    def stem_out(self) -> int:
        return self.in_channels if self.stem == "none" else self.stem_width

    def stage_in_channels(self) -> list[int]:
        """Channels entering each stage."""
        channels, result = self.stem_out, []
        for stage in self.stages:
            result.append(channels)
            channels = stage.out_channels(channels)
        return result

    @property
    def out_channels(self) -> int:
        return self.stages[-1].out_channels(self.stage_in_channels()[-1])

    @property
    def total_blocks(self) -> int:
        return sum(s.depth for s in self.stages)

    @property
    def total_depth(self) -> int:
        """Weighted layers on the longest path: stem conv + layers per block (+ each stage's
        entry layer) + head. DenseNet-121 counts 121, ResNet-50 50. A cell counts the convs
        on its longest path (`cell_layers`: 0 to 3), a reduction block 2; NAS-Bench-201's
        network thus counts 1 + 4 + 15 x (0..3) + 1."""
        stem = 0 if self.stem == "none" else 1
        layers = sum(
            s.depth * s.block_layers + s.entry_layers(c)
            for s, c in zip(self.stages, self.stage_in_channels(), strict=True)
        )
        return stem + layers + 1

    def drop_path_rates(self) -> list[list[float]]:
        """Per stage, per block: the stochastic-depth rate of each block (0 where none).

        The linear decay rule of ConvNeXt and DeiT over the convnext/transformer blocks in
        network order: 0 at the first, `drop_path` at the last. Only blocks that add a
        shortcut drop their branch; the others get 0.
        """
        count = sum(s.depth for s in self.stages if s.block in TOKEN_BLOCKS)
        rates, seen = [], 0
        for stage in self.stages:
            row = []
            for _ in range(stage.depth):
                rate = 0.0
                if stage.block in TOKEN_BLOCKS:
                    rate = self.drop_path * seen / max(1, count - 1)
                    seen += 1
                row.append(rate if stage.skip in ADDITIVE_SKIPS else 0.0)
            rates.append(row)
        return rates

    @property
    def uses_resnet_blocks(self) -> bool:
        return any(s.block in RESNET_BLOCKS for s in self.stages)

    @property
    def stem_relu(self) -> bool:
        """Whether a conv stem ends with its ReLU. Not a `cifar` stem before a cell stage: that
        is conv-BN (NAS-Bench-201's stem; every op of a cell starts with its own ReLU, and its
        skip edges carry the stem's output as it is)."""
        return not (self.stem == "cifar" and self.stages[0].block == "cell")

    @property
    def stem_preact(self) -> bool:
        """`preact` as the stem sees it: a conv-BN stem before a cell ignores it."""
        return self.preact and self.stem_relu

    @property
    def preact_matters(self) -> bool:
        """`preact` shapes basic/bottleneck blocks and the `cifar` stem (unless a cell follows
        it), nothing else."""
        return (self.stem == "cifar" and self.stem_relu) or self.uses_resnet_blocks

    @property
    def final_norm(self) -> str | None:
        """The norm before the head: `bn` (BN-ReLU: pre-activation, dense and cell nets), `ln`
        (LayerNorm: convnext after pooling, transformer on the tokens) or None."""
        last = self.stages[-1].block
        if last in ("dense", "cell") or (last in RESNET_BLOCKS and self.preact):
            return "bn"
        return "ln" if last in TOKEN_BLOCKS else None

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": SPEC_VERSION,
            "stem": self.stem,
            "stem_width": self.stem_width,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "preact": self.preact,
            "zero_init_residual": self.zero_init_residual,
            "se_ratio": self.se_ratio,
            "stages": [s.to_dict() for s in self.stages],
        }
        # Written only where set, so the ResNet family's stored specs read as before.
        for name, default in _SPEC_DEFAULTS.items():
            if getattr(self, name) != default:
                data[name] = getattr(self, name)
        if self.name:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchitectureSpec:
        if not isinstance(data, dict):
            raise _fail("architecture", type(data).__name__, "a mapping")
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise _fail("version", version, str(SPEC_VERSION))
        data.pop("arch_id", None)
        stages = data.get("stages")
        if not isinstance(stages, (list, tuple)):
            raise _fail("stages", stages, "a list of stage mappings")
        for i, stage in enumerate(stages):
            if not isinstance(stage, (dict, StageSpec)):
                raise _fail(f"stages[{i}]", stage, "a mapping")
        data["stages"] = tuple(
            s if isinstance(s, StageSpec) else StageSpec.from_dict(s) for s in stages
        )
        return cls(**known_fields(cls, data, "architecture"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchitectureSpec:
        return cls.from_dict(json.loads(text))

    # -- identity ------------------------------------------------------------------------
    def canonical_dict(self) -> dict[str, Any]:
        """The fields that decide the network, normalised so equal networks compare equal.

        - A basic block ignores the bottleneck fields (expansion, groups, width_per_group).
        - `stem_width` means nothing without a stem.
        - On a stage whose blocks never change shape, `zero_pad` builds exactly what
          `identity` builds (x + F(x)), so both are written `identity`.
        - The zero-init flag only matters where there is a residual branch it zeroes (an
          adding skip other than `gated`, whose gate already starts at 0).
        - Each block keeps only the fields it reads (`BLOCK_FIELDS`).
        - `preact` only counts where it shapes something (the `cifar` stem, basic/bottleneck
          blocks); `se_ratio` only with basic/bottleneck blocks; `layer_scale` and
          `drop_path` only with convnext/transformer blocks that add; `pos_embed` only with
          a transformer stage; `patch_size` only with a patch stem. Fields of the newer
          families are written only where they apply, so ResNet-family ids never change.
        - A cell keeps its 6 ops as they are: isomorphic cells are not merged (NAS-Bench-201
          measured each op tuple), and `zero_init_residual` shapes no cell stage.
        - `name` is a label, not part of the network.
        """
        stages = []
        channels = self.stem_out
        any_additive = modern_additive = has_transformer = False
        for stage in self.stages:
            entry: dict[str, Any] = {
                "depth": stage.depth,
                "width": stage.width,
                "stride": stage.stride,
                "block": stage.block,
                "skip": stage.skip,
            }
            if stage.block == "bottleneck":
                entry["expansion"] = stage.expansion
                entry["groups"] = stage.groups
                # Only the resulting inner width matters, not how it was written.
                entry["inner_width"] = stage.inner_width
            elif stage.block == "cell":
                entry["ops"] = list(stage.ops)
            elif stage.block != "basic":
                entry.update({k: getattr(stage, k) for k in BLOCK_FIELDS[stage.block]})
                if stage.block == "dense" and not stage.has_entry(channels):
                    del entry["compression"]  # no transition to compress
            if stage.skip == "zero_pad" and not stage.changes_shape(channels):
                entry["skip"] = "identity"
            if entry["skip"] in ZERO_INIT_SKIPS and stage.block != "cell":
                any_additive = True
            if entry["skip"] in ADDITIVE_SKIPS:
                modern_additive = modern_additive or stage.block in TOKEN_BLOCKS
            has_transformer = has_transformer or stage.block == "transformer"
            stages.append(entry)
            channels = stage.out_channels(channels)
        data = {
            "v": SPEC_VERSION,
            "stem": self.stem,
            "stem_width": None if self.stem == "none" else self.stem_width,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "preact": self.preact and self.preact_matters,
            "zero_init_residual": self.zero_init_residual and any_additive,
            "se_ratio": self.se_ratio if self.uses_resnet_blocks else 0.0,
            "stages": stages,
        }
        if self.stem in PATCH_STEMS:
            data["patch_size"] = self.patch_size
        if self.se_ratio and self.se_position != "branch" and any(
            s.block == "bottleneck" for s in self.stages
        ):
            data["se_position"] = self.se_position
        if modern_additive and self.layer_scale:
            data["layer_scale"] = self.layer_scale
        if self.drop_path and any(r > 0 for rates in self.drop_path_rates() for r in rates):
            data["drop_path"] = self.drop_path
        if has_transformer and self.pos_embed:
            data["pos_embed"] = self.pos_embed
        if self.pool != "avg":
            data["pool"] = self.pool
        return data

    @property
    def arch_id(self) -> str:
        """Short sha256 of the canonical JSON: the same network gives the same id."""
        text = json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """One line, e.g. `cifar16 | 3x16 basic identity | 3x32/2 basic identity`; a cell stage
        shows its arch string and no skip (its edges are its skips):
        `5x32/2 cell(|nor_conv_3x3~0|+|...|)`, written once at the end when every cell stage
        has the same cell (NAS-Bench-201): `... | 5x64/2 cell | cell |nor_conv_3x3~0|+|...|`."""
        parts = [f"{self.stem}{'' if self.stem == 'none' else self.stem_width}"]
        cells = {s.ops for s in self.stages if s.block == "cell"}
        for s in self.stages:
            stride = f"/{s.stride}" if s.stride != 1 else ""
            skip = "" if s.block == "cell" else f" {s.skip}"
            label = "cell" if s.block == "cell" and len(cells) == 1 else block_label(s)
            parts.append(f"{s.depth}x{s.width}{stride} {label}{skip}")
        if len(cells) == 1:
            parts.append(f"cell {cell_arch_str(next(iter(cells)))}")
        return " | ".join(parts)


def block_label(stage: StageSpec) -> str:
    """`basic`, `bottleneck(x4,g32)`, `dense(x4,c0.5)`, `convnext(x4)`, `transformer(h12,x4)`,
    `cell(|nor_conv_3x3~0|+|...|)` (NAS-Bench-201's arch string of the cell)."""
    if stage.block == "bottleneck":
        return f"bottleneck(x{stage.expansion},g{stage.groups})"
    if stage.block == "dense":
        return f"dense(x{stage.expansion},c{stage.compression:g})"
    if stage.block == "convnext":
        return f"convnext(x{stage.expansion})"
    if stage.block == "transformer":
        return f"transformer(h{stage.heads},x{stage.expansion})"
    if stage.block == "cell":
        return f"cell({cell_arch_str(stage.ops)})"
    return stage.block


# Network fields of the newer families, written by `to_dict` only where they differ from these.
_SPEC_DEFAULTS = {
    f.name: f.default
    for f in fields(ArchitectureSpec)
    if f.name in ("se_position", "patch_size", "layer_scale", "drop_path", "pos_embed", "pool")
}


def known_fields(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` if every key is a field of dataclass `cls`; else a ValueError naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"`{what}` got {type(data).__name__}; allowed: a mapping")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {what} field(s) {', '.join(f'`{u}`' for u in unknown)}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    return data
