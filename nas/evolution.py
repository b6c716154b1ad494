"""Regularized evolution (aging evolution) as an Optuna sampler, for define-by-run spaces."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.sampler_options import MUTATIONS

# Redraws of a log-scaled or float parameter before a mutation settles for "any other value".
_REDRAWS = 32
# The parameters a `grow` mutation enlarges: a stage's blocks and channels (the stable labels
# of `search_spaces`), the two ways a trained network grows by a function-preserving morph.
_GROWS = (".depth", ".width")


@dataclass
class _Plan:
    """What one child is: a copy of `parent` (None: a random child) with `mutate` changed."""

    parent: FrozenTrial | None
    mutate: frozenset[str] = field(default_factory=frozenset)
    grow: bool = False  # the mutated parameter takes a larger value


class RegularizedEvolutionSampler(optuna.samplers.BaseSampler):
    """Regularized evolution (Real et al., AAAI 2019, Algorithm 1).

    The population is the `population_size` most recently completed feasible trials (aging:
    the oldest leaves, not the worst). Each child copies the best of `sample_size` trials
    drawn uniformly from the population and changes one parameter to another value drawn
    uniformly (NAS-Bench-201 style). Until the population is full, children are random.

    It works define-by-run: the parent and the parameter to mutate are chosen at a trial's
    first `sample_independent` call, from the parent's parameters. A parameter the parent
    lacks (another conditional branch), or holds under another distribution, is drawn at
    random. PRUNED, FAIL and RUNNING trials are not in the population, nor are trials with a
    violated constraint (`Trial.set_constraint` with a value > 0). One objective only.

    Args:
        population_size: Trials in the population (P).
        sample_size: Trials drawn from it per child; the best is the parent (S <= P).
        mutation: `one`: exactly one parameter changes. `per_param`: each of the parent's
            parameters changes with probability 1/n (n of them), and at least one does.
            `grow`: one stage's depth or width (`stageN.depth`, `stageN.width`) takes a larger
            value, so that the child extends its parent and `--inherit` starts it from the
            parent's weights (NASH-style hill climbing, Elsken et al. 2017); a parent that
            cannot grow is mutated as with `one`.
        seed: Seed of the parent choice, the mutations and the random draws.
    """

    def __init__(self, population_size: int = 20, sample_size: int = 5, mutation: str = "one",
                 seed: int | None = None) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int) \
                or population_size < 1:
            raise ValueError(f"`population_size` must be an int >= 1; got {population_size!r}")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) \
                or not 1 <= sample_size <= population_size:
            raise ValueError(f"`sample_size` must be an int in 1..population_size "
                             f"({population_size}); got {sample_size!r}")
        if mutation not in MUTATIONS:
            raise ValueError(f"`mutation` must be one of {', '.join(MUTATIONS)}; got {mutation!r}")
        self.population_size = population_size
        self.sample_size = sample_size
        self.mutation = mutation
        self._rng = random.Random(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._plans: dict[int, _Plan] = {}
        self._lock = threading.Lock()  # study.optimize(n_jobs>1) samples from several threads

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        with self._lock:
            plan = self._plans.get(trial.number)
            if plan is None:
                plan = self._plans[trial.number] = self._make_plan(study)
            parent = plan.parent
            if parent is None or param_name not in parent.params:
                return self._random.sample_independent(study, trial, param_name,
                                                       param_distribution)
            value = parent.params[param_name]
            inherited = _contains(param_distribution, value)
            # The trial's distribution may not be the parent's: then it may hold nothing larger.
            larger = _larger(param_distribution, value) if plan.grow and inherited else []
            if param_name in plan.mutate and larger:
                return self._rng.choice(larger)
            if param_name in plan.mutate or not inherited:
                return self._other_value(study, trial, param_name, param_distribution,
                                         value if inherited else None)
            return value

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        with self._lock:
            self._plans.pop(trial.number, None)

    # -- the algorithm ----------------------------------------------------------------------
    def population(self, study: optuna.Study) -> list[FrozenTrial]:
        """The last `population_size` completed feasible trials, oldest first (by completion,
        then number: with trials in parallel, a model joins the population when evaluated)."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and not math.isnan(t.value)
                and all(c <= 0.0 for c in t.constraints.values())]
        done.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
        return done[-self.population_size:]

    def _make_plan(self, study: optuna.Study) -> _Plan:
        if len(study.directions) > 1:
            raise ValueError("RegularizedEvolutionSampler works with one objective; this study "
                             f"has {len(study.directions)}. Use NSGAIISampler or TPESampler.")
        population = self.population(study)
        if len(population) < self.population_size:
            return _Plan(None)
        sample = self._rng.sample(population, self.sample_size)
        pick = max if study.direction == StudyDirection.MAXIMIZE else min
        parent = pick(sample, key=lambda t: t.value)
        names = sorted(parent.params)  # sorted: storages need not return params in one order
        mutable = [n for n in names if _choices_above_one(parent.distributions[n])] or names
        if not mutable:
            return _Plan(parent)
        if self.mutation == "grow":
            growing = [n for n in names if n.endswith(_GROWS)
                       and _larger(parent.distributions[n], parent.params[n])]
            if growing:
                return _Plan(parent, frozenset([self._rng.choice(growing)]), grow=True)
        if self.mutation in ("one", "grow"):
            return _Plan(parent, frozenset([self._rng.choice(mutable)]))
        chosen = [n for n in mutable if self._rng.random() < 1.0 / len(mutable)]
        return _Plan(parent, frozenset(chosen or [self._rng.choice(mutable)]))

    def _other_value(self, study: optuna.Study, trial: FrozenTrial, name: str,
                     dist: BaseDistribution, current: Any) -> Any:
        """A value of `dist` drawn uniformly, other than `current` where `dist` has another."""
        if isinstance(dist, CategoricalDistribution):
            others = [c for c in dist.choices if not _same(c, current)]
            return self._rng.choice(others) if others else current
        if isinstance(dist, IntDistribution) and not dist.log:
            count = (dist.high - dist.low) // dist.step + 1
            if current is None or count < 2:
                return self._random.sample_independent(study, trial, name, dist)
            index = self._rng.randrange(count - 1)
            value = dist.low + index * dist.step
            return value + dist.step if value >= current else value
        # Log-scaled ints and floats: draw from the distribution as it is scaled until the value
        # differs; a float practically always does on the first draw.
        value = current
        for _ in range(_REDRAWS):
            value = self._random.sample_independent(study, trial, name, dist)
            if current is None or not _same(value, current):
                return value
        if isinstance(dist, IntDistribution):  # a narrow log range: any other value, linearly
            others = [v for v in range(dist.low, dist.high + 1, dist.step) if v != current]
            return self._rng.choice(others) if others else current
        return value


def _larger(dist: BaseDistribution, value: Any) -> list[Any]:
    """The values of `dist` above `value` (numeric choices or integer steps); [] if none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(dist, CategoricalDistribution):
        return [c for c in dist.choices
                if not isinstance(c, bool) and isinstance(c, (int, float)) and c > value]
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(int(value) + dist.step, dist.high + 1, dist.step))
    return []


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _choices_above_one(dist: BaseDistribution) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return len(dist.choices) > 1
    if isinstance(dist, (IntDistribution, FloatDistribution)):
        return dist.high > dist.low  # Optuna trims `high` onto the step's grid
    return True


def _contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether the parent's `value` is a value of the child's `dist` (public attributes only)."""
    if isinstance(dist, CategoricalDistribution):
        return any(_same(c, value) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntDistribution):
        return float(value).is_integer() and dist.low <= value <= dist.high \
            and (int(value) - dist.low) % dist.step == 0
    if isinstance(dist, FloatDistribution):
        if not dist.low <= value <= dist.high:
            return False
        if dist.step is None:
            return True
        k = (value - dist.low) / dist.step
        return math.isclose(k, round(k), abs_tol=1e-8)
    return False
