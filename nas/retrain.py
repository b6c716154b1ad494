"""`nas retrain`: train chosen architectures at full fidelity with several seeds, on Ray.

A search trains each candidate briefly (its fidelity); what people ship is the same network
trained properly. `retrain` takes the best architecture of a study (or the K best, or one
trial, or an architecture.json), trains it with S seeds in parallel on Ray workers (the same
`submit_trial` the search uses), and records every run in the store under the study
`<STUDY>.retrain` with `fidelity` = the epochs trained, `extra.retrain_of` = where the
architecture came from and `extra.seed`. Weights are kept, so `nas export <STUDY>.retrain`
exports the best retrained run. With `top` > 1 it also says whether the search's ranking holds.

Like the search, this process is the only writer to the store; workers get plain dicts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas.config import STUDY_NAME
from nas.errors import UserError
from nas.executors.base import Epoch, Executor, Job, Lost, Result
from nas.executors.choose import ray_executor
from nas.loop import drive, stop_signals
from nas.recorder import Recorder, Subject
from nas.retrain_choice import Candidate, candidate_from_file, candidates_from_study
from nas.weights import Artifacts

RETRAIN_SUFFIX = ".retrain"
DEFAULT_SEEDS = 3


@dataclass
class RetrainRun:
    trial_number: int
    seed: int
    state: str
    run_id: int | None = None
    reason: str | None = None
    val_accuracy: float | None = None
    duration_s: float | None = None


@dataclass
class ArchResult:
    arch_id: str
    summary: str
    retrain_of: dict[str, Any]
    search_accuracy: float | None
    search_fidelity: int | None
    runs: list[RetrainRun] = field(default_factory=list)

    @property
    def accuracies(self) -> list[float]:
        return [r.val_accuracy for r in self.runs if r.state == "complete" and r.val_accuracy is not None]

    @property
    def mean(self) -> float | None:
        acc = self.accuracies
        return sum(acc) / len(acc) if acc else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (0 for a single run)."""
        acc = self.accuracies
        if not acc:
            return None
        if len(acc) == 1:
            return 0.0
        m = sum(acc) / len(acc)
        return math.sqrt(sum((a - m) ** 2 for a in acc) / (len(acc) - 1))


@dataclass
class RetrainReport:
    study: str  # where the runs were recorded
    source: str
    epochs: int
    seeds: list[int]
    archs: list[ArchResult] = field(default_factory=list)
    ranking: dict[str, Any] | None = None
    wall_s: float = 0.0

    @property
    def runs(self) -> list[RetrainRun]:
        return [r for a in self.archs for r in a.runs]


