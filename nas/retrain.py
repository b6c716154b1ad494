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

import json
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import EpochRecord, RunRecord, Store
from nas.errors import UserError
from nas.search import start_ray
from search_spaces import ArchitectureSpec

RETRAIN_SUFFIX = ".retrain"
DEFAULT_SEEDS = 3


@dataclass
class Candidate:
    """One architecture to retrain, and where it came from."""

    spec: ArchitectureSpec
    recipe: dict[str, Any]  # the base recipe (epochs and seed are replaced per run)
    retrain_of: dict[str, Any]  # {"study", "trial"} or {"study": None, "trial": None, "file"}
    search_accuracy: float | None = None
    search_fidelity: int | None = None


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
    n = len(x)
    if n != len(y) or n < 2:
        return None
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + tied_x) * (concordant + discordant + tied_y))
    return (concordant - discordant) / denom if denom else None


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


# -- choosing what to retrain -------------------------------------------------------------------
def _base_recipe(store: Store, run: RunRecord) -> dict[str, Any]:
    recipe = store.recipe(run.recipe_id) if run.recipe_id else None
    if recipe is None:
        raise UserError(
            f"the recipe {run.recipe_id} of trial {run.trial_number} of `{run.study}` is not in the store"
        )
    return recipe


def candidates_from_study(
    store: Store, study: str, *, top: int | None = None, trial: int | None = None
) -> list[Candidate]:
    """The `top` best distinct architectures of `study` (default 1), or `trial`'s."""
    if top is not None and trial is not None:
        raise UserError("--top and --trial choose architectures in different ways; give one of them")
    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.study_names()) or "none"
        raise UserError(f"study `{study}` has no runs in {store.display_url}; studies: {known}")
    if trial is not None:
        run = store.run_for_trial(study, trial)
        if run is None:
            raise UserError(f"study `{study}` has no trial {trial}")
        chosen = [run]
    else:
        k = 1 if top is None else top
        if k < 1:
            raise UserError(f"`--top` got {k}; allowed: an integer >= 1")
        complete = sorted(
            (r for r in runs if r.state == "complete" and r.val_accuracy is not None),
            key=lambda r: (-r.val_accuracy, r.params or 0, r.trial_number),
        )
        if not complete:
            raise UserError(f"study `{study}` has no complete trial to retrain (use --trial N)")
        chosen, seen = [], set()
        for r in complete:
            if r.arch_id not in seen:
                seen.add(r.arch_id)
                chosen.append(r)
            if len(chosen) == k:
                break
    out = []
    for r in chosen:
        arch = store.architecture(r.arch_id)
        if arch is None:
            raise UserError(f"architecture {r.arch_id} of trial {r.trial_number} is not in the store")
        out.append(
            Candidate(
                spec=ArchitectureSpec.from_dict(arch),
                recipe=_base_recipe(store, r),
                retrain_of={"study": study, "trial": r.trial_number},
                search_accuracy=r.val_accuracy if r.state == "complete" else None,
                search_fidelity=r.fidelity,
            )
        )
    return out


def candidate_from_file(path: Path) -> tuple[Candidate, str | None]:
    """The architecture in `path` (an architecture.json, e.g. of an export bundle), with the
    bundle's recipe.json and the study it came from (metrics.json) when they lie beside it."""
    from nas.search import resolve_architecture
    from workers import TrainConfig, dataset_info

    recipe: dict[str, Any] = {}
    recipe_file = path.parent / "recipe.json"
    if recipe_file.is_file():
        try:
            recipe = {k: v for k, v in json.loads(recipe_file.read_text()).items() if k != "recipe_id"}
        except ValueError as exc:
            raise UserError(f"{recipe_file}: not valid JSON: {exc}") from None
    try:
        config = TrainConfig.from_dict(recipe)
        data = dataset_info(config)
    except ValueError as exc:
        raise UserError(f"{recipe_file}: {exc}") from None
    spec = resolve_architecture(str(path), in_channels=data.in_channels, num_classes=data.num_classes)
    retrain_of: dict[str, Any] = {"study": None, "trial": None, "file": str(path)}
    study = None
    metrics_file = path.parent / "metrics.json"
    accuracy = fidelity = None
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            if metrics.get("arch_id") == spec.arch_id and metrics.get("study"):
                study = str(metrics["study"])
                retrain_of.update(study=study, trial=metrics.get("trial"))
                accuracy, fidelity = metrics.get("val_accuracy"), metrics.get("fidelity")
        except ValueError:
            pass
    return Candidate(spec, config.to_dict(), retrain_of, accuracy, fidelity), study


