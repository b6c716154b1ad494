"""Declarative search spaces: YAML files that say which choices exist, and their Optuna labels.

A space file (packaged preset or user file) looks like::

    name: skip-ablation
    description: One line for `nas spaces`.
    stem: cifar               # a scalar fixes a value ...
    stem_width: [16, 32]      # ... a list is a categorical choice (label `stem_width`) ...
    shared:                   # sampled once, used by every stage (labels `depth`, `skip`)
      depth: {low: 1, high: 9, step: 2}   # ... an integer range (suggest_int)
      skip: [identity, none]
    stages:                   # per-stage choices (labels `stage1.width`, `stage2.block`, ...)
      - {stride: 1, width: [8, 16]}
      - {stride: 2, width: [16, 32], block: [basic, bottleneck], groups: [1, 2]}
    constraints: {max_params: 300000, max_flops: null}
    train: {optimizer: adamw, lr: 0.003}   # recipe defaults for this family (flags win)

Top-level choices: `stem`, `stem_width`, `preact`, `zero_init_residual`, `se_ratio`,
`num_stages` (a prefix of `stages` is used), `patch_size`, `layer_scale`, `drop_path`,
`pos_embed`, `pool`, `se_position`. Stage fields: those of `StageSpec`. Block-specific fields are asked only
of stages whose sampled block reads them (`BLOCK_FIELDS`: `expansion` of bottleneck, dense,
convnext and transformer blocks; `groups` and `width_per_group` of bottlenecks; `compression`
of dense blocks; `heads` of transformers), so `block: [basic, dense, transformer]` mixes
families in one space. Only choices with more than one value become Optuna parameters.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from search_spaces.spec import (
    BLOCK_FIELDS,
    BLOCK_TYPES,
    POOL_TYPES,
    SE_POSITIONS,
    SKIP_TYPES,
    STEM_TYPES,
    ArchitectureSpec,
    StageSpec,
)

if TYPE_CHECKING:
    import optuna

# Fields only some blocks read; each is asked only of stages whose block reads it.
CONDITIONAL_FIELDS = ("expansion", "groups", "width_per_group", "compression", "heads")
# Order in which a stage's fields are asked (block-specific fields last).
STAGE_ORDER = ("block", "depth", "width", "stride", "skip", *CONDITIONAL_FIELDS)
GLOBAL_ORDER = (
    "stem",
    "stem_width",
    "preact",
    "zero_init_residual",
    "se_ratio",
    "num_stages",
    "patch_size",
    "layer_scale",
    "drop_path",
    "pos_embed",
    "pool",
    "se_position",
)
TOP_KEYS = ("name", "description", "constraints", "train", "shared", "stages", *GLOBAL_ORDER)
CONSTRAINT_KEYS = ("max_params", "max_flops")
RANGE_KEYS = ("low", "high", "step")
MAX_RANGE_VALUES = 4096
# Enumerations done at load time to prove every sample builds; past this we trust suggest().
MAX_CHECKED_COMBINATIONS = 100_000


class SpaceError(ValueError):
    """A search space file (or dict) is invalid; the message names the file, key and reason."""


class _Mismatch(Exception):
    """Internal: a spec value is not in the space."""


# -- value kinds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    """What one field accepts: a test, its text for error messages, and a normaliser."""

    allowed: str
    test: Callable[[Any], bool]
    integer: bool = False
    normalise: Callable[[Any], Any] = lambda v: v


def _is_int(v: Any, minimum: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(choices: tuple) -> _Kind:
    return _Kind(
        " | ".join(str(c) for c in choices), lambda v: v in choices and not isinstance(v, bool)
    )


_POSITIVE_INT = _Kind("an integer >= 1", _is_int, integer=True)
_BOOL = _Kind("true | false", lambda v: isinstance(v, bool))

STAGE_KINDS: dict[str, _Kind] = {
    "depth": _POSITIVE_INT,
    "width": _POSITIVE_INT,
    "stride": _Kind("1 | 2", lambda v: v in (1, 2) and not isinstance(v, bool), integer=True),
    "block": _one_of(BLOCK_TYPES),
    "expansion": _POSITIVE_INT,
    "groups": _POSITIVE_INT,
    "width_per_group": _POSITIVE_INT,
    "skip": _one_of(SKIP_TYPES),
    "heads": _POSITIVE_INT,
    "compression": _Kind(
        "a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1, normalise=float
    ),
}
GLOBAL_KINDS: dict[str, _Kind] = {
    "stem": _one_of(STEM_TYPES),
    "stem_width": _POSITIVE_INT,
    "preact": _BOOL,
    "zero_init_residual": _BOOL,
    "se_ratio": _Kind(
        "a number in [0, 1) (0 = off)", lambda v: _is_number(v) and 0 <= v < 1, normalise=float
    ),
    "num_stages": _POSITIVE_INT,
    "patch_size": _POSITIVE_INT,
    "layer_scale": _Kind("a number >= 0 (0 = off)", lambda v: _is_number(v) and v >= 0, normalise=float),
    "drop_path": _Kind(
        "a number in [0, 1) (0 = off)", lambda v: _is_number(v) and 0 <= v < 1, normalise=float
    ),
    "pos_embed": _Kind("an integer >= 0 (0 = none)", lambda v: _is_int(v, 0), integer=True),
    "pool": _one_of(POOL_TYPES),
    "se_position": _one_of(SE_POSITIONS),
}
_STAGE_DEFAULTS = {f.name: f.default for f in fields(StageSpec) if f.name not in ("depth", "width")}
_GLOBAL_DEFAULTS = {f.name: f.default for f in fields(ArchitectureSpec) if f.name in GLOBAL_KINDS}


# -- one choice ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """The values one field may take: fixed, a categorical list, or an integer range."""

    values: tuple[Any, ...]
    low: int | None = None
    high: int | None = None
    step: int = 1

    @property
    def fixed(self) -> bool:
        return len(self.values) == 1

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def contains(self, value: Any) -> bool:
        # `True == 1` in Python: a bool only matches a bool.
        return any(
            value == v and isinstance(value, bool) == isinstance(v, bool) for v in self.values
        )

    def suggest(self, trial: optuna.trial.BaseTrial, label: str) -> Any:
        if self.is_range:
            return trial.suggest_int(label, self.low, self.high, step=self.step)
        return trial.suggest_categorical(label, list(self.values))

    def to_data(self) -> Any:
        if self.is_range:
            return {"low": self.low, "high": self.high, "step": self.step}
        return self.values[0] if self.fixed else list(self.values)


# -- the space -----------------------------------------------------------------------------
class SearchSpace:
    """A validated search space: which architectures exist, and how Optuna picks one.

    Build with `load_space(name_or_path)` or `SearchSpace.from_dict(data, source=...)`.
    """

    def __init__(
        self,
        *,
        name: str,
        description: str,
        globals_: dict[str, Choice],
        shared: dict[str, Choice],
        stages: list[dict[str, Choice]],
        constraints: dict[str, int | None],
        source: str,
        train: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.constraints = constraints
        # Recipe defaults the family trains best with (ConvNeXt and transformers: AdamW);
        # checked by `workers.TrainConfig` where the search builds its recipe.
        self.train = dict(train or {})
        self.source = source
        self._globals = globals_
        self._shared = shared
        self._stages = stages

    def __repr__(self) -> str:
        return f"SearchSpace(name={self.name!r}, source={self.source!r})"

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: Any, *, source: str = "<dict>", default_name: str | None = None
    ) -> SearchSpace:
        """Validate the content of a space file.

        Args:
            data: the parsed YAML (a mapping).
            source: where it came from, for error messages (a file path).
            default_name: the name when `data` has none (the file's stem).

        Raises:
            SpaceError: naming `source`, the key and the reason.
        """
        return _Parser(source).parse(data, default_name)

    def to_dict(self) -> dict[str, Any]:
        """The validated content, JSON-ready; `from_dict(to_dict())` gives the same space."""
        data: dict[str, Any] = {"name": self.name, "description": self.description}
        for key in GLOBAL_ORDER:
            data[key] = self._globals[key].to_data()
        data["shared"] = {k: c.to_data() for k, c in self._shared.items()}
        data["stages"] = [{k: c.to_data() for k, c in stage.items()} for stage in self._stages]
        data["constraints"] = dict(self.constraints)
        if self.train:
            data["train"] = dict(self.train)
        return data

    # -- sampling --------------------------------------------------------------------------
    def _sample(self, pick: Callable[[str, Choice], Any]) -> tuple[dict[str, Any], list[dict]]:
        """Walk the space in a fixed order, asking `pick(label, choice)` for every varied field.

        Fixed fields never reach `pick`. Returns the global values and one dict per stage.
        """

        def value(label: str, choice: Choice) -> Any:
            return choice.values[0] if choice.fixed else pick(label, choice)

        glob = {key: value(key, self._globals[key]) for key in GLOBAL_ORDER}
        shared = {
            key: value(key, c) for key, c in self._shared.items() if key not in CONDITIONAL_FIELDS
        }
        stages = []
        for i in range(glob["num_stages"]):
            stage = {}
            for key in STAGE_ORDER:
                if key in CONDITIONAL_FIELDS:
                    continue
                if key == "skip" and stage["block"] == "dense":
                    stage[key] = "dense"  # a dense block always concatenates: nothing to ask
                    continue
                stage[key] = (
                    shared[key]
                    if key in shared
                    else value(f"stage{i + 1}.{key}", self._stages[i][key])
                )
            for key in BLOCK_FIELDS[stage["block"]]:
                if key not in self._shared:
                    stage[key] = value(f"stage{i + 1}.{key}", self._stages[i][key])
            stages.append(stage)
        # A shared block-specific field is asked once, if any sampled stage reads it.
        for key in CONDITIONAL_FIELDS:
            readers = [s for s in stages if key in BLOCK_FIELDS[s["block"]]]
            if key in self._shared and readers:
                picked = value(key, self._shared[key])
                for stage in readers:
                    stage[key] = picked
        return glob, stages

    def suggest(
        self, trial: optuna.trial.BaseTrial, *, in_channels: int, num_classes: int
    ) -> ArchitectureSpec:
        """Ask `trial` for every varied choice (stable labels) and return the spec.

        Does no real work: no model is built. Labels: the top-level fields by their name
        (`stem`, `stem_width`, `preact`, ..., `num_stages`), shared stage fields by their name
        (`depth`, `skip`, ...), per-stage fields as `stage<i>.<field>` (1-based).

        Args:
            trial: an Optuna trial (or `optuna.trial.FixedTrial`).
            in_channels: channels of the dataset's images.
            num_classes: classes of the dataset.

        Raises:
            SpaceError: the sampled combination is not a valid architecture (a space that
                passed loading only gets here for user spaces too large to check at load).
        """
        glob, stages = self._sample(lambda label, choice: choice.suggest(trial, label))
        try:
            return ArchitectureSpec(
                stages=tuple(StageSpec(**s) for s in stages),
                stem=glob["stem"],
                stem_width=glob["stem_width"],
                in_channels=in_channels,
                num_classes=num_classes,
                preact=glob["preact"],
                zero_init_residual=glob["zero_init_residual"],
                se_ratio=glob["se_ratio"],
                patch_size=glob["patch_size"],
                layer_scale=glob["layer_scale"],
                drop_path=glob["drop_path"],
                pos_embed=glob["pos_embed"],
                pool=glob["pool"],
                se_position=glob["se_position"],
            )
        except ValueError as exc:
            raise SpaceError(f"{self.source}: sampled an invalid architecture: {exc}") from exc

    def params_for(self, spec: ArchitectureSpec) -> dict[str, Any] | None:
        """The trial params for which `suggest` returns `spec` (same `arch_id`), or None.

        Use with `study.enqueue_trial(params)` to seed a study with a known architecture.

        Args:
            spec: the architecture to find in this space.
        """
        params: dict[str, Any] = {}

        def target(label: str) -> Any:
            if label in GLOBAL_KINDS:
                return len(spec.stages) if label == "num_stages" else getattr(spec, label)
            if label.startswith("stage"):
                index, key = label[len("stage") :].split(".", 1)
                stage = spec.stages[int(index) - 1]
                return getattr(stage, key)
            # A shared field: the first stage that reads it speaks for all (checked below);
            # a dense stage reads no skip. None (no reader): any allowed value will do.
            readers = [
                s
                for s in spec.stages
                if (label not in CONDITIONAL_FIELDS or label in BLOCK_FIELDS[s.block])
                and not (label == "skip" and s.block == "dense")
            ]
            return getattr(readers[0], label) if readers else None

        def pick(label: str, choice: Choice) -> Any:
            try:
                wanted = target(label)
            except (IndexError, AttributeError):
                raise _Mismatch(label) from None
            # A value the network ignores (e.g. `stem_width` of a `none` stem) may be outside
            # the space: take any allowed value and let the arch_id comparison decide.
            params[label] = wanted if choice.contains(wanted) else choice.values[0]
            return params[label]

        try:
            self._sample(pick)
        except _Mismatch:
            return None
        from optuna.trial import FixedTrial

        try:
            again = self.suggest(
                FixedTrial(params), in_channels=spec.in_channels, num_classes=spec.num_classes
            )
        except (SpaceError, ValueError):
            return None
        return params if again.arch_id == spec.arch_id else None

    def _structural_labels(self) -> dict[str, Choice]:
        """Varied choices that decide which other labels are asked."""
        labels: dict[str, Choice] = {}
        if not self._globals["num_stages"].fixed:
            labels["num_stages"] = self._globals["num_stages"]
        if "block" in self._shared:
            if not self._shared["block"].fixed:
                labels["block"] = self._shared["block"]
        else:
            for i, stage in enumerate(self._stages):
                if not stage["block"].fixed:
                    labels[f"stage{i + 1}.block"] = stage["block"]
        return labels

    def _label_sets(self) -> list[dict[str, Choice]]:
        """The (label -> choice) mapping asked under each structural combination."""
        structural = self._structural_labels()
        result = []
        for combo in itertools.product(*(c.values for c in structural.values())):
            fixed = dict(zip(structural, combo, strict=True))
            asked: dict[str, Choice] = {}

            def pick(label: str, choice: Choice, fixed: dict = fixed, asked: dict = asked) -> Any:
                asked[label] = choice
                return fixed.get(label, choice.values[0])

            self._sample(pick)
            result.append(asked)
        return result

    def labels(self) -> list[str]:
        """Every Optuna parameter label this space may ask, in asking order."""
        seen: dict[str, None] = {}
        for asked in self._label_sets():
            seen.update(dict.fromkeys(asked))
        return list(seen)

    def grid(self) -> dict[str, list[Any]] | None:
        """Value lists for `optuna.samplers.GridSampler`, or None if some label is conditional."""
        sets = self._label_sets()
        if any(set(s) != set(sets[0]) for s in sets):
            return None
        return {label: list(choice.values) for label, choice in sets[0].items()}


# -- parsing -------------------------------------------------------------------------------
class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, allowed: str) -> SpaceError:
        return SpaceError(
            f"{self.source}: `{key or '(top level)'}` got {value!r}; allowed: {allowed}"
        )

    def mapping(self, key: str, value: Any, allowed_keys: tuple[str, ...] | dict) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, value, "a mapping")
        for k in value:
            if k not in allowed_keys:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(
                    where, value[k], f"known keys {', '.join(allowed_keys)} (unknown key)"
                )
        return value

    def choice(self, key: str, raw: Any, kind: _Kind) -> Choice:
        if isinstance(raw, dict):
            if not kind.integer:
                raise self.fail(key, raw, f"{kind.allowed}, or a list of them")
            self.mapping(key, raw, RANGE_KEYS)
            for k in ("low", "high"):
                if k not in raw:
                    raise self.fail(f"{key}.{k}", None, "an integer (a range needs low and high)")
            low, high, step = raw["low"], raw["high"], raw.get("step", 1)
            for k, v in (("low", low), ("high", high)):
                if not kind.test(v):
                    raise self.fail(f"{key}.{k}", v, kind.allowed)
            if not _is_int(step):
                raise self.fail(f"{key}.step", step, "an integer >= 1")
            if high < low or (high - low) % step:
                raise self.fail(
                    f"{key}.high", high, f">= low ({low}) and reachable from it in steps of {step}"
                )
            count = (high - low) // step + 1
            if count > MAX_RANGE_VALUES:
                raise self.fail(key, raw, f"a range of at most {MAX_RANGE_VALUES} values")
            values = tuple(range(low, high + 1, step))
            if not all(kind.test(v) for v in values):
                bad = next(v for v in values if not kind.test(v))
                raise self.fail(key, bad, kind.allowed)
            return Choice(values, low, high, step) if count > 1 else Choice(values)
        if isinstance(raw, list):
            if not raw:
                raise self.fail(key, raw, f"a non-empty list of {kind.allowed} (empty choice list)")
            values = []
            for i, v in enumerate(raw):
                if not kind.test(v):
                    raise self.fail(f"{key}[{i}]", v, kind.allowed)
                v = kind.normalise(v)
                if v in values:
                    raise self.fail(f"{key}[{i}]", v, "each value once (duplicate)")
                values.append(v)
            return Choice(tuple(values))
        if not kind.test(raw):
            raise self.fail(
                key,
                raw,
                f"{kind.allowed}, a list of them"
                + (", or {low, high, step}" if kind.integer else ""),
            )
        return Choice((kind.normalise(raw),))

    def parse(self, data: Any, default_name: str | None) -> SearchSpace:
        data = self.mapping("", data, TOP_KEYS)
        name = data.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise self.fail("name", name, "a non-empty string")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", description, "a one-line string")
        description = " ".join(description.split())

        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise self.fail("stages", raw_stages, "a non-empty list of stage mappings")

        raw_shared = self.mapping("shared", data.get("shared") or {}, tuple(STAGE_KINDS))
        shared = {k: self.choice(f"shared.{k}", v, STAGE_KINDS[k]) for k, v in raw_shared.items()}

        stages = []
        for i, raw in enumerate(raw_stages):
            key = f"stages[{i}]"
            raw = self.mapping(key, raw, tuple(STAGE_KINDS))
            stage: dict[str, Choice] = {}
            for field_name, kind in STAGE_KINDS.items():
                if field_name in raw and field_name in shared:
                    raise self.fail(
                        f"{key}.{field_name}",
                        raw[field_name],
                        f"no value here: `shared.{field_name}` sets it for every stage",
                    )
                if field_name in shared:
                    continue
                if field_name in raw:
                    stage[field_name] = self.choice(f"{key}.{field_name}", raw[field_name], kind)
                elif field_name in _STAGE_DEFAULTS:
                    stage[field_name] = Choice((_STAGE_DEFAULTS[field_name],))
                else:
                    raise self.fail(
                        f"{key}.{field_name}",
                        None,
                        f"{kind.allowed} (required here or in `shared`)",
                    )
            blocks = (shared.get("block") or stage["block"]).values
            if blocks == ("dense",) and "skip" in stage and not stage["skip"].fixed:
                raise self.fail(
                    f"{key}.skip",
                    raw["skip"],
                    "a choice only where the stage's `block` can be other than dense (a dense "
                    "block always concatenates)",
                )
            for field_name in CONDITIONAL_FIELDS:
                varied = field_name in stage and not stage[field_name].fixed
                readers = [b for b in BLOCK_TYPES if field_name in BLOCK_FIELDS[b]]
                if varied and not any(b in readers for b in blocks):
                    raise self.fail(
                        f"{key}.{field_name}",
                        raw[field_name],
                        "a choice only where the stage's `block` can be "
                        + " or ".join(readers),
                    )
            stages.append(stage)

        globals_: dict[str, Choice] = {}
        for key, kind in GLOBAL_KINDS.items():
            if key in data:
                globals_[key] = self.choice(key, data[key], kind)
            elif key == "num_stages":
                globals_[key] = Choice((len(stages),))
            else:
                globals_[key] = Choice((_GLOBAL_DEFAULTS[key],))
        for n in globals_["num_stages"].values:
            if n > len(stages):
                raise self.fail("num_stages", n, f"at most the {len(stages)} stages listed")

        constraints = self.constraints(data.get("constraints") or {})
        train = data.get("train") or {}
        if not isinstance(train, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))
            for k, v in train.items()
        ):
            raise self.fail("train", train, "a mapping of recipe fields to plain values")
        space = SearchSpace(
            name=name.strip(),
            description=description,
            globals_=globals_,
            shared=shared,
            stages=stages,
            constraints=constraints,
            source=self.source,
            train=train,
        )
        self.check_stages(space)
        self.check_channels(space)
        return space

    def constraints(self, raw: Any) -> dict[str, int | None]:
        raw = self.mapping("constraints", raw, CONSTRAINT_KEYS)
        result: dict[str, int | None] = {}
        for key in CONSTRAINT_KEYS:
            value = raw.get(key)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if value is not None and not _is_int(value):
                raise self.fail(f"constraints.{key}", value, "an integer >= 1 or null")
            result[key] = value
        return result

    # -- whole-space checks: every sample must be a valid architecture ---------------------
    def stage_choices(self, space: SearchSpace, i: int) -> dict[str, Choice]:
        return {**space._stages[i], **space._shared}

    def check_stages(self, space: SearchSpace) -> None:
        """Every per-stage combination of block, width, skip and the block's own fields is a
        valid StageSpec (e.g. bottleneck groups divide the inner width, heads divide a
        transformer's width, convnext and transformer blocks get a skip they take)."""
        for i in range(len(space._stages)):
            c = self.stage_choices(space, i)
            for block in c["block"].values:
                keys = ("width", "skip", *BLOCK_FIELDS[block])
                if math.prod(len(c[k].values) for k in keys) > MAX_CHECKED_COMBINATIONS:
                    continue
                for combo in itertools.product(*(c[k].values for k in keys)):
                    values = dict(zip(keys, combo, strict=True))
                    try:
                        StageSpec(depth=1, block=block, **values)
                    except ValueError as exc:
                        shown = ", ".join(f"{k}={v}" for k, v in values.items())
                        raise SpaceError(
                            f"{self.source}: `stages[{i}]` can sample an invalid {block} "
                            f"stage ({shown}): {exc}"
                        ) from None
        if "token" in space._globals["pool"].values:
            for n in space._globals["num_stages"].values:
                blocks = self.stage_choices(space, n - 1)["block"].values
                if blocks != ("transformer",):
                    raise self.fail(
                        "pool",
                        "token",
                        f"avg, or token where the last stage is always a transformer "
                        f"(stages[{n - 1}] can be {', '.join(blocks)})",
                    )

    def check_channels(self, space: SearchSpace) -> None:
        """No sample puts `zero_pad` where channels shrink (it cannot remove channels).

        Propagates the set of reachable channel counts stage by stage, for each combination
        of the values that every stage shares (stem width, shared fields).
        """
        shared_keys = [
            k
            for k in ("width", "block", "expansion", "skip", "depth", "stride", "compression")
            if k in space._shared
        ]
        g = space._globals
        outer = list(
            itertools.product(
                g["stem"].values,
                g["stem_width"].values,
                *(space._shared[k].values for k in shared_keys),
            )
        )
        if len(outer) > MAX_CHECKED_COMBINATIONS:
            return
        for stem, stem_width, *shared_values in outer:
            shared = dict(zip(shared_keys, shared_values, strict=True))
            reachable: set[int | None] = {None if stem == "none" else stem_width}
            for i in range(len(space._stages)):
                c = {k: Choice((v,)) for k, v in shared.items()}
                c = {**space._stages[i], **c}
                outs: set[int | None] = set()
                combos = itertools.product(
                    c["width"].values, c["block"].values, c["expansion"].values, c["skip"].values
                )
                for width, block, expansion, skip in combos:
                    branch = width * (expansion if block == "bottleneck" else 1)
                    resnet = block in ("basic", "bottleneck")
                    for channels in reachable:
                        if (
                            resnet
                            and skip == "zero_pad"
                            and channels is not None
                            and branch < channels
                        ):
                            raise SpaceError(
                                f"{self.source}: `stages[{i}].skip` can be 'zero_pad' where "
                                f"channels shrink ({channels} -> {branch}); allowed: zero_pad "
                                "only where channels never shrink (make widths non-decreasing "
                                "or share the skip/block choice across stages)"
                            )
                        outs.update(self._outs(c, block, skip, branch, channels))
                    if len(outs) * len(reachable) > MAX_CHECKED_COMBINATIONS:
                        return
                reachable = outs

    @staticmethod
    def _outs(
        c: dict[str, Choice], block: str, skip: str, branch: int, channels: int | None
    ) -> set[int | None]:
        """Channel counts a stage can hand on, entered with `channels` (None: unknown)."""
        if block == "dense":
            entered = {
                None if channels is None else (int(channels * r) if stride == 2 else channels)
                for stride in c["stride"].values
                for r in c["compression"].values
            }
        elif block in ("basic", "bottleneck") and skip == "dense":
            entered = {channels}
        else:
            return {branch}
        return {
            None if e is None else e + depth * branch for e in entered for depth in c["depth"].values
        }


# -- loading -------------------------------------------------------------------------------
_SAFE_TAG_PREFIX = "tag:yaml.org,2002:"
_SAFE_TAGS = {
    f"{_SAFE_TAG_PREFIX}{t}"
    for t in (
        "str",
        "int",
        "float",
        "bool",
        "null",
        "map",
        "seq",
        "timestamp",
        "binary",
        "set",
        "omap",
        "pairs",
        "merge",
        "value",
    )
}


def _find_unsafe_tag(node: yaml.Node, path: str) -> tuple[str, str] | None:
    if node.tag not in _SAFE_TAGS:
        return path or "<top>", node.tag
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            found = _find_unsafe_tag(key_node, path) or _find_unsafe_tag(
                value_node, f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _find_unsafe_tag(item, f"{path}[{i}]")
            if found:
                return found
    return None


# libyaml's safe loader when PyYAML was built with it: the same documents, ~5x faster
# (a search loads its space before its first trial).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load`, with errors that name the file and, for foreign tags, the key."""
    loader = _SAFE_LOADER(text)
    try:
        node = loader.get_single_node()  # nodes only: constructs nothing yet
        if node is None:
            return None
        found = _find_unsafe_tag(node, "")
        if found:
            key, tag = found
            raise SpaceError(
                f"{source}: `{key}` got the YAML tag {tag!r}; allowed: plain YAML values "
                "(Python object tags are never loaded)"
            )
        return loader.construct_document(node)  # what `safe_load` does, from the same parse
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _preset_files() -> dict[str, Any]:
    folder = resources.files("search_spaces.presets")
    return {
        entry.name.rsplit(".", 1)[0]: entry
        for entry in folder.iterdir()
        if entry.name.endswith((".yaml", ".yml"))
    }


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A packaged preset by name (`resnet`, ...) or a user's YAML file by path.

    Args:
        name_or_path: a preset name, or a path (anything with a `.yaml`/`.yml` suffix or a
            path separator, or an existing file).

    Raises:
        SpaceError: unknown preset (the message lists them), unreadable or invalid file (the
            message names the file, the key and the reason).
    """
    text_name = os.fspath(name_or_path)
    presets = _preset_files()
    if text_name in presets and os.path.sep not in text_name:
        entry = presets[text_name]
        return _load_text(entry.read_text(encoding="utf-8"), str(entry), text_name)
    path = Path(text_name)
    looks_like_path = path.suffix in (".yaml", ".yml") or os.path.sep in text_name or path.is_file()
    if not looks_like_path:
        raise SpaceError(
            f"`space` got {text_name!r}; allowed: a preset ({', '.join(sorted(presets))}) "
            "or a path to a YAML file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the space file: {exc.strerror or exc}") from None
    return _load_text(text, str(path), path.stem)


def _load_text(text: str, source: str, default_name: str) -> SearchSpace:
    data = _parse_yaml(text, source)
    return SearchSpace.from_dict(data, source=source, default_name=default_name)


def list_spaces() -> list[tuple[str, str]]:
    """(name, one-line description) of every packaged preset, sorted by name."""
    return [(name, load_space(name).description) for name in sorted(_preset_files())]
