"""`SearchConfig`: every option of `nas search`, from a YAML file and/or flags, validated once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from nas.errors import UserError, mask_url
from nas.samplers import parse_options, sampler_options

SAMPLERS = ("tpe", "random", "gp", "nsga2", "qmc", "grid", "evolution")
PRUNERS = ("asha", "hyperband", "median", "none")
OBJECTIVES = ("accuracy", "params", "flops", "latency")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


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
    replay: str | None = Field(None, description="answer trials from this table (nas.tables)")
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("study")
    @classmethod
    def _study(cls, v: str) -> str:
        if not STUDY_NAME.match(v):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '_', '.', '-' "
                "(at most 128 characters)"
            )
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

    @field_validator("timeout", "max_compute_hours")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("max_params", "max_flops")
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
        return data


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        flag = "--" + loc.replace("_", "-")
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        where = f"`{loc}`" if source != "flags" else f"`{flag}`"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(SearchConfig.model_fields))
            lines.append(f"{source}: unknown key {where}; allowed: {allowed}")
        else:
            lines.append(f"{source}: {where} got {got!r}: {msg}")
    return "; ".join(lines)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a search YAML file (safe loader: no Python objects)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file `{p}` does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{p}: not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of options at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str) -> SearchConfig:
    """Merge file values with flags (flags win; `train` mappings merge key by key)."""
    merged = dict(file_values)
    train = dict(merged.get("train") or {})
    for key, value in flag_values.items():
        if value is None:
            continue
        if key == "train":
            train.update({k: v for k, v in value.items() if v is not None})
        else:
            merged[key] = value
    merged["train"] = train
    try:
        return SearchConfig(**merged)
    except ValidationError as exc:
        raise UserError(_format_validation(exc, source)) from None
