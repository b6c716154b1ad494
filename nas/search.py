"""`run_search`: one search, from a validated `SearchConfig` to a `SearchSummary`.

The driver is the one owner of the Optuna study and of every store write: it asks for
candidates (`Proposer`), answers duplicates and infeasible ones without training (`cache`),
hands the rest to an executor as plain dicts, decides pruning from their epochs
(`PruningRule`), and records every outcome (`Recorder`) before telling Optuna. Workers never
touch the database. The loop itself (`nas.loop.drive`) is shared with `nas retrain`.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import optuna

from db import DatabaseUnavailable, RunRecord, Store, StoreError
from nas.cache import DuplicateCache
from nas.config import SearchConfig
from nas.errors import UserError, one_line
from nas.events import Progress, SearchSummary, TrialEvent, start_info
from nas.executors.base import Epoch, Executor, Job, Lost, Result
from nas.executors.choose import ray_executor
from nas.executors.replay import ReplayExecutor
from nas.inherit import Inheritance
from nas.inputs import Inputs, resolve_inputs
from nas.loop import drive, stop_signals
from nas.losses import LostStreak, is_loss, lost_trials
from nas.proposer import Proposal, Proposer, impossible, resolve_architecture
from nas.pruning import PruningRule
from nas.recorder import Recorder, Subject, trial_ref
from nas.recovery import recover_study
from nas.samplers import make_sampler
from nas.study import best_trials, counted_trials, fail_trial, open_storage, open_study
from nas.weights import Artifacts

__all__ = ["Progress", "Search", "SearchSummary", "TrialEvent", "run_search"]

# Consecutive proposals that break a constraint before we call the constraints impossible.
MAX_CONSECUTIVE_INFEASIBLE = 200
# The parameter limit of a space that sets none (a custom YAML file): above every zoo model
# (ViT-B/16: 86.6 M), below what a typo in a width makes (one stage of width 1e5: ~10^11).
DEFAULT_MAX_PARAMS = 100_000_000


class Search:
    """One invocation of `nas search`: set-up, then the `Work` the loop runs."""

    def __init__(self, config: SearchConfig, *, progress: Progress | None = None,
                 executor: Executor | None = None,
                 optuna_storage: optuna.storages.BaseStorage | None = None,
                 inputs: Inputs | None = None) -> None:
        self.config = config
        self.progress = progress or Progress()
        self.executor = executor  # given: tests (LocalExecutor); else chosen in `run`
        # 1. everything a user can get wrong is checked before Ray starts (the CLI checks it
        # even before importing this module: `inputs`).
        inputs = inputs or resolve_inputs(config)
        self.space, self.table, self.recipe, self.data = (inputs.space, inputs.table,
                                                          inputs.recipe, inputs.data)
        self.input_size = tuple(self.data.input_size)
        self.epochs = self.recipe.epochs
        self.limits = {
            "max_params": (config.max_params or self.space.constraints.get("max_params")
                           or DEFAULT_MAX_PARAMS),
            "max_flops": config.max_flops or self.space.constraints.get("max_flops"),
        }
        shape = {"in_channels": self.data.in_channels, "num_classes": self.data.num_classes}
        self.enqueue_specs = [resolve_architecture(ref, **shape) for ref in config.enqueue]
        self.pruning = PruningRule(config.effective_pruner(self.epochs), epochs=self.epochs,
                                   multi_objective=config.multi_objective)
        # 2. the store, then Optuna's tables beside ours in the same database.
        # Given: benchmarks that replay thousands of searches keep Optuna's side in memory.
        storage = optuna_storage or open_storage(config.storage, retry_s=config.db_retry_s)
        try:
            self.store = Store(config.storage, retry_budget_s=config.db_retry_s)
        except StoreError as exc:
            raise UserError(str(exc)) from None
        self.study = open_study(
            config.study, storage, objectives=config.objectives,
            sampler=lambda offset: make_sampler(
                config.sampler, grid=self.space.grid(), options=config.sampler_options,
                seed=None if config.seed is None else config.seed + offset,
                multi_objective=config.multi_objective),
            pruner=self.pruning.study_pruner(),
            identity={"space": self.space.name, "recipe_id": self.recipe.recipe_id,
                      "objectives": list(config.objectives), "dataset": self.recipe.dataset,
                      "epochs": self.epochs},
        )
        self.store.save_recipe(self.recipe.recipe_id, self.recipe.to_dict(), self.recipe.dataset)
        self.artifacts = Artifacts.open(config.storage, self.store, config.artifacts)
        self.inheritance = Inheritance(self.store, self.artifacts, self.recipe, config=config) \
            if config.inherit and self.table is None else None
        self.proposer = Proposer(
            self.study, self.space, in_channels=self.data.in_channels,
            num_classes=self.data.num_classes, input_size=self.input_size,
            recipe_key=(self.recipe.recipe_id, self.recipe.dataset, self.epochs),
            limits=self.limits, objectives=config.objectives, store=self.store,
        )
        self.cache = DuplicateCache(self.store)
        self.recorder: Recorder | None = None  # made in `run`, with the search's id
        self.pending: dict[str, Proposal] = {}  # key -> training on the executor
        self.ready: list[Proposal] = []  # duplicates whose original did not finish
        self.accounted = 0  # trials of earlier runs that count toward --trials
        self.status = "finished"  # | interrupted | failed | budget | stopped
        self.error: str | None = None  # the one line a failed search ended with
        self._lost_streak = LostStreak()
        self._db_down = False  # the database stopped answering: write nothing more
        self._seq = 0
        self._infeasible_streak = 0
        self._started = 0.0
        self._deadline = math.inf
        self._next_beat = 0.0

    # -- set-up -------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Refuse a study another live driver searches; close what a dead one left RUNNING."""
        self.accounted = recover_study(self.study, store=self.store, recorder=self.recorder,
                                       proposer=self.proposer, recipe=self.recipe,
                                       config=self.config, search_id=self.search_id,
                                       pruning=self.pruning, cache=self.cache)

    def _subject(self, p: Proposal, result: dict[str, Any] | None = None) -> Subject:
        subject = Subject(p.number, p.spec, self.recipe.recipe_id, self.recipe.dataset,
                          self.epochs, p.params, p.flops, retry_of=p.retry_of,
                          started=p.started or None, trial=p.trial)
        if p.parent is None:
            return subject
        return self.inheritance.subject(subject, p.parent, result)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        cfg = self.config
        started = time.time()
        self.search_id = self.store.start_search(cfg.study, cfg.to_record(),
                                                 host=socket.gethostname(), pid=os.getpid())
        self.recorder = Recorder(self.store, cfg.study, input_size=self.input_size,
                                 search_id=self.search_id, progress=self.progress,
                                 artifacts=self.artifacts)
        ray_started, executor, self.runners_note = "", self.executor, None
        try:
            self._recover()
            try:
                self.proposer.enqueue(self.enqueue_specs)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            if executor is None:
                executor, ray_started, self.runners_note = _executor(self)
                self.executor = executor
            self._started = executor.now() - (time.time() - started)  # --timeout counts set-up
            self._deadline = self._started + cfg.timeout if cfg.timeout else math.inf
            self._next_beat = self._started + cfg.heartbeat_s
            self.progress.start(start_info(self, executor))
            with stop_signals() as stop:
                # A Ray we started goes down with us (shutdown kills its workers); cancelling
                # its tasks one by one as well has tripped Ray's task manager into aborting.
                drive(executor, self, stop=stop, cancel_on_stop=ray_started != "started")
        except KeyboardInterrupt:
            self.status = "interrupted"
        except BaseException as exc:
            self.status = "failed"
            self.error = one_line(exc)
            self._db_down = self._db_down or isinstance(exc, DatabaseUnavailable)
            raise
        finally:
            try:
                self.progress.stop()
            finally:  # even when the display fails, the search row and Ray are closed
                _close(self, executor, ray_started)
        return _summary(self, started)

    # -- Work: what the loop asks of a search ----------------------------------------------------
    def _left(self) -> int:
        counts = self.recorder.counts
        done = sum(v for k, v in counts.items() if k != "infeasible") - self.recorder.given_up
        outstanding = len(self.pending) + len(self.ready) + len(self.cache.all_waiting())
        return self.config.trials - (self.accounted + done + outstanding)

    def _may_propose(self, now: float) -> bool:
        if self.status in ("budget", "stopped"):
            return False
        budget_s = (self.config.max_compute_hours or math.inf) * 3600
        if now >= self._deadline or self.recorder.compute_s >= budget_s:
            self.status = "budget"
            return False
        return self._left() > 0 and not self.proposer.exhausted()

    def fill(self, free: int, now: float) -> list[Job]:
        out: list[Job] = []
        if self.status == "stopped":  # `nas stop`: nothing new trains; a resume retries these
            for p in self.ready:
                self._give_up(p, "stopped")
            self.ready = []
        while self.ready and len(out) < free:
            request = self._launch(self.ready.pop(0))
            if request is not None:
                out.append(request)
        while len(out) < free and self._may_propose(now):
            p = self.proposer.ask()
            p.started = time.time()
            if p.spec is None:
                self.proposer.tell(p, "failed")
                self.recorder.counts["failed"] += 1
                continue
            if p.infeasible:
                self._answer_infeasible(p)
                continue
            self._infeasible_streak = 0
            request = self._launch(p)
            if request is not None:
                out.append(request)
        return out

    def _answer_infeasible(self, p: Proposal) -> None:
        subject = self._subject(p)
        self.recorder.architecture(subject)
        values = self.proposer.tell(p, "infeasible")
        self.recorder.emit(subject, "infeasible", values=values, reason="constraints")
        self._infeasible_streak += 1
        if self._infeasible_streak >= MAX_CONSECUTIVE_INFEASIBLE:
            raise UserError(impossible(self.space.name, self.limits, MAX_CONSECUTIVE_INFEASIBLE))

    def _launch(self, p: Proposal) -> Job | None:
        """Answer `p` from a finished duplicate, park it behind one that trains, or return
        the request that trains it."""
        cached = self.cache.finished(p.key)
        if cached is None and self.inheritance is not None:  # trained as a child before
            cached = self.inheritance.answer(self.cache, p.spec.arch_id)
        if cached is not None:
            self._answer_from(p, cached)
            return None
        if self.cache.wait_for(p.key, p):
            return None
        p.parent, start = self.inheritance.parent(p.trial, p.spec) if self.inheritance else (None, None)
        recipe = self.inheritance.recipe if start else self.recipe
        self._seq += 1
        key = f"{p.number}:{self._seq}"
        self.pending[key] = p
        self.cache.started(p.key)
        self.progress.launched(p.number, p.spec.summary())
        return Job(key, p.spec.to_dict(), recipe.to_dict(), stall_s=self.config.stall_s,
                   prunable=self.pruning.active and start is None, parent=start)

    def _answer_from(self, p: Proposal, source: RunRecord) -> None:
        subject = self._subject(p)
        run = self.recorder.answered(subject, source)
        # The dashboard shows user attributes: the trial a person can look up, not a row id.
        p.trial.set_user_attr("cached_from", trial_ref(source, self.config.study))
        values = self.proposer.tell(p, source.state if source.state in ("complete", "pruned")
                                    else "failed", accuracy=source.val_accuracy,
                                    latency_ms=source.latency_ms)
        self.recorder.emit(subject, "cached", values=values, run=run, source=source)

    def finished(self, now: float) -> bool:
        if self.pending or self.ready or self.cache.all_waiting():
            return False
        return not self._may_propose(now)

    def on_epoch(self, event: Epoch) -> bool:
        p = self.pending[event.key]
        p.epochs.append(event.metrics)
        self.progress.epoch(p.number, event.epoch, event.metrics)
        # A child starts near its parent's accuracy: its curve neither prunes nor sets rungs.
        return p.parent is None and self.pruning.should_stop(
            p.trial, event.epoch, event.metrics.get("val_accuracy"), (p.params, p.flops))

    def on_result(self, event: Result) -> None:
        p = self.pending[event.key]  # until it is told: an error here leaves it to `abandon`
        waiting = self.cache.ended(p.key)
        result = event.result
        subject = self._subject(p, result)
        run = self.recorder.result(subject, result)
        self._lost_streak.finished()
        acc = result.get("val_accuracy")
        if run.duration_s is not None:  # the dashboard's own duration also holds the queueing
            p.trial.set_user_attr("train_seconds", round(run.duration_s, 2))
        state = run.state
        if state == "complete" and (acc is None or not math.isfinite(acc)):
            state = "failed"
        values = self.proposer.tell(p, state, accuracy=acc, latency_ms=result.get("latency_ms"),
                                    reason=run.reason)
        del self.pending[event.key]
        if state == run.state:  # a "complete" run without a usable accuracy answers nothing
            self.cache.remember(run)
        if self.inheritance is not None and state == run.state:
            self.inheritance.finished(run, p.spec, p.parent)
        self.recorder.emit(subject, state, values=values, run=run, reason=run.reason)
        for w in waiting:
            if state in ("complete", "pruned") or run.reason == "nan_loss":
                self._answer_from(w, run)
            else:
                self.ready.append(w)

    def on_lost(self, event: Lost) -> None:
        p = self.pending.pop(event.key)
        self.ready.extend(self.cache.ended(p.key))
        self._give_up(p, event.reason)
        self._lost_streak.lost(event.reason, slots=self.executor.capacity if self.executor else 1)

    def _give_up(self, p: Proposal, reason: str) -> None:
        """`p` will never report: a failed run row, FAIL in Optuna, and a retry if allowed."""
        subject = self._subject(p)
        self.recorder.lost(subject, reason, p.epochs)
        try:
            p.trial.set_user_attr("reason", reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another process has closed it (this driver was taken for dead)
        retried = fail_trial(self.study, p.number, p.trial.params, p.trial.user_attrs,
                             max_retries=self.config.max_retries)
        # A retried trial is accounted for by its retry (and said in the summary); a lost one
        # whose retries ran out is shown as failed but not counted toward --trials.
        self.recorder.retried += bool(retried)
        self.recorder.given_up += not retried and is_loss(reason)
        self.recorder.emit(subject, "failed", reason=reason + (" (retrying)" if retried else ""),
                           count=not retried)

    def abandon(self, keys: list[str], reason: str) -> None:
        """Everything not yet told: what runs (`keys`, cancelled), what was handed out but
        not submitted, duplicates waiting for an original, and those ready to retrain."""
        for p in [*self.pending.values(), *self.ready, *self.cache.clear()]:
            try:  # with the database gone the rest stays RUNNING: the next run closes it
                self._db_down or self._give_up(p, reason)
            except DatabaseUnavailable:
                self._db_down = True
        self.pending.clear()
        self.ready = []

    def tick(self, now: float, quiet: dict[str, float]) -> None:
        if now < self._next_beat:
            return
        self._next_beat = now + self.config.heartbeat_s
        # What `nas status` shows of each running trial: how long since its last sign of life.
        self.store.heartbeat(self.search_id, live={
            str(self.pending[key].number): round(s, 1) for key, s in quiet.items()
            if key in self.pending})
        if self.status == "finished" and self.store.stop_requested(self.search_id):  # nas stop
            self.status = "stopped"  # propose no more, finish what runs
        self.progress.tick({
            "elapsed_s": now - self._started, "busy": len(quiet),
            "slots": self.executor.capacity if self.executor else 0,
            "counts": dict(self.recorder.counts), "best": self.recorder.best,
            "compute_s": self.recorder.compute_s,
        })


def _executor(search: Search) -> tuple[Executor, str, str | None]:
    """Where the trials run: a replay table's, else Ray (see `ray_executor`)."""
    cfg = search.config
    if search.table is not None:
        return ReplayExecutor(search.table, seed=cfg.seed or 0, capacity=cfg.workers or 1), "", None
    return ray_executor(address=cfg.ray_address, workers=cfg.workers,
                        cpus_per_trial=cfg.cpus_per_trial, gpus_per_trial=cfg.gpus_per_trial)


def _summary(search: Search, started: float) -> SearchSummary:
    cfg, recorder = search.config, search.recorder
    trials = search.study.get_trials(deepcopy=False)
    return SearchSummary(
        study=cfg.study, storage=search.store.display_url, status=search.status,
        counts={**recorder.counts, "retried": recorder.retried},
        best=best_trials(search.study, search.store, cfg.objectives),
        wall_s=time.time() - started, compute_s=recorder.compute_s,
        trials_in_study=len(trials),
        counted=counted_trials(trials, lost_trials(search.store.runs(cfg.study))),
    )


def _close(search: Search, executor: Executor | None, ray_started: str) -> None:
    """Record how `search` ended; close its executor and the Ray it started."""
    try:
        ended = {"budget": "finished", "stopped": "interrupted"}
        if not search._db_down:  # else its heartbeat goes stale: the next run closes it
            search.store.end_search(search.search_id, ended.get(search.status, search.status),
                                    error=search.error)
    finally:
        if executor is not None and search.executor is executor:
            executor.close()
        if ray_started:
            import ray

            ray.shutdown()


def run_search(config: SearchConfig, *, progress: Progress | None = None,
               executor: Executor | None = None, inputs: Inputs | None = None) -> SearchSummary:
    """Run (or resume) the search `config` describes; see the module docstring.

    Args:
        config: the validated search (`nas.config.build_config`).
        progress: display hooks (`nas.progress`); none by default.
        executor: where trials run; default Ray (resident runners of a joined cluster that
            has them, else one Ray task per trial).
        inputs: `nas.inputs.resolve_inputs(config)`, if the caller has checked them already.
    """
    return Search(config, progress=progress, executor=executor, inputs=inputs).run()