# -- ranking ---------------------------------------------------------------------------------------
def kendall_tau(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of two paired lists (None when undefined: fewer than 2 pairs, or a list
    with all values tied)."""
    if len(x) != len(y) or len(x) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(x, y).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


def ranking(archs: list[ArchResult]) -> dict[str, Any] | None:
    """Does the search's order (accuracy at search fidelity) hold after retraining (mean)?"""
    rows = [a for a in archs if a.search_accuracy is not None and a.mean is not None]
    if len(rows) < 2:
        return None
    by_search = [a.arch_id for a in sorted(rows, key=lambda a: -a.search_accuracy)]
    by_retrain = [a.arch_id for a in sorted(rows, key=lambda a: -a.mean)]
    tau = kendall_tau([a.search_accuracy for a in rows], [a.mean for a in rows])
    return {
        "search_order": by_search,
        "retrain_order": by_retrain,
        "kendall_tau": tau,
        "holds": by_search == by_retrain,
        "n": len(rows),
    }


# -- running -------------------------------------------------------------------------------------
@dataclass
class _Job:
    cand: Candidate
    result: ArchResult
    config: Any  # TrainConfig
    seed: int
    subject: Subject


def retrain(
    store: Store,
    source: str,
    *,
    epochs: int | None = None,
    seeds: int = DEFAULT_SEEDS,
    top: int | None = None,
    trial: int | None = None,
    study: str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
    artifacts: Artifacts | None = None,
) -> RetrainReport:
    """Retrain the chosen architecture(s) of `source` with `seeds` seeds each; see the module
    docstring.

    Args:
        store: the store to read the study from and record the runs in.
        source: a study name, or a path to an architecture.json.
        epochs: epochs per run (the fidelity); default the recipe default (8), and never fewer
            than the search trained.
        seeds: runs per architecture, with seeds 0..seeds-1.
        top: retrain the `top` best distinct architectures of the study (default 1).
        trial: retrain this trial's architecture instead (any state, e.g. pruned).
        study: where to record the runs; default `<source study>.retrain`.
        ray_address / workers / cpus_per_trial / gpus_per_trial: as for `nas search`.
        progress: called with one line per finished run.
        executor: where the runs train; default one Ray task per run.
        artifacts: where the trained weights go (default: the store's, `Artifacts.open`).
    """
    from search_spaces import complexity
    from workers import TrainConfig, dataset_info

    say = progress or (lambda line: None)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"`--seeds` got {seeds!r}; allowed: an integer >= 1")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise UserError(f"`--epochs` got {epochs!r}; allowed: an integer >= 1")
    if workers is not None and workers < 1:
        raise UserError(f"`--workers` got {workers!r}; allowed: an integer >= 1")
    path = Path(source)
    if path.suffix == ".json" or path.is_file():
        if top is not None or trial is not None:
            raise UserError("--top and --trial choose from a study; an architecture file has one architecture")
        if not path.is_file():
            raise UserError(f"architecture file `{source}` does not exist")
        cand, origin = candidate_from_file(path)
        cands = [cand]
        default_study = f"{origin or cand.spec.arch_id}{RETRAIN_SUFFIX}"
    else:
        cands = candidates_from_study(store, source, top=top, trial=trial)
        default_study = f"{source}{RETRAIN_SUFFIX}"
    target = study or default_study
    if not STUDY_NAME.match(target):
        raise UserError(f"`--study` got {target!r}: use letters, digits, '_', '.', '-' (at most 128)")
    # Before anything trains: a bad `--artifacts` is said now, not after the training.
    artifacts = artifacts or Artifacts.open(store.url, store)

    # One recipe per (architecture, seed): the base recipe at `epochs` epochs, weights kept.
    jobs: list[_Job] = []
    existing = store.runs(target)
    next_number = max((r.trial_number for r in existing), default=-1) + 1
    report = RetrainReport(study=target, source=source, epochs=0, seeds=list(range(seeds)))
    input_size: tuple[int, int] = (0, 0)
    for cand in cands:
        try:
            base = TrainConfig.from_dict(cand.recipe)
        except ValueError as exc:
            raise UserError(f"recipe of {cand.spec.arch_id}: {exc}") from None
        e = epochs or max(TrainConfig().epochs, cand.search_fidelity or 0, base.epochs)
        report.epochs = max(report.epochs, e)
        try:
            data = dataset_info(base)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        input_size = tuple(data.input_size)
        cost = complexity(cand.spec, input_size)
        store.save_architecture(cand.spec, params=cost.params, flops=cost.flops, input_size=input_size)
        result = ArchResult(
            arch_id=cand.spec.arch_id, summary=cand.spec.summary(), retrain_of=cand.retrain_of,
            search_accuracy=cand.search_accuracy, search_fidelity=cand.search_fidelity,
        )
        report.archs.append(result)
        for seed in range(seeds):
            config = base.with_(epochs=e, seed=seed, keep_weights=True)
            store.save_recipe(config.recipe_id, config.to_dict(), config.dataset)
            subject = Subject(next_number, cand.spec, config.recipe_id, config.dataset, e,
                              cost.params, cost.flops,
                              extra={"retrain_of": cand.retrain_of, "seed": seed})
            jobs.append(_Job(cand, result, config, seed, subject))
            next_number += 1

    work = _Retrain(Recorder(store, target, input_size=input_size, artifacts=artifacts), jobs, say)
    started_ray = ""
    if executor is None:  # resident runners of a cluster it was told to join, else Ray tasks
        executor, started_ray, _ = ray_executor(
            address=ray_address, workers=workers or len(jobs), cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial)
    t0 = time.time()
    try:
        with stop_signals() as stop:
            # A Ray it started goes down with it; cancelling tasks one by one as well has
            # tripped Ray's task manager into aborting.
            drive(executor, work, stop=stop, cancel_on_stop=started_ray != "started")
    finally:
        executor.close()
        if started_ray:
            import ray

            ray.shutdown()
    report.wall_s = time.time() - t0
    report.ranking = ranking(report.archs)
    return report


class _Retrain:
    """The retrain's `Work`: a fixed list of runs, no pruning, every outcome recorded.
    Jobs still queued when it stops were never recorded: their trial numbers stay free."""

    def __init__(self, recorder: Recorder, jobs: list[_Job], say: Callable[[str], None]) -> None:
        self.recorder, self.queue, self.say = recorder, list(jobs), say
        self.pending: dict[str, _Job] = {}

    def fill(self, free: int, now: float) -> list[Job]:
        out = []
        while self.queue and len(out) < free:
            job = self.queue.pop(0)
            job.subject.started = time.time()
            self.recorder.running(job.subject)
            key = str(job.subject.number)
            self.pending[key] = job
            out.append(Job(key, job.cand.spec.to_dict(), job.config.to_dict(), prunable=False))
        return out

    def finished(self, now: float) -> bool:
        return not self.queue and not self.pending

    def on_epoch(self, event: Epoch) -> bool:
        return False

    def on_result(self, event: Result) -> None:
        job = self.pending.pop(event.key)
        result = dict(event.result)
        if result.get("state") == "complete" and not result.get("weights"):
            result.update(state="failed", reason="no weights returned")
        elif result.get("state") not in ("complete", "failed"):
            result["state"] = "failed"
        if result["state"] != "complete":
            result.pop("weights", None)
        self._done(job, self.recorder.result(job.subject, result))

    def on_lost(self, event: Lost) -> None:
        job = self.pending.pop(event.key)
        self._done(job, self.recorder.lost(job.subject, event.reason, []))

    def abandon(self, keys: list[str], reason: str) -> None:
        for key in keys:
            job = self.pending.pop(key, None)
            if job is not None:  # else its outcome was recorded before the stop
                self.recorder.lost(job.subject, reason, [])

    def tick(self, now: float, quiet: dict[str, float]) -> None:
        pass

    def _done(self, job: _Job, run: RunRecord) -> None:
        job.result.runs.append(RetrainRun(
            trial_number=run.trial_number, seed=job.seed, state=run.state, run_id=run.id,
            reason=run.reason, val_accuracy=run.val_accuracy, duration_s=run.duration_s,
        ))
        acc = f"{run.val_accuracy:.4f}" if run.val_accuracy is not None else "-"
        self.say(
            f"trial {run.trial_number}: {job.cand.spec.arch_id} seed {job.seed} "
            f"{run.state}{' (' + run.reason + ')' if run.reason else ''}, val_accuracy {acc}"
            f"{f', {run.duration_s:.1f}s' if run.duration_s else ''}"
        )
