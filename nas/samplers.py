"""Optuna samplers and pruners by name, and our pruning rule for multi-objective studies."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import optuna

from nas.errors import UserError

# Successive halving: keep the best 1/REDUCTION at rungs 1, 3, 9, ... epochs.
REDUCTION_FACTOR = 3


def make_sampler(
    name: str,
    *,
    seed: int | None,
    grid: dict[str, list[Any]] | None = None,
) -> optuna.samplers.BaseSampler:
    """The sampler called `name`, set up for our conditional, partly parallel searches.

    Constraints need no set-up here: since Optuna 5 a trial carries its own
    (`Trial.set_constraint`) and the constraint-aware samplers (TPE, NSGA-II, GP) read them.
    """
    if name == "tpe":
        # group=True keeps multivariate TPE multivariate on conditional spaces (#3363, #5299);
        # constant_liar stops parallel workers from being handed the same point.
        kwargs: dict[str, Any] = dict(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=8
        )
        cls: type = optuna.samplers.TPESampler
    elif name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    elif name == "gp":
        cls, kwargs = optuna.samplers.GPSampler, dict(seed=seed)
    elif name == "nsga2":
        cls, kwargs = optuna.samplers.NSGAIISampler, dict(seed=seed)
    elif name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    elif name == "grid":
        if not grid:
            raise UserError(
                "`--sampler grid` needs a space without conditional choices and with finite "
                "choices; this space has none. Use tpe, random, gp, nsga2 or qmc."
            )
        return AskTellGridSampler(grid, seed=seed)
    else:  # pragma: no cover - SearchConfig validates names
        raise UserError(f"unknown sampler {name!r}")
    return cls(**kwargs)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop.

    Optuna's GridSampler calls `study.stop()` once the grid is covered, which only works
    inside `study.optimize()` and raises under ask/tell. Our loop asks `is_exhausted()`
    before each proposal instead.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D102 - see class
        return None

    def all_proposed(self, study: optuna.Study) -> bool:
        """Whether every grid point has been handed out (finished or still running)."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        seen = {t.system_attrs.get("grid_id") for t in trials} - {None}
        return len(seen) >= len(self._all_grids)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner called `name`, on per-epoch validation accuracy."""
    if name == "none" or epochs <= 1:
        return optuna.pruners.NopPruner()
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=REDUCTION_FACTOR, min_early_stopping_rate=0
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=REDUCTION_FACTOR
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    raise UserError(f"unknown pruner {name!r}")  # pragma: no cover


class CostAwareHalving:
    """Successive halving on the accuracy curve for multi-objective studies.

    Optuna's pruners refuse studies with several objectives. Our cost objectives (params,
    FLOPs) are known before training, so a trial is compared only with trials that are at
    least as cheap on every cost: a small model is never pruned for losing to a big one, and
    the Pareto front survives. At rung epochs 1, 3, 9, ... a trial continues only if its
    accuracy is within the best 1/REDUCTION_FACTOR of those competitors.
    """

    def __init__(self, epochs: int, reduction_factor: int = REDUCTION_FACTOR) -> None:
        self.rf = reduction_factor
        self.rungs = set()
        r = 1
        while r < epochs:
            self.rungs.add(r)
            r *= reduction_factor
        # rung epoch -> list of (costs, accuracy)
        self._seen: dict[int, list[tuple[tuple[float, ...], float]]] = defaultdict(list)

    def record(self, epoch: int, costs: tuple[float, ...], accuracy: float) -> None:
        if epoch in self.rungs:
            self._seen[epoch].append((costs, accuracy))

    def should_prune(self, epoch: int, costs: tuple[float, ...], accuracy: float) -> bool:
        """Record this trial's value at `epoch` and say whether it stops here."""
        if epoch not in self.rungs:
            return False
        competitors = [
            acc for c, acc in self._seen[epoch] if all(ci <= mi for ci, mi in zip(c, costs, strict=True))
        ]
        self.record(epoch, costs, accuracy)
        competitors.append(accuracy)
        if len(competitors) < 2:
            return False
        ranked = sorted(competitors, reverse=True)
        keep = max(len(ranked) // self.rf, 1)
        return accuracy < ranked[keep - 1]
