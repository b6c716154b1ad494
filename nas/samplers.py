"""Optuna samplers by name, set up for our conditional, partly parallel searches."""

from __future__ import annotations

import itertools
from typing import Any

import optuna

from nas.errors import UserError
from nas.evolution import RegularizedEvolutionSampler
from nas.sampler_options import SAMPLER_OPTIONS, parse_options, sampler_options

__all__ = ["SAMPLER_OPTIONS", "AskTellGridSampler", "make_sampler", "parse_options",
           "sampler_options"]

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