# -- running -------------------------------------------------------------------------------------
@dataclass
class _Job:
    cand: Candidate
    result: ArchResult
    config: Any  # TrainConfig
    seed: int
    trial_number: int
    params: int
    flops: int
    started: float = 0.0
    ref: Any = None


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
    from nas.config import STUDY_NAME

    if not STUDY_NAME.match(target):
        raise UserError(f"`--study` got {target!r}: use letters, digits, '_', '.', '-' (at most 128)")

    # One recipe per (architecture, seed): the base recipe at `epochs` epochs, weights kept.
    jobs: list[_Job] = []
    existing = store.runs(target)
    next_number = max((r.trial_number for r in existing), default=-1) + 1
    report = RetrainReport(study=target, source=source, epochs=0, seeds=list(range(seeds)))
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
        cost = complexity(cand.spec, tuple(data.input_size))
        store.save_architecture(cand.spec, params=cost.params, flops=cost.flops, input_size=tuple(data.input_size))
        result = ArchResult(
            arch_id=cand.spec.arch_id, summary=cand.spec.summary(), retrain_of=cand.retrain_of,
            search_accuracy=cand.search_accuracy, search_fidelity=cand.search_fidelity,
        )
        report.archs.append(result)
        for seed in range(seeds):
            config = base.with_(epochs=e, seed=seed, keep_weights=True)
            store.save_recipe(config.recipe_id, config.to_dict(), config.dataset)
            jobs.append(_Job(cand, result, config, seed, next_number, cost.params, cost.flops))
            next_number += 1

    slots = workers or len(jobs)
    started_ray = start_ray(ray_address, slots=slots, cpus_per_trial=cpus_per_trial)
    t0 = time.time()
    try:
        _run_jobs(store, target, jobs, slots, cpus_per_trial, gpus_per_trial, say)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    report.wall_s = time.time() - t0
    report.ranking = ranking(report.archs)
    return report


def _record(store: Store, study: str, job: _Job, state: str, result: dict[str, Any] | None = None,
            reason: str | None = None) -> RetrainRun:
    result = result or {}
    extra: dict[str, Any] = {"retrain_of": job.cand.retrain_of, "seed": job.seed}
    if result.get("traceback"):
        extra["traceback"] = result["traceback"]
    run = RunRecord(
        id=None,
        study=study,
        trial_number=job.trial_number,
        arch_id=job.cand.spec.arch_id,
        recipe_id=job.config.recipe_id,
        dataset=job.config.dataset,
        fidelity=job.config.epochs,
        state=state,
        reason=reason or result.get("reason"),
        params=job.params,
        flops=job.flops,
        **{
            **RunRecord.measured(result),
            "host": result.get("host") or (socket.gethostname() if state == "running" else None),
        },
        started=result.get("started") or job.started or time.time(),
        finished=result.get("finished") or (time.time() if state != "running" else None),
        extra=extra,
    )
    epochs = [EpochRecord.from_metrics(e) for e in result.get("epochs") or []]
    weights = result.get("weights") if state == "complete" else None
    run_id = store.record_run(run, epochs, weights=weights)
    return RetrainRun(
        trial_number=job.trial_number, seed=job.seed, state=state, run_id=run_id,
        reason=run.reason, val_accuracy=run.val_accuracy, duration_s=run.duration_s,
    )


def _run_jobs(store: Store, study: str, jobs: list[_Job], slots: int, cpus: float, gpus: float,
              say: Callable[[str], None]) -> None:
    import ray

    from workers.ray_task import submit_trial

    queue = list(jobs)
    pending: dict[Any, _Job] = {}
    try:
        while queue or pending:
            while queue and len(pending) < slots:
                job = queue.pop(0)
                job.started = time.time()
                # Recorded as running first: the trial number is taken, and a crash leaves a trace.
                _record(store, study, job, "running")
                request = {
                    "spec": job.cand.spec.to_dict(),
                    "config": job.config.to_dict(),
                    "key": f"{study}:{job.trial_number}",
                }
                job.ref = submit_trial(request, num_cpus=cpus, num_gpus=gpus)
                pending[job.ref] = job
            done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker or node died
                    run = _record(store, study, job, "failed", reason=f"worker_lost: {type(exc).__name__}")
                else:
                    state = result.get("state", "failed")
                    if state == "complete" and not result.get("weights"):
                        state, result["reason"] = "failed", "no weights returned"
                    run = _record(store, study, job, state if state in ("complete", "failed") else "failed", result)
                job.result.runs.append(run)
                acc = f"{run.val_accuracy:.4f}" if run.val_accuracy is not None else "-"
                say(
                    f"trial {run.trial_number}: {job.cand.spec.arch_id} seed {job.seed} "
                    f"{run.state}{' (' + run.reason + ')' if run.reason else ''}, val_accuracy {acc}"
                    f"{f', {run.duration_s:.1f}s' if run.duration_s else ''}"
                )
    except BaseException:
        # Ctrl-C or a fatal error: nothing stays `running` in the store.
        for ref, job in pending.items():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
            _record(store, study, job, "failed", reason="interrupted")
        raise  # jobs still queued were never recorded: their trial numbers stay free
