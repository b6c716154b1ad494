"""The one place that turns trial outcomes into store rows (`RunRecord`, epochs, weights,
architectures) and into the events the display sees."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from db import EpochRecord, RunRecord, Store
from nas.errors import UserError
from nas.events import Progress, TrialEvent
from nas.weights import Artifacts
from search_spaces import ArchitectureSpec

log = logging.getLogger(__name__)

STATES = ("complete", "pruned", "failed", "cached", "infeasible")


@dataclass
class Subject:
    """What a run row is about: a trial number of a study, its architecture and recipe."""

    number: int
    spec: ArchitectureSpec
    recipe_id: str
    dataset: str
    fidelity: int
    params: int
    flops: int
    retry_of: int | None = None
    started: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inherited_from: int | None = None  # run id of the parent whose weights it starts from
    trial: Any = None  # the Optuna trial (`optuna.trial.Trial`), where there is one


def trial_ref(run: RunRecord, study: str) -> int | str:
    """`run`'s trial as a person looks it up from `study` (the dashboard's user attributes
    show this, not a row id): its number, or `other-study trial N`."""
    return run.trial_number if run.study == study else f"{run.study} trial {run.trial_number}"


class Recorder:
    """Writes the runs of one study (`study`) for one search or retrain (`search_id`).

    Trained weights go to `artifacts` (Optuna's artifact store, linked from the trial) and
    the run row points to them; without it, into the store's `nas_weights` table as before.
    """

    def __init__(self, store: Store, study: str, *, input_size: tuple[int, int],
                 search_id: int | None = None, progress: Progress | None = None,
                 artifacts: Artifacts | None = None) -> None:
        self.store, self.study, self.search_id = store, study, search_id
        self.artifacts = artifacts
        self.input_size = input_size
        self.progress = progress or Progress()
        self.counts = dict.fromkeys(STATES, 0)
        self.compute_s = 0.0
        self.retried = 0  # lost trials handed to a retry (not counted as failed)
        self.given_up = 0  # lost trials whose retries ran out (failed, not toward --trials)
        self.best: dict[str, Any] | None = None
        self.saved_archs: set[str] = set()

    # -- rows -----------------------------------------------------------------------------
    def _row(self, s: Subject, state: str, *, extra: dict[str, Any] | None = None,
             **fields: Any) -> RunRecord:
        now = time.time()
        return RunRecord(
            id=None, study=self.study, trial_number=s.number, arch_id=s.spec.arch_id,
            recipe_id=s.recipe_id, dataset=s.dataset, fidelity=s.fidelity, state=state,
            params=s.params, flops=s.flops, retry_of=s.retry_of, search_id=self.search_id,
            inherited_from=s.inherited_from, extra={**s.extra, **(extra or {})},
            **{"started": s.started or now, "finished": now, **fields},
        )

    def _architecture(self, spec: ArchitectureSpec) -> dict[str, Any]:
        """`record_run` arguments that save `spec` with the run, the first time only."""
        if spec.arch_id in self.saved_archs:
            return {}
        self.saved_archs.add(spec.arch_id)
        return {"spec": spec, "input_size": self.input_size}

    def architecture(self, s: Subject) -> None:
        """Save the architecture of a candidate that gets no run row (it broke a limit)."""
        if s.spec.arch_id not in self.saved_archs:
            self.store.save_architecture(s.spec, params=s.params, flops=s.flops,
                                         input_size=self.input_size)
            self.saved_archs.add(s.spec.arch_id)

    def running(self, s: Subject) -> RunRecord:
        """A run that has started (its trial number is taken; a crash leaves a trace)."""
        import socket

        run = self._row(s, "running", finished=None, host=socket.gethostname())
        run.id = self.store.record_run(run, **self._architecture(s.spec))
        return run

    def result(self, s: Subject, result: dict[str, Any]) -> RunRecord:
        """What a worker sent back, in any state."""
        state = result.get("state", "failed")
        extra = {k: result[k] for k in ("worker_pid", "traceback") if result.get(k)}
        run = self._row(
            s, state, reason=result.get("reason"), **RunRecord.measured(result),
            started=result.get("started") or s.started or time.time(),
            finished=result.get("finished") or time.time(), extra=extra,
        )
        epochs = [EpochRecord.from_metrics(e) for e in result.get("epochs") or []]
        weights = result.get("weights")
        if weights is not None and self.artifacts is not None:
            try:
                saved = self.artifacts.save(weights, trial=s.trial, arch_id=s.spec.arch_id)
            except (ValueError, UserError) as exc:
                # Bytes that are not safetensors (a worker's fault) or an artifact store that
                # refuses them: the run keeps its result without them and says why, rather
                # than the search stopping.
                log.warning("trial %d keeps no weights: %s", s.number, exc)
                saved = {}
                run.extra["weights_error"] = str(exc)
            for name, value in saved.items():
                setattr(run, name, value)
            weights = None  # the row points to the artifact; nothing goes to nas_weights
        run.id = self.store.record_run(run, epochs, weights=weights,
                                       **self._architecture(s.spec))
        self.compute_s += float(result.get("duration_s") or 0.0)
        self._update_best(run)
        return run

    def lost(self, s: Subject, reason: str, epochs: list[dict[str, Any]]) -> RunRecord:
        """A trial whose worker died (or whose driver did): failed, with the epochs it sent."""
        now = time.time()
        started = s.started or now
        run = self._row(s, "failed", reason=reason, duration_s=now - started)
        run.id = self.store.record_run(run, [EpochRecord.from_metrics(e) for e in epochs],
                                       **self._architecture(s.spec))
        return run

    def answered(self, s: Subject, source: RunRecord) -> RunRecord:
        """A duplicate told the outcome of the run it duplicates; nothing trained."""
        copied = {name: getattr(source, name) for name in RunRecord.MEASURED}
        # What was trained is the source's: a child of `--inherit` trained its own epochs.
        s = replace(s, recipe_id=source.recipe_id or s.recipe_id,
                    fidelity=source.fidelity or s.fidelity)
        run = self._row(s, source.state, reason=source.reason,
                        **{**copied, "duration_s": 0.0},
                        started=time.time(), cached_from=source.cached_from or source.id)
        run.id = self.store.record_run(run, **self._architecture(s.spec))
        self._update_best(run)
        return run

    # -- what the display sees ------------------------------------------------------------
    def _update_best(self, run: RunRecord) -> None:
        if run.state != "complete" or run.val_accuracy is None or not math.isfinite(run.val_accuracy):
            return
        if self.best is None or run.val_accuracy > self.best["val_accuracy"]:
            arch = self.store.architecture(run.arch_id)
            summary = ArchitectureSpec.from_dict(arch).summary() if arch else run.arch_id
            self.best = {"trial": run.trial_number, "val_accuracy": run.val_accuracy,
                         "arch_id": run.arch_id, "params": run.params, "summary": summary}

    def seen(self, run: RunRecord) -> None:
        """A run of an earlier search of this study (for the best so far)."""
        self._update_best(run)

    def emit(self, s: Subject, state: str, *, values: list[float] | None = None,
             run: RunRecord | None = None, reason: str | None = None, count: bool = True,
             source: RunRecord | None = None) -> None:
        """Count `state` and tell the display; `source`: the run a duplicate's answer came from."""
        if count:
            self.counts[state] += 1
        event = TrialEvent(
            number=s.number, state=state, arch_id=s.spec.arch_id, summary=s.spec.summary(),
            values=values, val_accuracy=run.val_accuracy if run else None, params=s.params,
            flops=s.flops, duration_s=run.duration_s if run else None,
            reason=reason or (run.reason if run else None),
            cached_from=run.cached_from if run else None, retry_of=s.retry_of,
            cached_from_trial=source.trial_number if source else None,
            cached_from_study=source.study if source and source.study != self.study else None,
            host=run.host if run else None, inherited_from=_parent_text(s, self.study),
        )
        self.progress.trial(event, dict(self.counts), self.best)


def _parent_text(s: Subject, study: str) -> str | None:
    """The parent of an inherited trial as a person reads it, e.g. `trial 3 of study other`."""
    parent = s.extra.get("inherit") if s.inherited_from is not None else None
    if not parent:
        return None
    where = "" if parent.get("parent_study") == study else f" of study {parent.get('parent_study')}"
    return f"trial {parent.get('parent_trial')}{where}"
