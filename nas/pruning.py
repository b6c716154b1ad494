"""Should this trial stop? Optuna's pruners for one objective; cost-aware halving for several."""

from __future__ import annotations

import math
from collections import defaultdict

import optuna

from nas.errors import UserError

# Successive halving: keep the best 1/REDUCTION_FACTOR at rungs 1, 3, 9, ... epochs.
REDUCTION_FACTOR = 3
# A rung prunes only once this many trials (the one deciding included) have reached it:
# before that "the best third" is a ranking of a few noisy curves, and a short search ends
# with nearly nothing trained (12 trials of 8 epochs: 2.7 complete under plain ASHA, 6.1
# with 6, never fewer than 5; at 0.64 of the compute of no pruning). Measured with
# `python -m bench.defaults` (bench/README.md).
MIN_AT_RUNG = 6


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

    def __init__(self, epochs: int, reduction_factor: int = REDUCTION_FACTOR,
                 min_at_rung: int = MIN_AT_RUNG) -> None:
        self.rf = reduction_factor
        self.min_at_rung = min_at_rung
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
        if len(competitors) < 2 or len(self._seen[epoch]) < self.min_at_rung:
            return False
        ranked = sorted(competitors, reverse=True)
        keep = max(len(ranked) // self.rf, 1)
        return accuracy < ranked[keep - 1]


class PruningRule:
    """The decision for one epoch report of one trial, whichever rule the search uses."""

    def __init__(self, name: str, *, epochs: int, multi_objective: bool,
                 min_at_rung: int = MIN_AT_RUNG) -> None:
        self.name, self.epochs, self.multi_objective = name, epochs, multi_objective
        self.min_at_rung = min_at_rung
        self._reached: defaultdict[int, set[int]] = defaultdict(set)  # epoch -> trials at it
        self.halving = (CostAwareHalving(epochs, min_at_rung=min_at_rung)
                        if multi_objective and name != "none" else None)

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
        self._reached[epoch].add(trial.number)  # a step reported twice (a retry) counts once
        if not (self.active and epoch < self.epochs):
            return False
        # Asked even while the rung fills: Optuna's halving records the trial's rung then.
        prune = trial.should_prune()
        return prune and len(self._reached[epoch]) >= self.min_at_rung

    def resume(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Count the rungs earlier runs of the study reached, so that a resumed
        single-objective search prunes as it would have without the break. (The
        multi-objective halving keeps no curves in Optuna and starts its rungs afresh.)"""
        for t in trials:
            for step in t.intermediate_values:
                self._reached[step].add(t.number)
