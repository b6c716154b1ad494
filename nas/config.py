"""`SearchConfig`: every option of `nas search`, from a YAML file and/or flags, validated once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from nas.errors import UserError, mask_url
from nas.executors.base import STALL_S
from nas.sampler_options import parse_options, sampler_options

# Kept light: the CLI imports this module before every command, so `workers` and the space
# schema are imported where they are needed, not here (and nothing here imports optuna).

SAMPLERS = ("tpe", "random", "gp", "nsga2", "qmc", "grid", "evolution")
PRUNERS = ("asha", "hyperband", "median", "none")
OBJECTIVES = ("accuracy", "params", "flops", "latency")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
RESERVED_SUFFIXES = (".retrain",)  # nas.retrain.RETRAIN_SUFFIX: `nas retrain`'s own studies


class SearchConfig(BaseModel):
    """What one `nas search` does. Field names are the YAML keys; flags use dashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str = "resnas"
    storage: str = "sqlite:///nas.db"
    space: str = "resnet"
    trials: int = Field(20, description="trials the study should hold in total (resumes count)")
    workers: int | None = Field(None, description="trials in flight (default: CPU slots)")
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    ray_address: str | None = None
    seed: int | None = None
    sampler: str = "tpe"
    # e.g. {"population": 50, "sample_size": 10}; a "key=value,..." string is parsed
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    pruner: str | None = None  # default: asha when epochs > 1, else none
    objectives: tuple[str, ...] = ("accuracy",)
    timeout: float | None = Field(None, description="wall-clock seconds for this invocation")
    max_compute_hours: float | None = None
    max_params: int | None = None
    max_flops: int | None = None
    max_retries: int = 2
    enqueue: tuple[str, ...] = ()
    heartbeat_s: float = 10.0
    stall_s: float | None = Field(
        STALL_S, description="a running trial silent this long (no epoch, no beat) is given up "
        "and retried; null: never")
    db_retry_s: float = Field(60.0, description="how long a storage call is retried while the "
                              "database does not answer (a restart) before the search stops")
    replay: str | None = Field(None, description="answer trials from this table (nas.tables)")
    inherit: bool = Field(False, description="start each candidate from the best trained "
                          "architecture in the store that morphs into it (search_spaces.morph)")
    inherit_epochs: int | None = Field(None, description="epochs a child that inherits trains "
                                       "(default: a quarter of the recipe's, at least 1)")
    artifacts: str | None = Field(None, description="where trained weights go: a directory or "
                                  "s3://bucket/prefix (default: beside a SQLite file, else "
                                  "the user's data directory)")
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("study")
    @classmethod
    def _study(cls, v: str) -> str:
        if not STUDY_NAME.match(v):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '_', '.', '-' "
                "(at most 128 characters)"
            )
        if v.endswith(RESERVED_SUFFIXES):
            raise ValueError(f"names ending in {' or '.join(RESERVED_SUFFIXES)} are reserved "
                             "for the studies `nas retrain` records")
        return v

    @field_validator("trials")
    @classmethod
    def _trials(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("cpus_per_trial")
    @classmethod
    def _cpus(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus(cls, v: float) -> float:
        if v < 0 or (v > 1 and v != int(v)):
            raise ValueError("must be >= 0, and a whole number when above 1 (fractions share a GPU)")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"allowed: {' | '.join(SAMPLERS)}")
        return v

    @field_validator("sampler_options", mode="before")
    @classmethod
    def _sampler_options(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return {}
        if isinstance(v, str):
            v = parse_options(v)
        if not isinstance(v, dict):
            raise ValueError("expected a mapping of option names to values")
        bad = [k for k, x in v.items() if not isinstance(k, str)
               or isinstance(x, bool) or not isinstance(x, (int, float, str))]
        if bad:
            raise ValueError(f"values must be numbers or strings; not those of {bad}")
        if "sampler" in info.data:  # else the sampler's own error says enough
            sampler_options(info.data["sampler"], v)
        return dict(v)

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Only the keys, so that a typo is named with its line: the values are checked with
        # the space's recipe defaults, by `workers.TrainConfig`, where the search builds its
        # recipe. `recipe_id` (written by some exports) is ignored there too.
        if not v:
            return v
        unknown = [k for k in v if k not in train_keys() and k != "recipe_id"]
        if unknown:
            raise ValidationError.from_exception_data(
                "train", [{"type": "extra_forbidden", "loc": (k,), "input": v[k]} for k in unknown]
            )
        return v

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v: str | None) -> str | None:
        if v is not None and v not in PRUNERS:
            raise ValueError(f"allowed: {' | '.join(PRUNERS)}")
        return v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if not v:
            raise ValueError(f"at least one of {', '.join(OBJECTIVES)}")
        bad = [o for o in v if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"unknown {bad}; allowed: {', '.join(OBJECTIVES)}")
        if "accuracy" not in v:
            raise ValueError("must include `accuracy` (cost alone is not a search)")
        if len(set(v)) != len(v):
            raise ValueError("each objective once")
        return tuple(v)

    @field_validator("enqueue", mode="before")
    @classmethod
    def _enqueue(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        return tuple(v or ())

    @field_validator("timeout", "max_compute_hours", "stall_s", "db_retry_s")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("max_params", "max_flops", "inherit_epochs")
    @classmethod
    def _positive_int(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("max_retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    # -- derived ----------------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def epochs(self) -> int:
        return int(self.train.get("epochs", 0) or 0)

    def effective_pruner(self, epochs: int) -> str:
        if self.pruner is not None:
            return self.pruner
        return "asha" if epochs > 1 else "none"

    def to_record(self) -> dict[str, Any]:
        """JSON-ready, without secrets (the storage URL's password is masked)."""

        data = self.model_dump(mode="json")
        data["storage"] = mask_url(self.storage)
        if data.get("artifacts"):
            data["artifacts"] = mask_url(data["artifacts"])
        return data


def train_keys() -> tuple[str, ...]:
    """The keys of the `train:` mapping: the fields of `workers.TrainConfig`, in its order."""
    from dataclasses import fields

    from workers.config import TrainConfig

    return tuple(f.name for f in fields(TrainConfig))


class FileValues(dict):
    """The options of a config file (top-level keys with `_`), and the line of each key.

    `lines` maps a key's path, e.g. `("train", "epochs")`, to its 1-based line, so that an
    error names where in the file to look.
    """

    def __init__(self, values: dict[str, Any], lines: dict[tuple[str, ...], int]) -> None:
        super().__init__(values)
        self.lines = lines


def _key_lines(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value if path else key_node.value.replace("-", "_")
                lines[(*path, key)] = key_node.start_mark.line + 1
                lines.update(_key_lines(value_node, (*path, key)))
    return lines


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _unknown_key(loc: tuple[str, ...], source: str) -> str:
    """`unknown key `X`; did you mean `Y`? allowed: ...`, for a key at the top or in `train`."""
    from search_spaces.space_schema import did_you_mean

    key, in_train = loc[-1], loc[:-1] == ("train",)
    allowed = train_keys() if in_train else tuple(sorted(SearchConfig.model_fields))
    if source == "flags":  # only a caller's typo: Typer has checked the command line's
        flags = [_flag(k) for k in allowed]
        hint = did_you_mean(_flag(key), flags)
        return f"unknown option `{_flag(key)}`; {hint}allowed: {', '.join(flags)}"
    # A key at the wrong level first: `epochs` is closer to `train.epochs` than to any
    # look-alike (`inherit_epochs`) at its own level.
    if in_train and key in SearchConfig.model_fields:
        hint = f"did you mean the top-level `{key}` (not under `train:`)? "
    elif not in_train and key in train_keys():
        hint = f"did you mean `train.{key}` (training settings go under `train:`)? "
    else:
        hint = did_you_mean(key, allowed)
    where = " in `train`" if in_train else ""
    return f"unknown key `{'.'.join(loc)}`; {hint}allowed{where}: {', '.join(allowed)}"


def _format_validation(exc: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> str:
    """One line: every error, with the line of its key where the file gave it."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        at = f"line {line}: " if line else ""
        if err["type"] == "extra_forbidden" and loc:
            parts.append(f"{source}: {at}{_unknown_key(loc, source)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if source == "flags" and loc:
            where = f"`{_flag(loc[-1] if loc[0] == 'train' else loc[0])}`"
        else:
            where = f"`{'.'.join(loc) or '(top level)'}`"
        parts.append(f"{source}: {at}{where} got {err.get('input')!r}: {msg}")
    return "; ".join(parts)


def load_config_file(path: str | Path) -> FileValues:
    """Read a search YAML file (safe loader: no Python objects), remembering each key's line.

    Raises:
        UserError: no such file, not YAML (naming the line and column), or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file `{p}` does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read the config file: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # the node tree (every key's line), nothing built yet
        data = loader.construct_document(node) if node is not None else None  # = safe_load
    except yaml.YAMLError as exc:
        from search_spaces.space_schema import yaml_error_text

        raise UserError(f"{p}: {yaml_error_text(exc)}") from None
    finally:
        loader.dispose()
    if data is None:  # an empty file: every default
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of options at the top level")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    return FileValues(values, _key_lines(node) if node is not None else {})


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str) -> SearchConfig:
    """Merge file values with flags (flags win; `train` mappings merge key by key).

    Args:
        file_values: from `load_config_file` (a plain dict works too, without line numbers).
        flag_values: option -> value, None for a flag not given; `train` is a mapping.
        source: what errors name: the config file's path, or "flags".

    Raises:
        UserError: one line naming every bad key (with its line in the file) or value.
    """
    merged = dict(file_values)
    lines = dict(getattr(file_values, "lines", {}))
    train = merged.get("train") or {}
    train = dict(train) if isinstance(train, dict) else train  # else pydantic names it
    for key, value in flag_values.items():
        if value is None:
            continue
        if key == "train":
            given = {k: v for k, v in value.items() if v is not None}
            if isinstance(train, dict):
                train.update(given)
            overridden = {("train", k) for k in given}
        else:
            merged[key] = value
            overridden = {(key,)}
        # A value from a flag has no line in the file.
        lines = {p: n for p, n in lines.items() if not any(p[:len(o)] == o for o in overridden)}
    merged["train"] = train
    try:
        return SearchConfig(**merged)
    except ValidationError as exc:
        raise UserError(_format_validation(exc, source, lines)) from None
