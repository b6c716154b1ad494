"""Function-preserving morphs: grow a trained parent into a child that computes the same.

A morph (network morphism: Chen et al. 2016, Net2Net; Wei et al. 2016) turns a parent
network into a child that computes the same function at initialisation, so the search can
start the child from the parent's weights. Two kinds of step, in any combination, per stage:

- deeper: blocks appended at the END of a stage (after the parent's, so the strided or
  projecting first block keeps its weights), each starting as the identity;
- wider: Net2WiderNet. Every channel space of the child (the channels one set of tensors
  shares) is a copy of the parent's with some channels replicated, through a fixed mapping
  child channel -> parent channel: producers copy their filters, norms their parameters and
  statistics, consumers divide their incoming weights by the replication count.

`morph_plan` compares specs only and needs no torch, so a search can ask it before building
anything; torch is imported inside `morph_weights`, which moves the weights along the plan
(`Morph.layout`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from search_spaces.spec import (
    CELL_CONV_OPS,
    CELL_EDGES,
    RESNET_BLOCKS,
    TOKEN_BLOCKS,
    ArchitectureSpec,
    StageSpec,
)

if TYPE_CHECKING:
    import torch

__all__ = ["ChannelMap", "Morph", "Space", "StageMorph", "check_morph", "morph_plan",
           "morph_weights"]

# How one dimension of a tensor follows a channel space (None: it does not):
# `out` a producer's output or a per-channel value: copied along the mapping;
# `in` a consumer's input: copied and divided by the replication count;
# `group_in` a grouped conv's input inside its group: the same within each group;
# `qkv` a transformer's q, k and v rows: copied per head, k divided, q rescaled (`_qkv`).
Role = tuple[str, str] | None

# Spec fields that decide nothing about the weights or the eval-mode function: they may differ.
_FREE_FIELDS = ("stages", "zero_init_residual", "drop_path")
# (node, source node) of each cell edge, in `CELL_EDGES` order.
_EDGE_NODES = tuple((int(edge[0]), int(edge[-1])) for edge in CELL_EDGES)


@dataclass(frozen=True)
class Space:
    """A set of channels every tensor of one width shares (a stage's stream, a block's inner
    width), with its width in the parent and in the child.

    Args:
        name: the module path where it starts (`stages.1` for stage 1's stream).
        parent: channels in the parent.
        child: channels in the child (>= parent).
        groups: the channels fall into this many groups that copies must stay inside
            (grouped convs, attention heads).
        uniform: a LayerNorm normalises over it: every channel must be copied equally often,
            or its mean and variance change.
        pads: the space whose channels a zero-pad shortcut puts first (the rest are zeros):
            those stay where they are, copies of the padded channels come after them.
    """

    name: str
    parent: int
    child: int
    groups: int = 1
    uniform: bool = False
    pads: str | None = None

    @property
    def widened(self) -> bool:
        return self.child > self.parent


@dataclass(frozen=True)
class ChannelMap:
    """Where each child channel of a space comes from.

    `source[j]` is the parent channel of child channel j; `within[t]` the same inside one
    group (child channel k * child_per_group + t of group k copies parent channel
    k * parent_per_group + within[t]); both the old channels first, as they are.
    """

    parent: int
    child: int
    groups: int
    source: tuple[int, ...]
    within: tuple[int, ...]

    @property
    def identity(self) -> bool:
        return self.child == self.parent and self.source == tuple(range(self.parent))

    @property
    def counts(self) -> tuple[int, ...]:
        """How many child channels copy each parent channel."""
        return _tally(self.source, self.parent)

    @property
    def within_counts(self) -> tuple[int, ...]:
        return _tally(self.within, self.parent // self.groups)


def _tally(sources: tuple[int, ...], n: int) -> tuple[int, ...]:
    """How often each of 0..n-1 occurs in `sources`."""
    counts = [0] * n
    for p in sources:
        counts[p] += 1
    return tuple(counts)


@dataclass(frozen=True)
class StageMorph:
    """What happens to one stage: blocks appended (and how they start as the identity),
    channels widened."""

    index: int
    block: str
    parent_depth: int
    child_depth: int
    parent_width: int
    child_width: int
    identity_start: str | None = None

    @property
    def deeper(self) -> bool:
        return self.child_depth > self.parent_depth


@dataclass(frozen=True)
class Morph:
    """A function-preserving way from `parent` to `child` (see `morph_plan`).

    `layout` says, for every parent tensor with a dimension over channels, how each of them
    follows a channel space; tensors not listed are copied as they are. `virtual` lists child
    tensors the parent lacks but computes implicitly (an identity shortcut that became a
    projection) with the value that stands for it; `starts` the values that make each block
    in `new_blocks` start as the identity (the rest of a new block keeps its fresh init).
    """

    parent: ArchitectureSpec
    child: ArchitectureSpec
    stages: tuple[StageMorph, ...]
    spaces: tuple[Space, ...] = field(repr=False)
    aliases: tuple[tuple[str, str], ...] = field(repr=False)
    layout: tuple[tuple[str, tuple[Role, ...]], ...] = field(repr=False)
    virtual: tuple[tuple[str, str], ...] = field(repr=False)
    starts: tuple[tuple[str, str], ...] = field(repr=False)
    new_blocks: tuple[str, ...] = field(repr=False)

    @property
    def deeper(self) -> bool:
        return any(s.deeper for s in self.stages)

    @property
    def wider(self) -> bool:
        return any(s.widened for s in self.spaces)

    @property
    def widened(self) -> tuple[str, ...]:
        """Names of the channel spaces that grow."""
        return tuple(s.name for s in self.spaces if s.widened)

    def describe(self) -> list[str]:
        """One line per step, e.g. `stages[1]: 2 -> 3 blocks (new blocks: last BN zeroed)`."""
        lines = []
        for s in self.stages:
            if s.deeper:
                lines.append(f"stages[{s.index}]: {s.parent_depth} -> {s.child_depth} blocks "
                             f"(new blocks: {s.identity_start})")
            if s.child_width > s.parent_width:
                lines.append(f"stages[{s.index}]: {s.parent_width} -> {s.child_width} channels")
        inner = [s for s in self.spaces if s.widened and s.name.count(".") > 1]
        if inner:
            lines.append(f"{len(inner)} inner channel space(s) widened")
        return lines


def morph_plan(parent: ArchitectureSpec, child: ArchitectureSpec) -> Morph | None:
    """How `child` is reached from `parent` by function-preserving steps, or None.

    A morph is any combination, stage by stage, of deeper (more blocks: appended at the end,
    starting as the identity) and wider (more channels: Net2WiderNet); an identical child is
    the empty morph. Everything else is not a morph: fewer blocks or channels, another block
    family, skip type, stride, stem or head, and the steps a family cannot take exactly
    (`check_morph` says why).

    Args:
        parent: the trained architecture.
        child: the architecture to grow into.
    """
    try:
        return check_morph(parent, child)
    except ValueError:
        return None


def check_morph(parent: ArchitectureSpec, child: ArchitectureSpec) -> Morph:
    """`morph_plan`, raising a ValueError that says why a pair is not a morph."""
    for name, value in (("parent", parent), ("child", child)):
        if not isinstance(value, ArchitectureSpec):
            raise TypeError(f"`{name}` got {type(value).__name__}; allowed: ArchitectureSpec")
    return _Planner(parent, child).plan()


def channel_maps(morph: Morph, seed: int = 0) -> dict[str, ChannelMap]:
    """The channel mapping of every space of `morph` (aliases included): the old channels
    first, as they are, then copies drawn from a generator seeded by `seed` and the space's
    name, round-robin where a LayerNorm needs every channel copied equally often."""
    maps: dict[str, ChannelMap] = {}
    for s in morph.spaces:
        rng = random.Random(f"{seed}/{s.name}")
        if s.uniform:
            source = within = tuple(j % s.parent for j in range(s.child))
        elif s.pads is not None:
            prev = maps[s.pads]
            extra = _extend(s.parent - prev.parent, s.child - prev.child, rng)
            source = within = prev.source + tuple(prev.parent + t for t in extra)
        elif s.groups > 1:
            per_parent, per_child = s.parent // s.groups, s.child // s.groups
            within = _extend(per_parent, per_child, rng)
            source = tuple(k * per_parent + t for k in range(s.groups) for t in within)
        else:
            source = within = _extend(s.parent, s.child, rng)
        maps[s.name] = ChannelMap(s.parent, s.child, s.groups, source, within)
    for alias, target in morph.aliases:
        maps[alias] = maps[target]
    return maps


def _extend(parent: int, child: int, rng: random.Random) -> tuple[int, ...]:
    return tuple(range(parent)) + tuple(rng.randrange(parent) for _ in range(child - parent))


def _se_reduced(channels: int, se_ratio: float) -> int:
    """`SqueezeExcite.reduced` (blocks.py): the squeeze width on a branch output."""
    return max(1, int(channels * se_ratio))


def _se_reduced_from_input(in_channels: int, se_ratio: float) -> int:
    """`SqueezeExcite.reduced_from_input` (blocks.py): RegNetY's squeeze width."""
    return max(1, int(round(in_channels * se_ratio)))


def _shortcut(stage: StageSpec, in_ch: int, stride: int) -> str | None:
    """The shortcut module `make_shortcut` (blocks.py) builds for one basic/bottleneck block."""
    changes = stride != 1 or in_ch != stage.branch_out
    if stage.skip == "none":
        return None
    if stage.skip == "projection" or (changes and stage.skip in ("identity", "gated")):
        return "projection"
    if stage.skip == "zero_pad" and changes:
        return "zero_pad"
    return "identity"


def cell_starts_as_identity(ops: tuple[str, ...]) -> bool:
    """Whether a cell computes its input exactly once every conv edge outputs zero (its last
    BN zeroed): the sum of its skip-only paths from node 0 to node 3 must be x, once, and no
    pooling edge may see a non-zero node."""
    # Per node: k >= 0 copies of the input, or None for anything else (a pooled input).
    nodes: list[int | None] = [1, 0, 0, 0]
    for (target, source), op in zip(_EDGE_NODES, ops, strict=True):
        value = nodes[source]
        if op == "skip_connect":
            term = value
        elif op == "avg_pool_3x3":
            term = 0 if value == 0 else None
        else:  # `none` and the zeroed convs
            term = 0
        nodes[target] = None if term is None or nodes[target] is None else nodes[target] + term
    return nodes[3] == 1


class _Planner:
    """One walk over both specs: channel spaces, the tensor layout and the new blocks."""

    def __init__(self, parent: ArchitectureSpec, child: ArchitectureSpec) -> None:
        self.parent, self.child = parent, child
        self.spaces: dict[str, Space] = {}
        self.aliases: dict[str, str] = {}
        self.uniform: set[str] = set()
        self.layout: dict[str, tuple[Role, ...]] = {}
        self.virtual: dict[str, str] = {}
        self.starts: dict[str, str] = {}
        self.new_blocks: list[str] = []
        self.stages: list[StageMorph] = []

    # -- spaces and tensors ----------------------------------------------------------------
    def root(self, name: str) -> str:
        return self.aliases.get(name, name)

    def space(self, name: str, parent: int, child: int, *, groups: int = 1,
              pads: str | None = None) -> str:
        self.spaces[name] = Space(name, parent, child, groups,
                                  pads=None if pads is None else self.root(pads))
        return name

    def same(self, name: str, target: str) -> str:
        """`name` is `target`'s space under another name (an identity shortcut joins them)."""
        self.aliases[name] = self.root(target)
        return name

    def conv(self, prefix: str, out: str, inp: str, *, groups: int = 1,
             bias: bool = False) -> None:
        self.layout[f"{prefix}.weight"] = (
            ("out", out), ("group_in" if groups > 1 else "in", inp), None, None
        )
        if bias:
            self.layout[f"{prefix}.bias"] = (("out", out),)

    def linear(self, prefix: str, out: str, inp: str) -> None:
        self.layout[f"{prefix}.weight"] = (("out", out), ("in", inp))
        self.layout[f"{prefix}.bias"] = (("out", out),)

    def per_channel(self, key: str, space: str, dims: int = 1) -> None:
        """A tensor whose last of `dims` dimensions runs over `space`."""
        self.layout[key] = (None,) * (dims - 1) + (("out", space),)

    def bn(self, prefix: str, space: str) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.per_channel(f"{prefix}.{name}", space)

    def ln(self, prefix: str, space: str) -> None:
        self.uniform.add(self.root(space))
        for name in ("weight", "bias"):
            self.per_channel(f"{prefix}.{name}", space)

    def bn_identity(self, table: dict[str, str], prefix: str) -> None:
        """Eval-mode BN that passes its input through: mean 0, var 1, weight sqrt(1 + eps)."""
        table.update({f"{prefix}.weight": "bn_scale", f"{prefix}.bias": "zero",
                      f"{prefix}.running_mean": "zero", f"{prefix}.running_var": "one"})

    # -- the walk --------------------------------------------------------------------------
    def plan(self) -> Morph:
        p, c = self.parent, self.child
        pd, cd = p.canonical_dict(), c.canonical_dict()
        for key in sorted(set(pd) | set(cd)):
            if key not in _FREE_FIELDS and pd.get(key) != cd.get(key):
                raise ValueError(f"`{key}` differs: {pd.get(key)!r} in the parent, "
                                 f"{cd.get(key)!r} in the child; a morph changes stages only")
        if len(p.stages) != len(c.stages):
            raise ValueError(f"the parent has {len(p.stages)} stages, the child "
                             f"{len(c.stages)}; a morph keeps the stages")
        prev = self.space("stem", p.stem_out, c.stem_out)
        for i, (ps, cs, p_in, c_in) in enumerate(zip(
            p.stages, c.stages, p.stage_in_channels(), c.stage_in_channels(), strict=True
        )):
            for name, a, b in (("block", ps.block, cs.block), ("stride", ps.stride, cs.stride)):
                if a != b:
                    raise ValueError(f"stages[{i}].{name} differs: {a!r} in the parent, {b!r} "
                                     "in the child; a morph keeps it")
            # Compared as built: zero_pad on a stage that keeps its shape is an identity.
            if pd["stages"][i]["skip"] != cd["stages"][i]["skip"]:
                hint = (" (zero_pad builds an identity where a stage keeps its shape and pads "
                        "zeros where it widens, which the parent's identity does not)"
                        if {ps.skip, cs.skip} <= {"identity", "zero_pad"} else "")
                raise ValueError(f"stages[{i}].skip differs: {ps.skip!r} in the parent, "
                                 f"{cs.skip!r} in the child{hint}; a morph keeps it")
            if cs.depth < ps.depth:
                raise ValueError(f"stages[{i}].depth shrinks ({ps.depth} -> {cs.depth}); a "
                                 "morph only adds blocks")
            if ps.concatenates:
                family = self._opaque
            elif ps.block in RESNET_BLOCKS:
                family = self._residual
            elif ps.block in TOKEN_BLOCKS:
                family = self._token
            else:
                family = self._cell
            prev = family(i, ps, cs, p_in, c_in, prev)
        if c.final_norm == "bn":
            self.bn("final_bn", prev)
        elif c.final_norm == "ln":
            self.ln("final_norm", prev)
        self.layout["fc.weight"] = (None, ("in", prev))
        self._check_spaces()
        return Morph(
            parent=p,
            child=c,
            stages=tuple(self.stages),
            spaces=tuple(self.spaces.values()),
            aliases=tuple(self.aliases.items()),
            layout=tuple(self.layout.items()),
            virtual=tuple(self.virtual.items()),
            starts=tuple(self.starts.items()),
            new_blocks=tuple(self.new_blocks),
        )

    def _check_spaces(self) -> None:
        for name in self.uniform:
            self.spaces[name] = replace(self.spaces[name], uniform=True)
        for s in self.spaces.values():
            if s.child < s.parent:
                raise ValueError(f"`{s.name}` narrows ({s.parent} -> {s.child} channels); a "
                                 "morph only widens")
            prev = self.spaces[s.pads] if s.pads is not None else None
            moved = s.widened or (prev is not None and prev.widened)
            if not moved:
                continue
            if prev is not None and s.child - prev.child < s.parent - prev.parent:
                raise ValueError(
                    f"`{s.name}`: a zero-pad shortcut widened {prev.parent} -> {prev.child} "
                    f"input channels but {s.parent} -> {s.child} outputs: the child pads "
                    f"{s.child - prev.child} zero channels where the parent has "
                    f"{s.parent - prev.parent}"
                )
            rules = [s.uniform, s.groups > 1, prev is not None]
            if sum(rules) > 1:
                raise ValueError(f"`{s.name}` is at once two of: normalised by a LayerNorm, "
                                 "grouped, zero-padded; no channel copy keeps both exact")
            if s.uniform and s.child % s.parent:
                raise ValueError(
                    f"`{s.name}`: a LayerNorm normalises over it, so every channel must be "
                    f"copied equally often; {s.parent} -> {s.child} channels is not a multiple"
                )
            if s.groups > 1 and (s.parent % s.groups or s.child % s.groups):
                raise ValueError(f"`{s.name}`: {s.parent} -> {s.child} channels do not split "
                                 f"into its {s.groups} groups")

    def _no_shrink(self, i: int, ps: StageSpec, cs: StageSpec) -> None:
        for what, a, b in (("width", ps.branch_out, cs.branch_out),
                           ("inner width", ps.inner_width, cs.inner_width)):
            if b < a:
                raise ValueError(f"stages[{i}] {what} shrinks ({a} -> {b}); a morph only widens")

    def _record(self, i: int, ps: StageSpec, cs: StageSpec, p_in: int, c_in: int,
                start: str | None) -> None:
        self.stages.append(StageMorph(i, ps.block, ps.depth, cs.depth, ps.out_channels(p_in),
                                      cs.out_channels(c_in), start))

    def _new_blocks(self, prefix: str, ps: StageSpec, cs: StageSpec,
                    starts: dict[str, str]) -> None:
        for j in range(ps.depth, cs.depth):
            self.new_blocks.append(f"{prefix}.{j}")
            self.starts.update({f"{prefix}.{j}.{k}": v for k, v in starts.items()})

    # -- families --------------------------------------------------------------------------
    def _opaque(self, i: int, ps: StageSpec, cs: StageSpec, p_in: int, c_in: int,
                prev: str) -> str:
        """A concatenating (dense) stage: each block's output is part of the stage's output,
        so a new block adds channels and a wider one moves them; it can only stay as it is."""
        pcanon = self.parent.canonical_dict()["stages"][i]
        if pcanon != self.child.canonical_dict()["stages"][i]:
            raise ValueError(f"stages[{i}] concatenates ({ps.block} block, {ps.skip} skip): "
                             "neither deeper nor wider keeps its function")
        if self.spaces[self.root(prev)].widened:
            raise ValueError(f"stages[{i}] concatenates its input onto its output: it cannot "
                             "follow a widened stage")
        self._record(i, ps, cs, p_in, c_in, None)
        return self.space(f"stages.{i}", ps.out_channels(p_in), cs.out_channels(c_in))

    def _residual(self, i: int, ps: StageSpec, cs: StageSpec, p_in: int, c_in: int,
                  prev: str) -> str:
        preact, bottleneck = self.child.preact, ps.block == "bottleneck"
        if bottleneck and ps.groups != cs.groups:
            raise ValueError(f"stages[{i}].groups differs ({ps.groups} -> {cs.groups}); a "
                             "morph keeps the groups")
        self._no_shrink(i, ps, cs)
        stream = f"stages.{i}"
        first_p, first_c = _shortcut(ps, p_in, ps.stride), _shortcut(cs, c_in, cs.stride)
        if first_p == first_c == "identity":
            self.same(stream, prev)
        elif (first_p, first_c) == ("identity", "projection") and not preact:
            # The parent's identity is the projection 1x1 conv = I, BN = identity.
            self.space(stream, ps.branch_out, cs.branch_out)
            pre = f"stages.{i}.0.shortcut"
            self.virtual[f"{pre}.conv.weight"] = "identity"
            self.bn_identity(self.virtual, f"{pre}.bn")
            self.virtual[f"{pre}.bn.num_batches_tracked"] = "zero"
        elif first_p != first_c:
            why = (" (a pre-activation projection reads relu(bn1(x)), which loses the negative "
                   "values the identity passes)" if preact and first_p == "identity" else "")
            raise ValueError(f"stages[{i}]'s first shortcut is {first_p} in the parent and "
                             f"{first_c} in the child{why}")
        else:
            self.space(stream, ps.branch_out, cs.branch_out,
                       pads=prev if first_p == "zero_pad" else None)
        for j in range(ps.depth):
            self._residual_block(
                f"stages.{i}.{j}", ps, cs, prev if j == 0 else stream, stream,
                (p_in, c_in) if j == 0 else (ps.branch_out, cs.branch_out),
                first_c if j == 0 else _shortcut(cs, cs.branch_out, 1),
            )
        start = None
        if cs.depth > ps.depth:
            start, starts = self._residual_start(i, cs)
            self._new_blocks(f"stages.{i}", ps, cs, starts)
        self._record(i, ps, cs, p_in, c_in, start)
        return stream

    def _residual_block(self, pre: str, ps: StageSpec, cs: StageSpec, inp: str, stream: str,
                        in_widths: tuple[int, int], shortcut: str | None) -> None:
        spec = self.child
        groups = ps.groups if ps.block == "bottleneck" else 1
        a = self.space(f"{pre}.conv1", ps.inner_width, cs.inner_width, groups=groups)
        self.conv(f"{pre}.conv1", a, inp)
        if ps.block == "bottleneck":
            b = self.space(f"{pre}.conv2", ps.inner_width, cs.inner_width, groups=groups)
            self.conv(f"{pre}.conv2", b, a, groups=groups)
            self.conv(f"{pre}.conv3", stream, b)
            norms = (inp, a, b) if spec.preact else (a, b, stream)
        else:
            self.conv(f"{pre}.conv2", stream, a)
            norms = (inp, a) if spec.preact else (a, stream)
        for k, space in enumerate(norms, start=1):
            self.bn(f"{pre}.bn{k}", space)
        if spec.se_ratio > 0 and ps.block == "bottleneck" and spec.se_position == "inner":
            s = self.space(f"{pre}.se_inner", _se_reduced_from_input(in_widths[0], spec.se_ratio),
                           _se_reduced_from_input(in_widths[1], spec.se_ratio))
            self.conv(f"{pre}.se_inner.reduce", s, b, bias=True)
            self.conv(f"{pre}.se_inner.expand", b, s, bias=True)
        elif spec.se_ratio > 0:
            s = self.space(f"{pre}.se", _se_reduced(ps.branch_out, spec.se_ratio),
                           _se_reduced(cs.branch_out, spec.se_ratio))
            self.conv(f"{pre}.se.reduce", s, stream, bias=True)
            self.conv(f"{pre}.se.expand", stream, s, bias=True)
        if shortcut == "projection":
            self.conv(f"{pre}.shortcut.conv", stream, inp)
            if not spec.preact:
                self.bn(f"{pre}.shortcut.bn", stream)

    def _residual_start(self, i: int, cs: StageSpec) -> tuple[str, dict[str, str]]:
        """How an appended basic/bottleneck block starts as the identity.

        Post-activation: relu(x + F(x)) is x when F(x) = 0 because x, the previous block's
        output, is already a ReLU's; the last BN (gamma = beta = 0) zeroes F and its gamma
        still gets a gradient. Pre-activation: x + F(x), but the last BN is followed by ReLU
        and conv, and relu'(0) = 0 would freeze a branch behind a zeroed BN for good, so the
        last conv is zeroed instead (its weight gets a gradient at once).
        """
        spec, bottleneck = self.child, cs.block == "bottleneck"
        last_bn, last_conv = ("bn3", "conv3") if bottleneck else ("bn2", "conv2")
        if cs.skip == "gated":
            return "gate 0", {"gate": "zero"}
        if spec.preact and cs.skip in ("identity", "zero_pad"):
            # `one` undoes the child's own zero_init_residual, which would freeze the branch.
            return "last conv zeroed", {f"{last_conv}.weight": "zero", f"{last_bn}.weight": "one"}
        if spec.preact:
            why = ("its projection reads relu(bn1(x))" if cs.skip == "projection"
                   else "with no shortcut, its first ReLU")
            raise ValueError(
                f"stages[{i}] cannot deepen: a pre-activation block with a {cs.skip} skip has "
                f"no identity start ({why} drops the stream's negative values)"
            )
        if cs.skip in ("identity", "zero_pad", "projection"):
            starts = {f"{last_bn}.weight": "zero", f"{last_bn}.bias": "zero"}
            if cs.skip == "projection":
                starts["shortcut.conv.weight"] = "identity"
                self.bn_identity(starts, "shortcut.bn")
            return "last BN zeroed", starts
        if not bottleneck and spec.se_ratio == 0:
            # No shortcut: Net2DeeperNet's identity convs; relu(x) = x on a ReLU's output.
            starts = {"conv1.weight": "identity", "conv2.weight": "identity"}
            self.bn_identity(starts, "bn1")
            self.bn_identity(starts, "bn2")
            return "identity convs (Net2DeeperNet)", starts
        raise ValueError(
            f"stages[{i}] cannot deepen: a {cs.block} block with no shortcut has no identity "
            "start (a bottleneck's narrow inner width or the SE gate cannot pass x through)"
        )

    def _token(self, i: int, ps: StageSpec, cs: StageSpec, p_in: int, c_in: int,
               prev: str) -> str:
        spec, transformer = self.child, ps.block == "transformer"
        if transformer and ps.heads != cs.heads:
            raise ValueError(f"stages[{i}].heads differs ({ps.heads} -> {cs.heads}); a morph "
                             "keeps the heads")
        self._no_shrink(i, ps, cs)
        if ps.has_entry(p_in) != cs.has_entry(c_in):
            raise ValueError(f"stages[{i}] has an entry layer (LayerNorm + conv) in only one "
                             "of parent and child; a LayerNorm cannot stand for an identity")
        stream = f"stages.{i}"
        if ps.has_entry(p_in):
            self.space(stream, ps.width, cs.width)
            self.ln(f"stages.{i}.entry.norm", prev)
            self.conv(f"stages.{i}.entry.conv", stream, prev, bias=True)
        else:
            self.same(stream, prev)
        self.uniform.add(self.root(stream))
        if transformer:
            for name in ("token", "pos"):
                self.per_channel(f"stages.{i}.{name}", stream, dims=3)
        scaled = cs.skip != "none" and spec.layer_scale > 0
        residuals = ("res1", "res2") if transformer else ("res",)
        for j in range(ps.depth):
            pre = f"stages.{i}.blocks.{j}"
            mlp = self.space(f"{pre}.mlp", ps.inner_width, cs.inner_width)
            if transformer:
                heads = self.space(f"{pre}.attn", ps.width, cs.width, groups=ps.heads)
                self.ln(f"{pre}.norm1", stream)
                self.layout[f"{pre}.attn.qkv.weight"] = (("qkv", heads), ("in", stream))
                self.layout[f"{pre}.attn.qkv.bias"] = (("qkv", heads),)
                self.linear(f"{pre}.attn.proj", stream, heads)
                self.ln(f"{pre}.norm2", stream)
                self.linear(f"{pre}.fc1", mlp, stream)
                self.linear(f"{pre}.fc2", stream, mlp)
            else:
                # Depthwise: each channel filters itself, so a copy just copies its filter.
                self.layout[f"{pre}.dwconv.weight"] = (("out", stream), None, None, None)
                self.per_channel(f"{pre}.dwconv.bias", stream)
                self.ln(f"{pre}.norm", stream)
                self.linear(f"{pre}.pw1", mlp, stream)
                self.linear(f"{pre}.pw2", stream, mlp)
            if scaled:
                for res in residuals:
                    self.per_channel(f"{pre}.{res}.scale", stream)
        start = None
        if cs.depth > ps.depth:
            if cs.skip == "none":
                raise ValueError(f"stages[{i}] cannot deepen: a {cs.block} block with no "
                                 "shortcut has no identity start")
            if cs.skip == "gated":
                start, starts = "gate 0", {f"{r}.gate": "zero" for r in residuals}
            elif scaled:
                start, starts = "layer scale 0", {f"{r}.scale": "zero" for r in residuals}
            else:
                last = ("attn.proj", "fc2") if transformer else ("pw2",)
                start = "last linear zeroed"
                starts = {f"{m}.{p}": "zero" for m in last for p in ("weight", "bias")}
            self._new_blocks(f"stages.{i}.blocks", ps, cs, starts)
        self._record(i, ps, cs, p_in, c_in, start)
        return stream

    def _cell(self, i: int, ps: StageSpec, cs: StageSpec, p_in: int, c_in: int,
              prev: str) -> str:
        if ps.ops != cs.ops:
            raise ValueError(f"stages[{i}].ops differ; a morph keeps the cell")
        self._no_shrink(i, ps, cs)
        if ps.has_entry(p_in) != cs.has_entry(c_in):
            raise ValueError(f"stages[{i}] has a reduction block in only one of parent and "
                             "child; its ReLU-conv-BN cannot stand for an identity")
        stream = f"stages.{i}"
        if ps.has_entry(p_in):
            self.space(stream, ps.width, cs.width)
            e = f"stages.{i}.entry"
            a = self.space(f"{e}.conv_a", ps.width, cs.width)
            self.conv(f"{e}.conv_a.op.1", a, prev)
            self.bn(f"{e}.conv_a.op.2", a)
            self.conv(f"{e}.conv_b.op.1", stream, a)
            self.bn(f"{e}.conv_b.op.2", stream)
            if ps.stride == 2:
                self.conv(f"{e}.downsample.1", stream, prev)
            else:
                self.conv(f"{e}.downsample.op.1", stream, prev)
                self.bn(f"{e}.downsample.op.2", stream)
        else:
            self.same(stream, prev)
        convs = [k for k, op in enumerate(ps.ops) if op in CELL_CONV_OPS]
        for j in range(ps.depth):
            for k in convs:
                self.conv(f"stages.{i}.cells.{j}.layers.{k}.op.1", stream, stream)
                self.bn(f"stages.{i}.cells.{j}.layers.{k}.op.2", stream)
        start = None
        if cs.depth > ps.depth:
            if not cell_starts_as_identity(ps.ops):
                raise ValueError(f"stages[{i}] cannot deepen: with its conv edges zeroed the "
                                 "cell does not compute its input (its skip and pooling "
                                 "paths from node 0 to node 3 are not exactly one skip path)")
            start = "conv edges' last BN zeroed"
            starts = {f"layers.{k}.op.2.{p}": "zero" for k in convs for p in ("weight", "bias")}
            self._new_blocks(f"stages.{i}.cells", ps, cs, starts)
        self._record(i, ps, cs, p_in, c_in, start)
        return stream


# -- weights -----------------------------------------------------------------------------
def morph_weights(
    parent: ArchitectureSpec,
    parent_state: Mapping[str, torch.Tensor],
    child: ArchitectureSpec,
    *,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The child's state_dict, computing the parent's function (eval mode) at initialisation.

    Parent blocks keep their weights, copied along the channel mappings where the child is
    wider (Net2WiderNet); appended blocks start as the identity (`Morph.stages` says how) and
    keep a fresh initialisation elsewhere, so they can learn.

    Args:
        parent: the trained architecture.
        parent_state: `build_model(parent).state_dict()`, trained.
        child: the architecture to grow into.
        seed: picks which channels the extra ones copy, and the fresh weights of new blocks.

    Returns:
        A full state_dict of `build_model(child)` (loads with `strict=True`), on the device
        and in the floating dtype of `parent_state`.

    Raises:
        ValueError: the pair is not a morph (the message says why), or `parent_state` is not a
            state_dict of `build_model(parent)`.
    """
    import torch

    from search_spaces.builder import build_model

    morph = check_morph(parent, child)
    _check_parent_state(parent, parent_state)
    like = next((t for t in parent_state.values() if t.is_floating_point()), None)
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(child)
    fresh = model.state_dict()
    maps = channel_maps(morph, seed)
    layout = dict(morph.layout)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    state: dict[str, torch.Tensor] = {}
    for key, value in parent_state.items():
        # A copy, so that training the parent on afterwards leaves the child's start alone.
        state[key] = _transfer(key, value.detach().clone(), layout.get(key, ()), maps)
    for key, how in morph.virtual:
        roles = layout.get(key, ())
        shape = [
            d if role is None else maps[role[1]].parent for d, role in
            zip(fresh[key].shape, roles + (None,) * (fresh[key].dim() - len(roles)), strict=True)
        ]
        value = _value(how, cast(torch.empty(shape, dtype=fresh[key].dtype)), _eps(model, key))
        state[key] = _transfer(key, value, roles, maps)
    news = tuple(f"{prefix}." for prefix in morph.new_blocks)
    for key, value in fresh.items():
        if key in state:
            continue
        if not key.startswith(news):
            raise RuntimeError(f"morph plan missed `{key}`: neither in the parent nor in a new "
                               "block")
        state[key] = cast(value.clone())
    for key, how in morph.starts:
        state[key] = _value(how, cast(fresh[key]), _eps(model, key))
    for key, value in state.items():
        if key not in fresh or value.shape != fresh[key].shape:
            expected = tuple(fresh[key].shape) if key in fresh else "no such tensor"
            raise RuntimeError(f"morph produced `{key}` of shape {tuple(value.shape)}; the "
                               f"child has {expected}")
    return {key: state[key] for key in fresh}


def _check_parent_state(parent: ArchitectureSpec, state: Mapping[str, torch.Tensor]) -> None:
    import torch

    from search_spaces.builder import build_model

    with torch.device("meta"):
        expected = build_model(parent).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what} {', '.join(f'`{k}`' for k in keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("wrong shape", wrong)) if keys]
        raise ValueError(f"`parent_state` got a state_dict that does not fit the parent spec "
                         f"({'; '.join(parts)}); allowed: build_model(parent).state_dict()")


def _eps(model: torch.nn.Module, key: str) -> float:
    module = model.get_submodule(key.rsplit(".", 1)[0])
    return float(getattr(module, "eps", 0.0))


def _value(how: str, like: torch.Tensor, eps: float) -> torch.Tensor:
    """A start value: `zero`, `one`, `identity` (a conv passing channel c to channel c) or
    `bn_scale` (the BN weight sqrt(1 + eps) that undoes its own division at var 1)."""
    import torch

    if how == "zero":
        return torch.zeros_like(like)
    if how == "one":
        return torch.ones_like(like)
    if how == "identity":
        return torch.nn.init.dirac_(torch.empty_like(like))
    if how == "bn_scale":
        return torch.full_like(like, math.sqrt(1.0 + eps))
    raise ValueError(f"`how` got {how!r}; allowed: zero | one | identity | bn_scale")


def _along(factor: list[float], t: torch.Tensor, dim: int) -> torch.Tensor:
    """`factor` as a tensor that broadcasts along dimension `dim` of `t`."""
    import torch

    shape = [1] * t.dim()
    shape[dim] = len(factor)
    return torch.tensor(factor, dtype=torch.float64).to(t).reshape(shape)


def _transfer(key: str, t: torch.Tensor, roles: tuple[Role, ...],
              maps: dict[str, ChannelMap]) -> torch.Tensor:
    """Copy one parent tensor along the channel mappings of its dimensions (Net2WiderNet)."""
    import torch

    for dim, role in enumerate(roles):
        if role is None:
            continue
        kind, name = role
        m = maps[name]
        if m.identity:
            continue
        size = {"group_in": m.parent // m.groups, "qkv": 3 * m.parent}.get(kind, m.parent)
        if t.shape[dim] != size:
            raise RuntimeError(f"morph plan says `{key}` dim {dim} has the {size} channels of "
                               f"`{name}`; it has {t.shape[dim]}")
        if kind == "out":
            t = t.index_select(dim, torch.tensor(m.source, device=t.device))
        elif kind == "in":
            counts = m.counts
            t = t.index_select(dim, torch.tensor(m.source, device=t.device))
            t = t * _along([1.0 / counts[p] for p in m.source], t, dim)
        elif kind == "group_in":
            counts = m.within_counts
            t = t.index_select(dim, torch.tensor(m.within, device=t.device))
            t = t * _along([1.0 / counts[p] for p in m.within], t, dim)
        elif kind == "qkv":
            t = _qkv(t, dim, m)
        else:
            raise RuntimeError(f"morph plan gives `{key}` an unknown role {kind!r}")
    return t


def _qkv(t: torch.Tensor, dim: int, m: ChannelMap) -> torch.Tensor:
    """A transformer's q, k and v rows, widened inside each head.

    Copies of a head's channels add up in q.k, so k's copies are divided by their count;
    attention divides by sqrt(head width), which grows, so q is multiplied by
    sqrt(child head width / parent head width). v is copied as it is (the projection after it
    divides, as any consumer does).
    """
    import torch

    parts = t.unflatten(dim, (3, m.parent))
    parts = parts.index_select(dim + 1, torch.tensor(m.source, device=t.device))
    counts = m.counts
    q = [math.sqrt(m.child / m.parent)] * m.child
    k = [1.0 / counts[p] for p in m.source]
    factor = torch.tensor([q, k, [1.0] * m.child], dtype=torch.float64).to(t)
    shape = [1] * parts.dim()
    shape[dim], shape[dim + 1] = 3, m.child
    return (parts * factor.reshape(shape)).flatten(dim, dim + 1)
