"""One candidate: ask Optuna -> spec -> cost and constraints; and the one mapping from an
outcome to what Optuna is told."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from nas.cache import Key
from nas.errors import UserError
from nas.jsonfile import read_json
from nas.samplers import AskTellGridSampler
from search_spaces import ArchitectureSpec, SearchSpace, complexity, zoo

TrialState = optuna.trial.TrialState
# Trial numbers at which the store's and Optuna's tables get fresh planner statistics
# (`Store.refresh_statistics`): PostgreSQL plans a growing table as if it were empty.
ANALYZE_AT = (100, 1000)


def resolve_architecture(ref: str, *, in_channels: int, num_classes: int) -> ArchitectureSpec:
    """A zoo name or a path to an architecture.json, adapted to the dataset's shape."""
    from pathlib import Path

    path = Path(ref)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise UserError(f"architecture file `{ref}` does not exist")
        data = read_json(path)
        try:
            spec = ArchitectureSpec.from_dict(data.get("spec", data))
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"{ref}: not an architecture: {exc}") from None
    else:
        try:
            spec = zoo.get(ref)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return replace(spec, in_channels=in_channels, num_classes=num_classes)


def impossible(space: str, limits: dict[str, int | None], streak: int) -> str:
    """What a search says when its last `streak` candidates all broke the constraints."""
    lims = ", ".join(f"{k.replace('_', '-')}={v:,}" for k, v in limits.items() if v)
    return (f"the last {streak} candidates of space `{space}` all broke the constraints "
            f"({lims}); the constraints look impossible for this space. Raise "
            "--max-params/--max-flops or choose a smaller space.")


@dataclass
class Proposal:
    """A candidate between `ask` and `tell`."""

    trial: optuna.trial.Trial
    spec: ArchitectureSpec | None  # None: the space could not build what was sampled
    key: Key | None = None
    params: int = 0
    flops: int = 0
    infeasible: bool = False
    reason: str | None = None
    retry_of: int | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)  # reported so far
    started: float = 0.0
    parent: Any = None  # `nas.inherit.Parent` it starts from (`--inherit`), once launched

    @property
    def number(self) -> int:
        return self.trial.number


