"""The options each sampler takes (`--sampler-options key=value,...`), checked without
importing Optuna: the CLI validates a config before it loads anything heavy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MUTATIONS = ("one", "per_param", "grow")  # of regularized evolution (nas.evolution)

# Options each sampler takes (`--sampler-options key=value,...`): name -> (default, what is
# allowed, check). Evolution's defaults are the common ones for searches of a few hundred
# evaluations on NAS-Bench-201-sized spaces (Dong & Yang's REA baseline used 10 and 3).
SAMPLER_OPTIONS: dict[str, dict[str, tuple[Any, str, Callable[[Any], bool]]]] = {
    "tpe": {
        "n_startup_trials": (8, "an int >= 0", lambda v: _is_int(v) and v >= 0),
    },
    "evolution": {
        "population": (20, "an int >= 1", lambda v: _is_int(v) and v >= 1),
        "sample_size": (5, "an int from 1 to `population`", lambda v: _is_int(v) and v >= 1),
        "mutation": ("one", " or ".join(f"`{m}`" for m in MUTATIONS), lambda v: v in MUTATIONS),
    },
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_options(text: str) -> dict[str, int | float | str]:
    """`key=value,key=value` as a dict; values become ints or floats where they parse.

    Raises ValueError for a part that is not `key=value` or a key given twice.
    """
    options: dict[str, int | float | str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or not key or not raw:
            raise ValueError(f"expected key=value[,key=value...]; `{part}` is not key=value")
        if key in options:
            raise ValueError(f"`{key}` given twice")
        value: int | float | str = raw
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
        options[key] = value
    return options


def sampler_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Every option of sampler `name`: those given, checked, and the defaults of the rest.

    Raises ValueError naming the option, the value and what is allowed.
    """
    allowed = SAMPLER_OPTIONS.get(name, {})
    options = dict(options or {})
    if options and not allowed:
        raise ValueError(f"sampler `{name}` takes no options; got {', '.join(options)} "
                         f"(options exist for: {', '.join(SAMPLER_OPTIONS)})")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler `{name}` has no option {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)}")
    for key, value in options.items():
        _, what, ok = allowed[key]
        if not ok(value):
            raise ValueError(f"option `{key}` of sampler `{name}` must be {what}; got {value!r}")
    resolved = {key: options.get(key, default) for key, (default, _, _) in allowed.items()}
    if name == "evolution":
        if "sample_size" not in options:  # the default never exceeds a small population
            resolved["sample_size"] = min(resolved["sample_size"], resolved["population"])
        if resolved["sample_size"] > resolved["population"]:
            raise ValueError(f"option `sample_size` of sampler `evolution` must be at most "
                             f"`population` ({resolved['population']}); "
                             f"got {resolved['sample_size']}")
    return resolved
