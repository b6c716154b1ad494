"""The pydantic models of a search-space file, and its errors as one readable line each."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Strict,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from search_spaces.spec import (
    BLOCK_FIELDS,
    BLOCK_TYPES,
    CELL_EDGES,
    CELL_OPS,
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
GLOBAL_ORDER = ("stem", "stem_width", "preact", "zero_init_residual", "se_ratio", "num_stages",
                "patch_size", "layer_scale", "drop_path", "pos_embed", "pool", "se_position")
MAX_RANGE_VALUES = 4096
STAGE_DEFAULTS = {f.name: f.default for f in fields(StageSpec) if f.default is not MISSING}
GLOBAL_DEFAULTS = {f.name: f.default for f in fields(ArchitectureSpec) if f.name in GLOBAL_ORDER}
# Discriminator tags: which shape a choice took. They show in pydantic's error locations and
# are dropped from the keys of our messages (`stages[0].depth[1]`, not `...depth.<list>.1`).
FIXED, LIST, RANGE = "<fixed>", "<list>", "<range>"


class SpaceError(ValueError):
    """A search space file (or dict) is invalid; the message names the file, key and reason."""


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


# -- errors in our words -------------------------------------------------------------------
def did_you_mean(key: Any, allowed: Iterable[str]) -> str:
    """The hint 'did you mean `X`? ' for the allowed key nearest to `key`, or '' if none is."""
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`? " if close else ""


# What a YAML parser's problem usually means, in the words of the one who wrote the file.
_YAML_HINTS = (
    ("'\\t'", "YAML indents with spaces, never tabs"),
    ("a tab character", "YAML indents with spaces, never tabs"),  # libyaml's wording
    ("mapping values are not allowed", "a key indented deeper than the one above it, or a "
     "value with ': ' in it that needs quotes"),
    ("expected <block end>", "the keys of one mapping must line up"),
)
_TAG_PROBLEM = "could not determine a constructor for the tag "


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """`line L, column C: not valid YAML: <problem> (<hint>)`, 1-based, on one line.

    Args:
        exc: what PyYAML raised; one without a position (rare) gives its first line.
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not valid YAML: {first}"
    hints = [hint for needle, hint in _YAML_HINTS if needle in problem]
    if problem.startswith(_TAG_PROBLEM):  # a tag the safe loader does not construct
        tag = problem.removeprefix(_TAG_PROBLEM).replace("tag:yaml.org,2002:", "!!")
        problem = f"the tag {tag} is not allowed"
        hints.append("plain YAML values only; Python objects are never loaded")
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and (start.line, start.column) != (mark.line, mark.column):
        hints.append(f"{context} at line {start.line + 1}, column {start.column + 1}")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}{hint}"


def _error(
    loc: tuple[str | int, ...], value: Any, allowed: str, hint: str = ""
) -> InitErrorDetails:
    """One line error at `loc` (relative to the value being validated); `hint` goes first."""
    kind = PydanticCustomError("not_allowed", "{allowed}", {"allowed": allowed, "hint": hint})
    return {"type": kind, "loc": loc, "input": value}


def _refuse(errors: list[InitErrorDetails]) -> ValidationError:
    # Raised inside a validator, pydantic keeps these locations (under the validator's own).
    return ValidationError.from_exception_data("SpaceFile", errors)