class Proposer:
    """Asks the study for candidates of `space` and tells it their outcomes."""

    def __init__(self, study: optuna.Study, space: SearchSpace, *, in_channels: int,
                 num_classes: int, input_size: tuple[int, int], recipe_key: tuple[str, str, int],
                 limits: dict[str, int | None], objectives: list[str] | tuple[str, ...],
                 store: Any = None) -> None:
        self.study, self.space = study, space
        self.shape = {"in_channels": in_channels, "num_classes": num_classes}
        self.input_size = input_size
        self.recipe_key = recipe_key  # (recipe_id, dataset, fidelity)
        self.limits = limits
        self.objectives = list(objectives)
        self.store = store
        held = len(study.get_trials(deepcopy=False))  # one read, not one per threshold
        self._analyzed = sum(1 for n in ANALYZE_AT if held >= n)

    def enqueue(self, specs: list[ArchitectureSpec]) -> int:
        """Queue each architecture as the parameters of a coming trial, once: those the study
        already holds are skipped. Raises ValueError for one the space cannot express."""
        wanted = []
        for spec in specs:
            params = self.space.params_for(spec)
            if params is None:
                raise ValueError(
                    f"--enqueue {spec.name or spec.arch_id}: this architecture is not in the "
                    f"space `{self.space.name}` (it cannot be expressed with its choices)"
                )
            wanted.append(params)
        # A WAITING trial has no params yet; `enqueue_trial` keeps them as `fixed_params`.
        held = [t.system_attrs.get("fixed_params") or t.params
                for t in self.study.get_trials(deepcopy=False)]
        queued = 0
        for params in wanted:
            if params not in held:
                held.append(params)
                self.study.enqueue_trial(params, skip_if_exists=False)
                queued += 1
        return queued

    def exhausted(self) -> bool:
        """A grid search ends when every grid point has been proposed once."""
        sampler = self.study.sampler
        return isinstance(sampler, AskTellGridSampler) and sampler.all_proposed(self.study)

    def ask(self) -> Proposal:
        trial = self.study.ask()
        self._refresh_statistics(trial.number)
        retry_of = trial.user_attrs.get("retry_of")
        try:
            spec = self.space.suggest(trial, **self.shape)
        except ValueError as exc:
            # An invalid combination in a user's space: told FAIL, the sampler learns.
            reason = f"invalid spec: {exc}"
            trial.set_user_attr("reason", reason)
            return Proposal(trial, None, reason=reason, retry_of=retry_of)
        finally:
            if isinstance(self.study.sampler, AskTellGridSampler):
                self.study.sampler.proposed(trial.params)
        cost = complexity(spec, self.input_size)
        p = Proposal(trial, spec, (spec.arch_id, *self.recipe_key), cost.params, cost.flops,
                     retry_of=retry_of)
        # What optuna-dashboard lists per trial; the rest is in the store (nas_runs). Each
        # attribute is a commit of its own, so there are two.
        trial.set_user_attr("arch_id", spec.arch_id)
        trial.set_user_attr("architecture", f"{spec.summary()} ({cost.params:,} params, "
                                            f"{cost.flops:,} MACs)")
        # A value > 0 means "broken"; constraint-aware samplers (TPE, NSGA-II, GP) read them.
        for name, value in (("params", cost.params), ("flops", cost.flops)):
            limit = self.limits.get(f"max_{name}")
            if limit:
                trial.set_constraint(name, float(value - limit))
                p.infeasible = p.infeasible or value > limit
        if p.infeasible:
            trial.set_user_attr("infeasible", True)  # not counted toward --trials (a resume)
        return p

    def spec_of(self, params: dict[str, Any]) -> tuple[ArchitectureSpec, Any] | None:
        """The spec and cost that `params` (a trial's) stand for; None if the space cannot
        build them (another space, or an invalid combination)."""
        try:
            spec = self.space.suggest(optuna.trial.FixedTrial(params), **self.shape)
        except (ValueError, KeyError):
            return None
        return spec, complexity(spec, self.input_size)

    def _refresh_statistics(self, number: int) -> None:
        if self.store is None or self._analyzed >= len(ANALYZE_AT):
            return
        if number >= ANALYZE_AT[self._analyzed]:
            while self._analyzed < len(ANALYZE_AT) and number >= ANALYZE_AT[self._analyzed]:
                self._analyzed += 1
            self.store.refresh_statistics()

    def values(self, p: Proposal, accuracy: float, latency_ms: float | None) -> list[float]:
        """The objective values of `p` with this accuracy (costs come from the spec)."""
        return self.values_of(p.params, p.flops, accuracy, latency_ms)

    def values_of(self, params: int, flops: int, accuracy: float | None,
                  latency_ms: float | None) -> list[float]:
        by_name = {"accuracy": float(accuracy or 0.0), "params": float(params),
                   "flops": float(flops),
                   "latency": float(latency_ms) if latency_ms is not None else float("inf")}
        return [by_name[o] for o in self.objectives]

    def tell(self, p: Proposal, state: str, *, accuracy: float | None = None,
             latency_ms: float | None = None, reason: str | None = None) -> list[float] | None:
        """Tell Optuna the outcome of `p`: `complete` (and `infeasible`, told as complete
        with accuracy 0 so that constraint-aware samplers learn the region) with values,
        `pruned` as PRUNED, anything else as FAIL. Returns the values told, if any."""
        if reason and state != "complete":
            p.trial.set_user_attr("reason", reason)
        if state in ("complete", "infeasible"):
            values = self.values(p, accuracy or 0.0, latency_ms)
            self.study.tell(p.trial, values)
            return values
        self.study.tell(p.trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)
        return None
