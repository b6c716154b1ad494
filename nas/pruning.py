"""Should this trial stop? Optuna's pruners for one objective; cost-aware halving for several."""

from __future__ import annotations

import math
from collections import defaultdict

import optuna

from nas.errors import UserError

# Successive halving: keep the best 1/REDUCTION_FACTOR at rungs 1, 3, 9, ... epochs.
REDUCTION_FACTOR = 3


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
    raise UserError(f"unknown pruner {name!r}")  # pragma: no cover - SearchConfig validates


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
            acc for c, acc in self._seen[epoch]
            if all(ci <= mi for ci, mi in zip(c, costs, strict=True))
        ]
        self.record(epoch, costs, accuracy)
        competitors.append(accuracy)
        if len(competitors) < 2:
            return False
        ranked = sorted(competitors, reverse=True)
        keep = max(len(ranked) // self.rf, 1)
        return accuracy < ranked[keep - 1]


class PruningRule:
    """The decision for one epoch report of one trial, whichever rule the search uses."""

    def __init__(self, name: str, *, epochs: int, multi_objective: bool) -> None:
        self.name, self.epochs, self.multi_objective = name, epochs, multi_objective
        self.halving = CostAwareHalving(epochs) if multi_objective and name != "none" else None

    @property
    def active(self) -> bool:
        """Whether any trial can be stopped early (else workers need not wait each epoch)."""
        return self.name != "none" and self.epochs > 1

    def study_pruner(self) -> optuna.pruners.BasePruner | None:
        """The pruner the Optuna study holds (none for several objectives: Optuna refuses)."""
        return None if self.multi_objective else make_pruner(self.name, self.epochs)

    def should_stop(self, trial: optuna.trial.Trial, epoch: int, accuracy: float | None,
                    costs: tuple[float, ...]) -> bool:
        if accuracy is None or not math.isfinite(accuracy):
            return False
        if self.halving is not None:
            return self.halving.should_prune(epoch, costs, accuracy)
        if self.multi_objective:  # Optuna keeps no curve for several objectives
            return False
        trial.report(accuracy, epoch)  # the dashboard's learning curve, pruned or not
        return self.active and epoch < self.epochs and trial.should_prune()