def _allowed(text: str) -> WrapValidator:
    """Replace pydantic's wording for a leaf value with what the field allows."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("not_allowed", "{allowed}", {"allowed": text}) from None

    return WrapValidator(check)


# -- one choice: a value, a list of values, or {low, high, step} ----------------------------
@dataclass(frozen=True)
class Kind:
    """What one field accepts: the pydantic type of one value, and its text for messages."""

    allowed: str
    value: Any
    integer: bool = False  # also takes {low, high, step}


T = TypeVar("T")


class IntRange(BaseModel, Generic[T]):
    """`{low, high, step}`: low, low + step, ..., high (Optuna's `suggest_int`)."""

    model_config = ConfigDict(extra="forbid")

    low: T = Field(description="an integer (a range needs low and high)")
    high: T = Field(description="an integer (a range needs low and high)")
    step: Annotated[int, Strict(), Field(ge=1), _allowed("an integer >= 1")] = 1

    @model_validator(mode="after")
    def _reachable(self) -> IntRange:
        # Every kind with ranges is an interval: low and high valid means all values are.
        low, high, step = self.low, self.high, self.step
        if high < low or (high - low) % step:
            message = f">= low ({low}) and reachable from it in steps of {step}"
            raise _refuse([_error(("high",), high, message)])
        if (high - low) // step + 1 > MAX_RANGE_VALUES:
            message = f"a range of at most {MAX_RANGE_VALUES} values"
            raise _refuse([_error((), self.model_dump(), message)])
        return self


def _distinct(allowed: str) -> Callable[[list[Any]], list[Any]]:
    def check(values: list[Any]) -> list[Any]:
        if not values:
            raise _refuse([_error((), values, f"a non-empty list of {allowed} (empty choice list)")])
        for i, v in enumerate(values):
            if v in values[:i]:
                raise _refuse([_error((i,), v, "each value once (duplicate)")])
        return values

    return check


def _to_choice(raw: Any) -> Choice:
    if isinstance(raw, IntRange):
        values = tuple(range(raw.low, raw.high + 1, raw.step))
        return Choice(values, raw.low, raw.high, raw.step) if len(values) > 1 else Choice(values)
    return Choice(tuple(raw) if isinstance(raw, list) else (raw,))


def choice_of(kind: Kind) -> Any:
    """The pydantic type of a choice field of `kind`; it validates into a `Choice`.

    None (no shape) goes to the fixed-value branch and is refused there: a field given as
    `null` is a mistake, and the models use None only for "not in the file".
    """
    if kind.integer:
        fixed_text = f"{kind.allowed}, a list of them, or {{low, high, step}}"
    else:
        fixed_text = f"{kind.allowed}, or a list of them"
    one = Annotated[kind.value, _allowed(kind.allowed)]
    members = [
        Annotated[kind.value, _allowed(fixed_text), Tag(FIXED)],
        Annotated[list[one], AfterValidator(_distinct(kind.allowed)), Tag(LIST)],
    ]
    if kind.integer:
        members.append(Annotated[IntRange[one], Tag(RANGE)])

    def shape(raw: Any) -> str:
        if isinstance(raw, list):
            return LIST
        return RANGE if isinstance(raw, dict) and kind.integer else FIXED

    union = Union[tuple(members)]  # noqa: UP007 (a run-time tuple of members: no `|` form)
    return Annotated[
        union, Discriminator(shape), AfterValidator(_to_choice), Field(description=fixed_text)
    ]


def _one_of(names: tuple[str, ...]) -> Kind:
    return Kind(" | ".join(names), Literal[names])


POSITIVE = Kind("an integer >= 1", Annotated[int, Strict(), Field(ge=1)], integer=True)
BOOL = Kind("true | false", Annotated[bool, Strict()])
FRACTION = Kind("a number in [0, 1) (0 = off)", Annotated[float, Strict(), Field(ge=0, lt=1)])
STRIDE = Kind("1 | 2", Annotated[int, Strict(), Field(ge=1, le=2)], integer=True)
COMPRESSION = Kind("a number in (0, 1]", Annotated[float, Strict(), Field(gt=0, le=1)])
LAYER_SCALE = Kind("a number >= 0 (0 = off)", Annotated[float, Strict(), Field(ge=0)])
POS_EMBED = Kind("an integer >= 0 (0 = none)", Annotated[int, Strict(), Field(ge=0)], integer=True)


# -- the file ------------------------------------------------------------------------------
class StageChoices(BaseModel):
    """One entry of `stages`, or `shared`: choices of `StageSpec` fields (None: not given).

    Each annotation is a pydantic type made by `choice_of`; a given field becomes a `Choice`.
    """

    model_config = ConfigDict(extra="forbid")

    depth: choice_of(POSITIVE) = None
    width: choice_of(POSITIVE) = None
    stride: choice_of(STRIDE) = None
    block: choice_of(_one_of(BLOCK_TYPES)) = None
    expansion: choice_of(POSITIVE) = None
    groups: choice_of(POSITIVE) = None
    width_per_group: choice_of(POSITIVE) = None
    skip: choice_of(_one_of(SKIP_TYPES)) = None
    heads: choice_of(POSITIVE) = None
    compression: choice_of(COMPRESSION) = None

    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> StageChoices:
        # `shared` fields are asked in file order: a seeded study replays the same samples.
        stage = handler(data)
        if isinstance(data, dict):
            stage._order = tuple(k for k in data if k in cls.model_fields)
        return stage

    def given(self) -> dict[str, Choice]:
        """The fields the file sets, in its order."""
        return {key: getattr(self, key) for key in self._order}


def _whole(value: Any) -> Any:
    # YAML reads `2.0e+7` as a float: a whole one is the integer it means.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _every_edge(edges: dict[str, Choice]) -> dict[str, Choice]:
    """All 6 edges, none unknown; returned in `CELL_EDGES` order (the order they are asked)."""
    errors = [
        _error((edge,), None, f"{' | '.join(CELL_OPS)}, or a list of them (required: every "
               f"edge of the cell, {', '.join(CELL_EDGES)})")
        for edge in CELL_EDGES if edge not in edges
    ] + [
        _error((key,), edges[key].to_data(), f"an edge {' | '.join(CELL_EDGES)} (unknown key)",
               did_you_mean(key, CELL_EDGES))
        for key in edges if key not in CELL_EDGES
    ]
    if errors:
        raise _refuse(errors)
    return {edge: edges[edge] for edge in CELL_EDGES}


# `cell`: per edge of NAS-Bench-201's cell, the ops it may take (label: the edge's name).
CELL = Annotated[
    dict[Annotated[str, Strict()], choice_of(_one_of(CELL_OPS))] | None,
    AfterValidator(lambda edges: None if edges is None else _every_edge(edges)),
    Field(description=f"a mapping of the edges {', '.join(CELL_EDGES)} to their op choices"),
]


_LIMIT = Annotated[
    Annotated[int, Strict(), Field(ge=1)] | None,
    BeforeValidator(_whole),
    _allowed("an integer >= 1 or null"),
]
_PLAIN = Annotated[str, Strict()] | Annotated[int, Strict()] | Annotated[float, Strict()]


class Constraints(BaseModel):
    """`constraints`: limits a sampled architecture must keep (null: none)."""

    model_config = ConfigDict(extra="forbid")

    max_params: _LIMIT = None
    max_flops: _LIMIT = None


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text.strip()


class SpaceFile(BaseModel):
    """A whole space file (the format: `search_spaces.space`); choices validate into `Choice`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Strict(), AfterValidator(_non_empty), _allowed("a non-empty string")] = (
        Field(description="a non-empty string")
    )
    description: Annotated[
        str, Strict(), AfterValidator(lambda s: " ".join(s.split())), _allowed("a one-line string")
    ] = ""
    stem: choice_of(_one_of(STEM_TYPES)) = None
    stem_width: choice_of(POSITIVE) = None
    preact: choice_of(BOOL) = None
    zero_init_residual: choice_of(BOOL) = None
    se_ratio: choice_of(FRACTION) = None
    num_stages: choice_of(POSITIVE) = None  # a prefix of `stages`
    patch_size: choice_of(POSITIVE) = None
    layer_scale: choice_of(LAYER_SCALE) = None
    drop_path: choice_of(FRACTION) = None
    pos_embed: choice_of(POS_EMBED) = None
    pool: choice_of(_one_of(POOL_TYPES)) = None
    se_position: choice_of(_one_of(SE_POSITIONS)) = None
    cell: CELL = None  # the ops of every cell stage's cell, sampled once (NAS-Bench-201)
    shared: StageChoices | None = None  # sampled once, used by every stage
    stages: list[StageChoices] = Field(
        min_length=1, description="a non-empty list of stage mappings"
    )
    constraints: Constraints | None = None
    train: Annotated[
        dict[Annotated[str, Strict()], Annotated[bool, Strict()] | _PLAIN | None] | None,
        _allowed("a mapping of recipe fields to plain values"),
    ] = None  # recipe defaults of the family, checked where the search builds its recipe

    # -- the validated content, defaults filled in -----------------------------------------
    def shared_choices(self) -> dict[str, Choice]:
        return self.shared.given() if self.shared else {}

    def stage_choices(self) -> list[dict[str, Choice]]:
        """Per stage, every field `shared` does not set (in `StageChoices` order)."""
        shared = self.shared_choices()
        return [
            {
                key: stage.given().get(key) or Choice((STAGE_DEFAULTS[key],))
                for key in StageChoices.model_fields
                if key not in shared
            }
            for stage in self.stages
        ]

    def global_choices(self) -> dict[str, Choice]:
        defaults = {**GLOBAL_DEFAULTS, "num_stages": len(self.stages)}
        return {key: getattr(self, key) or Choice((defaults[key],)) for key in GLOBAL_ORDER}

    def cell_choices(self) -> dict[str, Choice]:
        """Per edge of the cell (in `CELL_EDGES` order), its op choice; empty without cells."""
        return dict(self.cell or {})

    def limits(self) -> dict[str, int | None]:
        return (self.constraints or Constraints()).model_dump()

    # -- what no single field can check ----------------------------------------------------
    @model_validator(mode="after")
    def _fits_together(self) -> SpaceFile:
        errors = self._stage_field_errors()
        if not errors:  # the checks below read every stage's fields
            errors = self._block_errors() + self._global_errors() + self._cell_errors()
        if errors:
            raise _refuse(errors)
        return self

    def _stage_field_errors(self) -> list[InitErrorDetails]:
        """No field both shared and per stage; depth and width given somewhere."""
        shared, errors = self.shared_choices(), []
        for i, stage in enumerate(self.stages):
            given = stage.given()
            for key, choice in given.items():
                if key in shared:
                    message = f"no value here: `shared.{key}` sets it for every stage"
                    errors.append(_error(("stages", i, key), choice.to_data(), message))
            for key, field in StageChoices.model_fields.items():
                if key not in STAGE_DEFAULTS and key not in given and key not in shared:
                    message = f"{field.description} (required here or in `shared`)"
                    errors.append(_error(("stages", i, key), None, message))
        return errors

    def _block_errors(self) -> list[InitErrorDetails]:
        """A stage varies only fields that one of its blocks reads."""
        shared, errors = self.shared_choices(), []
        for i, (stage, choices) in enumerate(zip(self.stages, self.stage_choices(), strict=True)):
            blocks = (shared.get("block") or choices["block"]).values
            varied = {k: c for k, c in stage.given().items() if not c.fixed}
            if blocks == ("dense",) and "skip" in varied:
                message = ("a choice only where the stage's `block` can be other than dense "
                           "(a dense block always concatenates)")
                errors.append(_error(("stages", i, "skip"), varied["skip"].to_data(), message))
            for key in CONDITIONAL_FIELDS:
                readers = [b for b in BLOCK_TYPES if key in BLOCK_FIELDS[b]]
                if key in varied and not set(blocks) & set(readers):
                    message = "a choice only where the stage's `block` can be " + " or ".join(readers)
                    errors.append(_error(("stages", i, key), varied[key].to_data(), message))
        return errors

    def _cell_errors(self) -> list[InitErrorDetails]:
        """`cell` given exactly where a stage can be a cell; a cell stage's skip: identity."""
        shared, errors = self.shared_choices(), []
        can_be_cell = False
        for i, (stage, choices) in enumerate(zip(self.stages, self.stage_choices(), strict=True)):
            blocks = (shared.get("block") or choices["block"]).values
            can_be_cell = can_be_cell or "cell" in blocks
            if "cell" in blocks and self.cell is None:
                message = ("a cell only with a top-level `cell` mapping (the op choices of its "
                           f"edges {', '.join(CELL_EDGES)})")
                errors.append(_error(("stages", i, "block"), list(blocks), message))
            skip = stage.given().get("skip")
            if blocks == ("cell",) and skip is not None and skip.values != ("identity",):
                message = "identity for a cell stage (its edges are its shortcuts), or no `skip`"
                errors.append(_error(("stages", i, "skip"), skip.to_data(), message))
        if self.cell is not None and not can_be_cell:
            message = "no `cell` where no stage can be a cell (`block: cell`)"
            errors.append(_error(("cell",), list(self.cell), message))
        return errors

    def _global_errors(self) -> list[InitErrorDetails]:
        """`num_stages` within the stages listed; `pool: token` only after a transformer."""
        g, stages, errors = self.global_choices(), self.stage_choices(), []
        shared_block = self.shared_choices().get("block")
        for n in g["num_stages"].values:
            if n > len(stages):
                errors.append(_error(("num_stages",), n, f"at most the {len(stages)} stages listed"))
            elif "token" in g["pool"].values:
                blocks = (shared_block or stages[n - 1]["block"]).values
                if blocks != ("transformer",):
                    message = (f"avg, or token where the last stage is always a transformer "
                               f"(stages[{n - 1}] can be {', '.join(blocks)})")
                    errors.append(_error(("pool",), "token", message))
        return errors


# -- pydantic's errors as our lines ---------------------------------------------------------
_GENERIC = {"model_type": "a mapping", "dict_type": "a mapping"}


def _holder(parent: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model whose keys live at `parent` (the schema is shallow: its shape says which)."""
    if not parent:
        return SpaceFile
    if parent[-1] == RANGE:
        return IntRange
    if parent == ("constraints",):
        return Constraints
    if parent == ("shared",) or (len(parent) == 2 and parent[0] == "stages"):
        return StageChoices
    return None


def _key(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if part in (FIXED, LIST, RANGE):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _line(err: Any, source: str) -> str:
    loc, value, hint = tuple(err["loc"]), err.get("input"), ""
    holder = _holder(loc[:-1]) if loc else None
    field = holder.model_fields.get(str(loc[-1])) if holder else None
    if err["type"] == "not_allowed":
        allowed, hint = err["ctx"]["allowed"], err["ctx"].get("hint", "")
    elif err["type"] in ("extra_forbidden", "invalid_key") and holder:
        allowed = f"known keys {', '.join(holder.model_fields)} (unknown key)"
        hint = did_you_mean(loc[-1], holder.model_fields)
        if holder is StageChoices and loc[-1] == "ops":
            allowed += "; a cell's ops are chosen per edge in the top-level `cell` mapping"
        loc = (*loc[:-1], str(loc[-1]))  # an unknown key is named as written, never `[1]`
    elif field is not None and field.description:
        allowed = field.description
        value = None if err["type"] == "missing" else value
    else:
        allowed = _GENERIC.get(err["type"], err["msg"].removeprefix("Value error, "))
    return f"{source}: `{_key(loc)}` got {value!r}; {hint}allowed: {allowed}"


def format_errors(exc: ValidationError, source: str) -> str:
    """One line per error, naming `source`, the key, the value and what is allowed."""
    return "\n".join(_line(err, source) for err in exc.errors(include_url=False))
