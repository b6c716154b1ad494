"""The plain-data description of a residual network: what it is, not how it is trained.

Standard library only: the store (`db`) imports this module without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

STEM_TYPES = ("imagenet", "cifar", "none")
BLOCK_TYPES = ("basic", "bottleneck")
SKIP_TYPES = ("identity", "zero_pad", "projection", "gated", "dense", "none")
SPEC_VERSION = 1

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


@dataclass(frozen=True)
class StageSpec:
    """One stage: `depth` blocks of the same kind, the first one carrying the `stride`.

    Args:
        depth: number of blocks (0 is not allowed; drop the stage instead).
        width: the block's base width ("planes"). A basic block outputs `width` channels, a
            bottleneck block `width * expansion`, a `dense` stage grows by that much per block.
        stride: stride of the first block (1 or 2).
        block: `basic` (two 3x3 convs) or `bottleneck` (1x1, 3x3 grouped, 1x1).
        expansion: bottleneck output multiplier (4 in ResNet-50); ignored for basic blocks.
        groups: groups of the bottleneck 3x3 conv (32 in ResNeXt-50 32x4d).
        width_per_group: base width per group; inner width = int(width * wpg / 64) * groups.
        skip: how the block's input reaches its output (see `SKIP_TYPES`).
    """

    depth: int
    width: int
    stride: int = 1
    block: str = "basic"
    expansion: int = DEFAULT_EXPANSION
    groups: int = DEFAULT_GROUPS
    width_per_group: int = DEFAULT_WIDTH_PER_GROUP
    skip: str = "identity"

    def __post_init__(self) -> None:
        _check_int("depth", self.depth, 1)
        _check_int("width", self.width, 1)
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise _fail("stride", self.stride, "1 | 2")
        _check_choice("block", self.block, BLOCK_TYPES)
        _check_int("expansion", self.expansion, 1)
        _check_int("groups", self.groups, 1)
        _check_int("width_per_group", self.width_per_group, 1)
        _check_choice("skip", self.skip, SKIP_TYPES)
        if self.block == "bottleneck" and self.inner_width % self.groups:
            raise _fail(
                "groups", self.groups, f"a divisor of the inner width {self.inner_width}"
            )
        if self.block == "bottleneck" and self.inner_width < 1:
            raise _fail("width_per_group", self.width_per_group, "a value giving inner width >= 1")

    @property
    def inner_width(self) -> int:
        """Channels inside the block (the 3x3 conv of a bottleneck)."""
        if self.block == "basic":
            return self.width
        return int(self.width * (self.width_per_group / 64.0)) * self.groups

    @property
    def branch_out(self) -> int:
        """Channels the residual branch F(x) produces."""
        return self.width * (self.expansion if self.block == "bottleneck" else 1)

    def out_channels(self, in_channels: int) -> int:
        """Channels leaving the stage, given the channels entering it."""
        if self.skip == "dense":
            return in_channels + self.depth * self.branch_out
        return self.branch_out

    def changes_shape(self, in_channels: int) -> bool:
        """Whether any block of the stage changes the tensor shape (channels or resolution)."""
        return self.stride != 1 or (self.skip != "dense" and in_channels != self.branch_out)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpec:
        return cls(**known_fields(cls, data, "stage"))


@dataclass(frozen=True)
class ArchitectureSpec:
    """A whole residual network: stem, stages, head and options. Plain, JSON-ready data.

    Args:
        stages: the stages, input to output.
        stem: `imagenet` (7x7/2 conv + 3x3/2 max-pool), `cifar` (3x3/1 conv) or `none`.
        stem_width: output channels of the stem (ignored, = in_channels, for `none`).
        in_channels: channels of the input images.
        num_classes: outputs of the linear head.
        preact: pre-activation blocks (BN-ReLU-conv, He et al. 2016 "Identity Mappings").
        zero_init_residual: zero-initialise the last norm of each residual branch.
        se_ratio: squeeze-excitation reduction ratio on each branch (0 = off).
    """

    stages: tuple[StageSpec, ...]
    stem: str = "cifar"
    stem_width: int = 16
    in_channels: int = 3
    num_classes: int = 10
    preact: bool = False
    zero_init_residual: bool = False
    se_ratio: float = 0.0
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
        # Zero padding can add channels but never remove them (ResNet shortcut "A").
        channels = self.stem_out
        for i, stage in enumerate(stages):
            if stage.skip == "zero_pad" and stage.branch_out < channels:
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
        """Weighted layers on the longest path: stem conv + convs per block + head."""
        per_block = {"basic": 2, "bottleneck": 3}
        stem = 0 if self.stem == "none" else 1
        return stem + sum(s.depth * per_block[s.block] for s in self.stages) + 1

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
        - The zero-init flag only matters where there is a residual branch to add to
          (any skip but `none` and `dense`).
        - `name` is a label, not part of the network.
        """
        stages = []
        channels = self.stem_out
        any_additive = False
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
            if stage.skip == "zero_pad" and not stage.changes_shape(channels):
                entry["skip"] = "identity"
            if entry["skip"] in ("identity", "zero_pad", "projection", "gated"):
                any_additive = True
            stages.append(entry)
            channels = stage.out_channels(channels)
        return {
            "v": SPEC_VERSION,
            "stem": self.stem,
            "stem_width": None if self.stem == "none" else self.stem_width,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "preact": self.preact,
            "zero_init_residual": self.zero_init_residual and any_additive,
            "se_ratio": self.se_ratio,
            "stages": stages,
        }

    @property
    def arch_id(self) -> str:
        """Short sha256 of the canonical JSON: the same network gives the same id."""
        text = json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """One line, e.g. `cifar16 | 3x16 basic identity | 3x32/2 basic identity`."""
        parts = [f"{self.stem}{'' if self.stem == 'none' else self.stem_width}"]
        for s in self.stages:
            stride = f"/{s.stride}" if s.stride != 1 else ""
            block = s.block if s.block == "basic" else f"bottleneck(x{s.expansion},g{s.groups})"
            parts.append(f"{s.depth}x{s.width}{stride} {block} {s.skip}")
        return " | ".join(parts)


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
