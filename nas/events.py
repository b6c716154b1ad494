"""What a search tells the outside while it runs: trial events, the summary, progress hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialEvent:
    """What the progress display and `--json` see of one finished trial."""

    number: int
    state: str  # complete | pruned | failed | cached | infeasible
    arch_id: str
    summary: str
    values: list[float] | None = None
    val_accuracy: float | None = None
    params: int | None = None
    flops: int | None = None
    duration_s: float | None = None
    reason: str | None = None
    cached_from: int | None = None  # the store run (nas_runs.id) that answered it
    cached_from_trial: int | None = None  # ... its trial number
    cached_from_study: str | None = None  # ... and study, when not this one
    retry_of: int | None = None
    host: str | None = None
    inherited_from: str | None = None  # the parent it grew from (`--inherit`): "trial N[ of study S]"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def answered_by(self) -> str:
        """Which trial a duplicate's answer came from, as a person reads it."""
        if self.cached_from_trial is None:
            return f"run {self.cached_from}"
        where = f" of study {self.cached_from_study}" if self.cached_from_study else ""
        return f"trial {self.cached_from_trial}{where}"


@dataclass
class SearchSummary:
    """The outcome of one `nas search` invocation."""

    study: str
    storage: str
    status: str  # finished | interrupted | budget | stopped (by `nas stop`)
    counts: dict[str, int] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    compute_s: float = 0.0
    trials_in_study: int = 0  # every Optuna trial, skipped candidates and retries included
    counted: int = 0  # those that count toward --trials


class Progress:
    """Hooks for the CLI's display; the default does nothing."""

    def start(self, info: dict[str, Any]) -> None: ...
    def trial(self, event: TrialEvent, counts: dict[str, int], best: dict[str, Any] | None) -> None: ...
    def launched(self, number: int, summary: str) -> None: ...
    def epoch(self, number: int, epoch: int, metrics: dict[str, Any]) -> None: ...
    def tick(self, status: dict[str, Any]) -> None: ...
    def stop(self) -> None: ...


def start_info(search: Any, executor: Any) -> dict[str, Any]:
    """What the display says when `search` (a `nas.search.Search`) starts on `executor`."""
    cfg, info = search.config, executor.info
    return {"study": cfg.study, "storage": search.store.display_url, "target": cfg.trials,
            "already": search.accounted, "slots": executor.capacity, "space": search.space.name,
            "pruner": search.pruning.name, "sampler": cfg.sampler, "epochs": search.epochs,
            "objectives": list(cfg.objectives), "timeout_s": cfg.timeout,
            "compute_budget_s": (cfg.max_compute_hours or 0) * 3600 or None,
            "runners": info.get("runners", 0), "runners_note": search.runners_note}
