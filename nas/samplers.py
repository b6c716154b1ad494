"""Optuna samplers by name, set up for our conditional, partly parallel searches."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import optuna

from nas.errors import UserError
from nas.evolution import MUTATIONS, RegularizedEvolutionSampler

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


def make_sampler(
    name: str,
    *,
    seed: int | None,
    grid: dict[str, list[Any]] | None = None,
    options: dict[str, Any] | None = None,
    multi_objective: bool = False,
) -> optuna.samplers.BaseSampler:
    """The sampler called `name`, with its `options` (see `SAMPLER_OPTIONS`).

    Constraints need no set-up here: a trial carries its own (`Trial.set_constraint`) and
    the constraint-aware samplers (TPE, NSGA-II, GP) read them; evolution never picks an
    infeasible trial as a parent.
    """
    try:
        opts = sampler_options(name, options)
    except ValueError as exc:
        raise UserError(f"--sampler-options: {exc}") from None
    if name == "tpe":
        # group=True keeps multivariate TPE multivariate on conditional spaces (#3363, #5299);
        # constant_liar stops parallel workers from being handed the same point.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=opts["n_startup_trials"],
        )
    if name == "evolution":
        if multi_objective:
            raise UserError("--sampler evolution works with one objective (accuracy); "
                            "use nsga2 or tpe for several")
        return RegularizedEvolutionSampler(
            population_size=opts["population"], sample_size=opts["sample_size"],
            mutation=opts["mutation"], seed=seed,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if name == "grid":
        if not grid:
            raise UserError(
                "`--sampler grid` needs a space without conditional choices and with finite "
                "choices; this space has none. Use tpe, random, gp, nsga2, qmc or evolution."
            )
        return AskTellGridSampler(grid, seed=seed)
    raise UserError(f"unknown sampler {name!r}")  # pragma: no cover - SearchConfig validates


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop.

    Optuna's GridSampler calls `study.stop()` once the grid is covered, which only works
    inside `study.optimize()` and raises under ask/tell. Our loop asks `all_proposed()`
    before each proposal instead, from the parameters of the study's trials.
    """

    def __init__(self, search_space: dict[str, list[Any]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self.points = {tuple(p) for p in itertools.product(*search_space.values())}
        self.names = list(search_space)
        self._seen: set[tuple] | None = None

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D102 - see class
        return None

    def proposed(self, params: dict[str, Any]) -> None:
        """A trial was handed out with `params`."""
        if self._seen is not None:
            self._seen.add(tuple(params.get(n) for n in self.names))

    def all_proposed(self, study: optuna.Study) -> bool:
        """Whether every grid point has been handed out (finished or still running)."""
        if self._seen is None:  # once per search; `proposed` keeps it current
            self._seen = {tuple(t.params.get(n) for n in self.names)
                          for t in study.get_trials(deepcopy=False)}
        return self.points <= self._seen
