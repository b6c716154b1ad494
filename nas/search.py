"""`run_search`: the one owner of the Optuna study and of every store write during a search.

The driver asks Optuna for candidates, turns them into specs, answers duplicates and
infeasible candidates without training, hands the rest to Ray workers as plain dicts,
decides pruning from their per-epoch reports, and records every outcome in the store before
telling Optuna. Workers never touch the database.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY as CONSTRAINTS_KEY

from db import EpochRecord, RunRecord, Store, StoreError
from nas.config import SearchConfig
from nas.errors import UserError
from nas.optuna_io import BatchingStorage, dashboard_note, fix_params, tell
from nas.samplers import AskTellGridSampler, CostAwareHalving, make_pruner, make_sampler
from search_spaces import ArchitectureSpec, SearchSpace, complexity, load_space, zoo
from search_spaces.spec import block_label
from workers import TrainConfig, dataset_info
from workers.results import NOT_STARTED

TrialState = optuna.trial.TrialState
OBJECTIVE_DIRECTIONS = {
    "accuracy": "maximize",
    "params": "minimize",
    "flops": "minimize",
    "latency": "minimize",
}
# Consecutive proposals that break a constraint before we call the constraints impossible.
MAX_CONSECUTIVE_INFEASIBLE = 200
# A search whose heartbeat is older than this many heartbeat intervals is taken as dead.
STALE_HEARTBEATS = 3
# Queue a trial behind each busy worker (`prefetch` auto) while this run's trials take less
# than this many seconds: the worker then starts its next trial without waiting for the
# driver to record the last one and ask for another (~30-50 ms a trial on a 2-core machine,
# bench/README.md). Longer trials gain nothing from it and the sampler would see less.
PREFETCH_BELOW_S = 20.0
NOT_STARTED_REASON = "not_started: the search stopped before this queued trial began"
# Trial numbers at which the store's and Optuna's tables get fresh planner statistics
# (`Store.refresh_statistics`).
ANALYZE_AT = (100, 1000)


@dataclass
class TrialEvent:
    """What the progress display and `--json` see of one finished trial."""

    number: int
    state: str  # complete | pruned | failed | cached | infeasible | not_started
    arch_id: str
    summary: str
    values: list[float] | None = None
    val_accuracy: float | None = None
    params: int | None = None
    flops: int | None = None
    duration_s: float | None = None
    reason: str | None = None
    cached_from: int | None = None
    retry_of: int | None = None
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchSummary:
    """The outcome of one `nas search` invocation."""

    study: str
    storage: str
    status: str  # finished | interrupted | budget
    counts: dict[str, int] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    compute_s: float = 0.0
    trials_in_study: int = 0


@dataclass
class _Pending:
    """A candidate between `ask` and `tell`."""

    trial: optuna.trial.Trial
    spec: ArchitectureSpec
    key: tuple[str, str, str, int]
    params: int
    flops: int
    retry_of: int | None
    started: float
    ref: Any = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    runner: int | None = None  # the resident runner training it, if any
    queued: bool = False  # waits behind a busy worker and can be revoked until it starts


class Progress:
    """Hooks for the CLI's display; the default does nothing."""

    def start(self, info: dict[str, Any]) -> None: ...
    def trial(self, event: TrialEvent, counts: dict[str, int], best: dict[str, Any] | None) -> None: ...
    def epoch(self, number: int, epoch: int, metrics: dict[str, Any]) -> None: ...
    def tick(self, status: dict[str, Any]) -> None: ...
    def stop(self) -> None: ...


def real_url(url: str) -> str:
    """`url` validated and with its driver pinned (psycopg 3), password included."""
    from db.engine import normalize_url

    try:
        return normalize_url(url).render_as_string(hide_password=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage on `url`, with `pool_pre_ping` for PostgreSQL (#5600) and the
    store's connection arguments."""
    from sqlalchemy.engine import make_url

    from db.engine import pg_connect_args
    from nas.errors import mask_url

    engine_kwargs: dict[str, Any] = {}
    real = real_url(url)
    if real.startswith("postgresql"):
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = pg_connect_args(make_url(real))
    elif real.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}
    try:
        # Optuna stamps a new database with its own schema head, then checks the schema
        # against that same head: on a new SQLite file the check cannot fail, and it loads
        # Optuna's migration scripts once more (~33 ms of the ~100 ms a new storage takes).
        return optuna.storages.RDBStorage(
            real, engine_kwargs=engine_kwargs, skip_compatibility_check=new_sqlite_file(real)
        )
    except Exception as exc:  # noqa: BLE001 - Optuna wraps driver errors in many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first = first.replace(real, mask_url(real))
        raise UserError(f"cannot open the storage at {mask_url(url)}: {first}") from None


def new_sqlite_file(url: str) -> bool:
    """Whether `url` is an SQLite database file that does not exist yet, or is empty."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""  # never in-memory here: `real_url` refuses those
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") or database.startswith("file:"):
        return False  # a `file:` URI may name an existing file under another spelling
    path = Path(database)
    return not path.exists() or path.stat().st_size == 0


def resolve_architecture(ref: str, *, in_channels: int, num_classes: int) -> ArchitectureSpec:
    """A zoo name or a path to an architecture.json, adapted to the dataset's shape."""
    import json
    from dataclasses import replace
    from pathlib import Path

    path = Path(ref)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise UserError(f"architecture file `{ref}` does not exist")
        try:
            data = json.loads(path.read_text())
            spec = ArchitectureSpec.from_dict(data.get("spec", data))
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"{ref}: not an architecture: {exc}") from None
    else:
        try:
            spec = zoo.get(ref)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return replace(spec, in_channels=in_channels, num_classes=num_classes)


class Search:
    """One invocation of `nas search`."""

    def __init__(self, config: SearchConfig, *, progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or Progress()
        self.pool: Any = None  # resident runners (nas/pool.py), when the cluster has them
        self.pool_note: str | None = None  # why the cluster's runners are not used
        self.broker: Any = None  # the ReportBroker this search reads its epochs from
        self._own_broker = False  # made for this search (else the pool's, shared)
        self._channel = secrets.token_hex(8)  # this search's trial keys start with it
        # 1. everything a user can get wrong is checked before Ray starts.
        self.space: SearchSpace = _load_space(config.space)
        try:
            # The space's recipe defaults (e.g. AdamW for ConvNeXt), then the user's settings.
            self.recipe = TrainConfig.from_dict({**self.space.train, **config.train})
        except ValueError as exc:
            where = f" (with `train` of space {self.space.source})" if self.space.train else ""
            raise UserError(f"training recipe{where}: {exc}") from None
        try:
            self.data = dataset_info(self.recipe)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.input_size = tuple(self.data.input_size)
        self.epochs = self.recipe.epochs
        self.limits = {
            "max_params": config.max_params or self.space.constraints.get("max_params"),
            "max_flops": config.max_flops or self.space.constraints.get("max_flops"),
        }
        self.enqueue_specs = [  # enqueued into the study one at a time, as they are asked for
            resolve_architecture(
                ref, in_channels=self.data.in_channels, num_classes=self.data.num_classes
            )
            for ref in config.enqueue
        ]
        self.pruner_name = config.effective_pruner(self.epochs)
        self.cost_objectives = [o for o in config.objectives if o != "accuracy"]
        # 2. the store, then Optuna's tables beside ours in the same database.
        self.storage = BatchingStorage(open_storage(config.storage))
        try:
            self.store = Store(config.storage)
        except StoreError as exc:
            raise UserError(str(exc)) from None
        self.study = self._open_study()
        self.store.save_recipe(self.recipe.recipe_id, self.recipe.to_dict(), self.recipe.dataset)
        self.mo_pruner = (
            CostAwareHalving(self.epochs)
            if config.multi_objective and self.pruner_name != "none"
            else None
        )
        self.pending: dict[str, _Pending] = {}  # key -> running on a worker
        self.waiting: dict[tuple, list[_Pending]] = {}  # dedup key -> trials waiting on it
        self.inflight_keys: dict[tuple, str] = {}  # dedup key -> pending key
        self._infeasible_streak = 0
        self._stop_requested = False
        self.counts = {"complete": 0, "pruned": 0, "failed": 0, "cached": 0, "infeasible": 0}
        self.compute_s = 0.0
        self.known: dict[tuple, RunRecord] = {}
        self.saved_archs: set[str] = set()  # architectures written to the store by this run
        self.best: dict[str, Any] | None = None
        self._seq = 0
        self._to_enqueue: list[dict[str, Any]] = []
        self.slots = 1
        self._durations: list[float] = []  # seconds of this run's trained trials
        self._revoked: set[str] = set()
        self._may_queue = False
        self._tail = False  # the last trials: queued ones claim their start (see _fill)
        self._stolen = 0  # queued trials moved to a free runner (_steal)
        self._analyzed = 0  # how many of ANALYZE_AT this run has passed
        self._prunes = self.mo_pruner is not None or (
            self.pruner_name != "none" and not config.multi_objective
        )

    # -- set-up -------------------------------------------------------------------------------
    def _open_study(self) -> optuna.Study:
        directions = [OBJECTIVE_DIRECTIONS[o] for o in self.config.objectives]
        sampler = make_sampler(self.config.sampler, seed=self.config.seed, grid=self.space.grid())
        pruner = make_pruner(self.pruner_name, self.epochs) if not self.config.multi_objective else None
        try:
            study = optuna.create_study(
                study_name=self.config.study,
                storage=self.storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
        except ValueError as exc:
            raise UserError(f"study `{self.config.study}`: {exc}") from None
        existing = len(study.get_trials(deepcopy=False))
        if existing and self.config.seed is not None:
            # Resuming with the same seed would replay the same proposals (all answered from
            # the cache); offset it by the history so a resumed search explores on, still
            # reproducibly.
            study.sampler = make_sampler(
                self.config.sampler, seed=self.config.seed + existing, grid=self.space.grid()
            )
        if [d.name.lower() for d in study.directions] != directions:
            have = ",".join(d.name.lower() for d in study.directions)
            raise UserError(
                f"study `{self.config.study}` exists with directions {have}; "
                f"--objectives {','.join(self.config.objectives)} needs {','.join(directions)}. "
                "Use another --study name."
            )
        recorded = study.user_attrs.get("resnas")
        mine = {"space": self.space.name, "recipe_id": self.recipe.recipe_id,
                "objectives": list(self.config.objectives)}
        if recorded and (recorded.get("space"), recorded.get("recipe_id")) != (mine["space"], mine["recipe_id"]):
            raise UserError(
                f"study `{self.config.study}` was created with space `{recorded.get('space')}` and "
                f"recipe {recorded.get('recipe_id')}; this run asks for space `{mine['space']}` and "
                f"recipe {mine['recipe_id']}. Use another --study name, or the same options."
            )
        if not recorded:
            study.set_user_attr("resnas", mine)
            study.set_user_attr("dataset", self.recipe.dataset)
            study.set_user_attr("epochs", self.epochs)
        return study

    def _recover(self) -> int:
        """Close trials a dead driver left RUNNING and queue their retries; count the rest."""
        searches = [s for s in self.store.searches(self.config.study) if s.status == "running"]
        now = time.time()
        for s in searches:
            if s.id == self.search_id:
                continue
            age = now - (s.heartbeat or s.started or 0)
            if _alive(s.host, s.pid) and age < STALE_HEARTBEATS * self.config.heartbeat_s:
                raise UserError(
                    f"study `{self.config.study}` is being searched right now by {s.host} pid "
                    f"{s.pid} (heartbeat {age:.0f} s ago). Wait for it, or use another --study."
                )
            self.store.end_search(s.id, "interrupted")
        accounted = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING:
                self._tell_abandoned(t.number, t.params, t.user_attrs, "driver_lost")
                continue
            if t.state == TrialState.WAITING:
                continue
            if t.user_attrs.get("retried") or t.user_attrs.get("infeasible"):
                continue
            if t.user_attrs.get("reason") == NOT_STARTED_REASON:
                continue
            accounted += 1
        for run in self.store.runs(self.config.study):
            if run.state in ("complete", "pruned") and run.cached_from is None:
                self.known.setdefault(self._key_of(run), run)
            self._update_best_from_run(run)
        return accounted

    def _tell_abandoned(self, number: int, params: dict, attrs: dict, reason: str) -> bool:
        """Mark a trial that will never report as failed; queue a retry if allowed (-> True)."""
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        attempt = int(attrs.get("attempt", 0))
        retry = attempt < self.config.max_retries
        try:
            # Attributes first: a finished trial can no longer be changed.
            storage.set_trial_user_attr(trial_id, "reason", reason)
            if retry:
                storage.set_trial_user_attr(trial_id, "retried", True)
            self.study.tell(number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # somebody already finished it: nothing to retry
        if retry:
            self.study.enqueue_trial(
                params,
                user_attrs={"retry_of": number, "attempt": attempt + 1},
                skip_if_exists=False,
            )
        return retry

    @staticmethod
    def _key_of(run: RunRecord) -> tuple:
        return (run.arch_id, run.recipe_id, run.dataset, run.fidelity)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        import ray

        started = time.time()
        self.search_id = self.store.start_search(
            self.config.study, self.config.to_record(), host=socket.gethostname(), pid=os.getpid()
        )
        status = "finished"
        we_started_ray = ""
        restore_sigint = self._catch_sigint()
        try:
            accounted = self._recover()
            self._enqueue_requested()
            we_started_ray = start_ray(
                self.config.ray_address,
                slots=self.config.workers,
                cpus_per_trial=self.config.cpus_per_trial,
            )
            if we_started_ray != "started":  # a cluster that outlives us may hold warm runners
                from nas.pool import find_pool

                self.pool, self.pool_note = find_pool(
                    cpus=self.config.cpus_per_trial, gpus=self.config.gpus_per_trial,
                    limit=self.config.workers,
                )
            slots = self.slots = len(self.pool) if self.pool else self._slots(ray)
            # Only a runner trains one trial at a time. A Ray task hands its CPU back while
            # it waits on the broker (each epoch), and Ray starts a queued task beside it.
            self._may_queue = self.pool is not None
            self._open_broker(ray)
            self.progress.start(
                {
                    "study": self.config.study,
                    "storage": self.store.display_url,
                    "target": self.config.trials,
                    "already": accounted,
                    "slots": slots,
                    "space": self.space.name,
                    "pruner": self.pruner_name,
                    "sampler": self.config.sampler,
                    "objectives": list(self.config.objectives),
                    "timeout_s": self.config.timeout,
                    "compute_budget_s": (self.config.max_compute_hours or 0) * 3600 or None,
                    "runners": len(self.pool) if self.pool else 0,
                    "runners_note": self.pool_note,
                }
            )
            status = self._loop(ray, accounted, slots, started)
        except KeyboardInterrupt:
            status = "interrupted"
            # A Ray we started goes down with us (shutdown kills its workers); cancelling
            # tasks one by one as well has tripped Ray's task manager into aborting.
            self._abandon_all(ray, "interrupted", cancel=not we_started_ray)
        finally:
            restore_sigint()
            self.progress.stop()
            try:
                # Running out of budget is a normal end of a search.
                self.store.end_search(self.search_id, "finished" if status == "budget" else status)
            finally:
                self._close_broker(ray)
                if we_started_ray:
                    ray.shutdown()
        summary = SearchSummary(
            study=self.config.study,
            storage=self.store.display_url,
            status=status,
            counts=dict(self.counts),
            best=best_trials(self.study, self.store, self.config.objectives),
            wall_s=time.time() - started,
            compute_s=self.compute_s,
            trials_in_study=len(self.study.get_trials(deepcopy=False)),
        )
        self.study.set_user_attr("cached_trials", _count_cached(self.store, self.config.study))
        return summary

    def _open_broker(self, ray: Any) -> None:
        """The pool's broker when it answers, else one for this search alone."""
        from workers.ray_task import ReportBroker, code_version, on_this_node

        shared = self.pool.broker if self.pool is not None else None
        if shared is not None:
            try:  # one round trip: opens the channel and says which code the broker runs
                if ray.get(shared.open.remote(self._channel), timeout=10) == code_version():
                    self.broker = shared
                    return
                shared.close.remote(self._channel)  # older code (`nas pool up` renews it)
            except Exception:  # noqa: BLE001 - gone since the pool was found
                pass
        self.broker = ReportBroker.options(scheduling_strategy=on_this_node()).remote(self._channel)
        self._own_broker = True

    def _close_broker(self, ray: Any) -> None:
        """On a Ray that outlives the search (the caller's own), its own broker would stay,
        an idle process (~1% of a core) per search; the pool's forgets the search's keys."""
        if self.broker is None:
            return
        try:
            if self._own_broker:
                ray.kill(self.broker, no_restart=True)
            else:
                ray.get(self.broker.close.remote(self._channel), timeout=10)
        except Exception:  # noqa: BLE001 - already gone: nothing left to free
            pass

    def _slots(self, ray: Any) -> int:
        if self.config.workers:
            return self.config.workers
        cpus = ray.cluster_resources().get("CPU", 1)
        by_cpu = max(1, int(cpus // self.config.cpus_per_trial))
        if self.config.gpus_per_trial:
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus <= 0:
                raise UserError(
                    f"--gpus-per-trial {self.config.gpus_per_trial} but the Ray cluster has no GPU"
                )
            return max(1, min(by_cpu, int(gpus // self.config.gpus_per_trial)))
        return by_cpu

    def _enqueue_requested(self) -> None:
        """Check every --enqueue architecture now; each becomes the parameters of the next
        asked trial (`_propose`, `fix_params`), which is what Optuna's `enqueue_trial` then
        `ask` give, without the queue: enqueueing all up front cost ~10 ms each before the
        first trial could start (`skip_if_exists` reads the whole study every time), and a
        waiting queue makes every `ask` slower. Those the study already holds are skipped,
        as Optuna's `skip_if_exists` does, with one read."""
        wanted = []
        for spec in self.enqueue_specs:
            params = self.space.params_for(spec)
            if params is None:
                raise UserError(
                    f"--enqueue {spec.name or spec.arch_id}: this architecture is not in the space "
                    f"`{self.space.name}` (it cannot be expressed with its choices)"
                )
            wanted.append(params)
        if not wanted:
            return
        held = [t.system_attrs.get("fixed_params", t.params)
                for t in self.study.get_trials(deepcopy=False)]
        for params in wanted:
            if params not in held:
                held.append(params)
                self._to_enqueue.append(params)

    def _loop(self, ray: Any, accounted: int, slots: int, started: float) -> str:
        cfg = self.config
        deadline = started + cfg.timeout if cfg.timeout else math.inf
        budget_s = cfg.max_compute_hours * 3600 if cfg.max_compute_hours else math.inf
        next_beat = time.time() + cfg.heartbeat_s
        reports_ref = None
        status = "finished"
        self._infeasible_streak = 0
        while True:
            if self._stop_requested:
                raise KeyboardInterrupt
            if self._fill(accounted, slots, deadline, budget_s):
                status = "budget"
                self._revoke_queued(ray)
            if not self.pending and not self.waiting:
                break
            if time.time() >= next_beat:
                self.store.heartbeat(self.search_id)
                next_beat = time.time() + cfg.heartbeat_s
                self.progress.tick(self._status(started, slots))
            if reports_ref is None:
                reports_ref = self.broker.next_reports.remote(self._channel, 0.5)
            refs = [p.ref for p in self.pending.values()]
            ready, _ = ray.wait(refs + [reports_ref], num_returns=1, timeout=1.0)
            if reports_ref in ready:
                self._handle_reports(ray.get(reports_ref))
                reports_ref = None
            if ready and refs:
                finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                done_refs = set(finished)
                landed = [k for k, p in self.pending.items() if p.ref in done_refs]
                landed_trials = [self.pending.pop(k) for k in landed]
                if self.pool is not None:
                    for p in landed_trials:
                        self.pool.release(p.runner)
                # Refill the freed slots first and record afterwards: the store writes and
                # Optuna tells of a finished trial stay off the workers' critical path.
                if self._fill(accounted, slots, deadline, budget_s, settling=len(landed_trials)):
                    status = "budget"
                    self._revoke_queued(ray)
                elif self.pool is not None:
                    self._steal(ray)
                for p in landed_trials:
                    self._finish(ray, p)
        if self.pending:  # pragma: no cover - defensive
            self._abandon_all(ray, "interrupted")
        return status

    def _fill(
        self, accounted: int, slots: int, deadline: float, budget_s: float, settling: int = 0
    ) -> bool:
        """Ask for as many candidates as there are free slots and trials left.

        `settling` counts finished trials not yet recorded (they still count against
        `--trials`). Returns True when the time or compute budget is spent.
        """
        if time.time() >= deadline or self.compute_s >= budget_s:
            return True
        while not self._grid_exhausted():
            outstanding = len(self.pending) + sum(len(v) for v in self.waiting.values())
            left = self.config.trials - (accounted + self.counts_done() + outstanding + settling)
            # The last `slots` trials go to free workers only: queued behind a busy one, a
            # last trial could start after the other workers have run out of work.
            depth = self._prefetch_depth()
            room = slots * depth if left > slots else 0
            if left <= 0 or len(self.pending) >= slots + room:
                break
            # Near the end a trial queued behind a long one could start after the other
            # runners have run dry: those claim their start, so that one can be moved (_steal).
            self._tail = left <= slots * (depth + 2)
            if self._propose() == "infeasible":
                self._infeasible_streak += 1
                if self._infeasible_streak >= MAX_CONSECUTIVE_INFEASIBLE:
                    raise UserError(self._impossible_message())
            else:
                self._infeasible_streak = 0
        return False

    def _prefetch_depth(self) -> int:
        """Trials queued behind each busy resident runner: `prefetch`, or by default one
        until this run's trials turn out to be long (median of the last 20 >=
        PREFETCH_BELOW_S)."""
        if not self._may_queue:
            return 0
        if self.config.prefetch is not None:
            return self.config.prefetch
        recent = sorted(self._durations[-20:])
        return int(not recent or recent[len(recent) // 2] < PREFETCH_BELOW_S)

    def _steal(self, ray: Any) -> None:
        """A runner with nothing to do takes over a trial queued behind a busy one (when
        there is no new trial to give it): revoked there, handed to the free runner."""
        idle = sum(1 for n in self.pool.load if n == 0)
        # From the back of the lines: a trial queued earlier may be the one its runner has
        # started since (it keeps its `queued` mark), and its revoke would fail.
        for key, p in reversed(list(self.pending.items())):
            if not idle:
                break
            if not p.queued or key in self._revoked or self.pool.load[p.runner] < 2:
                continue
            if not ray.get(self.broker.revoke.remote([key])):
                p.queued = False  # it has started where it was: not asked again
                continue
            self._revoked.add(key)
            del self.pending[key]
            self.pool.release(p.runner)
            self._start(p)  # to the least busy runner: an idle one
            self._stolen += 1
            idle -= 1

    def _revoke_queued(self, ray: Any) -> None:
        """The search stops proposing: queued trials that have not started never will (their
        results come back as not started). Those already started run to their end."""
        keys = [k for k, p in self.pending.items() if p.queued and k not in self._revoked]
        if keys:
            self._revoked.update(keys)
            ray.get(self.broker.revoke.remote(keys))

    def _grid_exhausted(self) -> bool:
        """A grid search ends when every grid point has been proposed once."""
        sampler = self.study.sampler
        return isinstance(sampler, AskTellGridSampler) and sampler.all_proposed(self.study)

    def counts_done(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "infeasible")

    def _status(self, started: float, slots: int) -> dict[str, Any]:
        return {
            "elapsed_s": time.time() - started,
            "busy": min(len(self.pending), slots),
            "slots": slots,
            "counts": dict(self.counts),
            "best": self.best,
            "compute_s": self.compute_s,
        }

    def _impossible_message(self) -> str:
        lims = ", ".join(f"{k.replace('_', '-')}={v:,}" for k, v in self.limits.items() if v)
        return (
            f"the last {MAX_CONSECUTIVE_INFEASIBLE} candidates of space `{self.space.name}` all "
            f"broke the constraints ({lims}); the constraints look impossible for this space. "
            "Raise --max-params/--max-flops or choose a smaller space."
        )

    # -- one candidate --------------------------------------------------------------------------
    def _propose(self) -> str:
        trial = self.study.ask()
        if self._analyzed < len(ANALYZE_AT) and trial.number >= ANALYZE_AT[self._analyzed]:
            while self._analyzed < len(ANALYZE_AT) and trial.number >= ANALYZE_AT[self._analyzed]:
                self._analyzed += 1
            self.store.refresh_statistics()
        # The suggested params, our attributes and the dashboard note: one commit, not a dozen.
        with self.storage.batch(trial) as batch:
            # The next --enqueue architecture, unless `ask` took a queued trial (a retry).
            if self._to_enqueue and fix_params(trial, batch, self._to_enqueue[0]):
                self._to_enqueue.pop(0)
            try:
                spec = self.space.suggest(
                    trial, in_channels=self.data.in_channels, num_classes=self.data.num_classes
                )
            except ValueError as exc:
                # An invalid combination in a user's space: the sampler learns to avoid it.
                batch.user_attrs["reason"] = f"invalid spec: {exc}"
                spec = None
            if spec is not None:
                cost = complexity(spec, self.input_size)
                batch.user_attrs.update({
                    "arch_id": spec.arch_id,
                    "params": cost.params,
                    "flops": cost.flops,
                    "architecture": spec.summary(),
                    "skips": ",".join(s.skip for s in spec.stages),
                })
                # Constraint values > 0 mean "broken"; constraint-aware samplers (TPE,
                # NSGA-II, GP) read them from the trial (what `Trial.set_constraint` writes).
                for name, value in (("params", cost.params), ("flops", cost.flops)):
                    limit = self.limits[f"max_{name}"]
                    if limit:
                        batch.system_attrs[f"{CONSTRAINTS_KEY}:{name}"] = float(value - limit)
                infeasible = any(v > 0 for k, v in batch.system_attrs.items()
                                 if k.startswith(CONSTRAINTS_KEY))
                if infeasible:
                    batch.user_attrs["infeasible"] = True
                batch.study_system_attrs.update(
                    dashboard_note(trial, stage_markdown(spec, cost.params, cost.flops)))
        if spec is None:
            tell(self.study, trial, state=TrialState.FAIL)
            self.counts["failed"] += 1
            return "failed"
        retry_of = trial.user_attrs.get("retry_of")
        key = (spec.arch_id, self.recipe.recipe_id, self.recipe.dataset, self.epochs)
        pending = _Pending(trial, spec, key, cost.params, cost.flops, retry_of, time.time())
        if infeasible:
            if spec.arch_id not in self.saved_archs:  # no run row carries it into the store
                self.store.save_architecture(
                    spec, params=cost.params, flops=cost.flops, input_size=self.input_size
                )
                self.saved_archs.add(spec.arch_id)
            # Never trained; told as complete-but-infeasible so a constraint-aware sampler
            # learns to avoid the region.
            values = self._values(0.0, pending, latency=None)
            tell(self.study, trial, values)
            self.counts["infeasible"] += 1
            self._emit(pending, "infeasible", values=values, reason="constraints")
            return "infeasible"
        # Duplicate of a finished run (this study or any other in the database)?
        cached = self.known.get(key) or self.store.find_finished(*key)
        if cached is not None:
            self._answer_from(pending, cached)
            return "cached"
        # Duplicate of a candidate training right now: wait for it instead of training twice.
        if key in self.inflight_keys:
            self.waiting.setdefault(key, []).append(pending)
            return "waiting"
        self._start(pending)
        return "submitted"

    def _values(self, accuracy: float, p: _Pending, latency: float | None) -> list[float]:
        out = []
        for o in self.config.objectives:
            if o == "accuracy":
                out.append(float(accuracy))
            elif o == "params":
                out.append(float(p.params))
            elif o == "flops":
                out.append(float(p.flops))
            else:
                out.append(float(latency) if latency is not None else float("inf"))
        return out

    # -- pruning ---------------------------------------------------------------------------------
    def _handle_reports(self, reports: list[tuple[str, int, dict[str, Any]]]) -> None:
        decisions = []
        for pkey, epoch, metrics in reports:
            p = self.pending.get(pkey)
            if p is None:
                decisions.append((pkey, epoch, True))
                continue
            p.epochs.append(metrics)
            self.progress.epoch(p.trial.number, epoch, metrics)
            acc = metrics.get("val_accuracy")
            stop = False
            if acc is not None and math.isfinite(acc):
                if self.mo_pruner is not None:
                    stop = self.mo_pruner.should_prune(epoch, (p.params, p.flops), acc)
                elif not self.config.multi_objective:
                    p.trial.report(acc, epoch)
                    stop = epoch < self.epochs and p.trial.should_prune()
            decisions.append((pkey, epoch, stop))
        if decisions and self._prunes:  # otherwise the workers posted and trained on
            self.broker.decide.remote(decisions)

    # -- outcomes -------------------------------------------------------------------------------
    def _finish(self, ray: Any, p: _Pending) -> None:
        """Record the outcome of `p` (already out of `pending`) and answer its duplicates."""
        self.inflight_keys.pop(p.key, None)
        try:
            result = ray.get(p.ref)
        except Exception as exc:  # noqa: BLE001 - a worker or node died: retry, do not crash
            reason = f"worker_lost: {type(exc).__name__}"
            self._record_lost(p, reason)
            for w in self.waiting.pop(p.key, []):
                self._start(w)
            return
        if result.get("state") == NOT_STARTED:
            for q in (p, *self.waiting.pop(p.key, [])):
                self._close_not_started(q)
            return
        run = self._record_result(p, result)
        for w in self.waiting.pop(p.key, []):
            if run.state in ("complete", "pruned") or run.reason in ("nan_loss",):
                self._answer_from(w, run)
            else:
                self._start(w)

    def _close_not_started(self, p: _Pending) -> None:
        """A queued trial the search revoked before it began: failed in Optuna (a trial
        cannot go back), not counted, no run row; `_recover` leaves it out of `--trials`."""
        self.inflight_keys.pop(p.key, None)
        self.storage.attrs_at_tell(p.trial, {"reason": NOT_STARTED_REASON})
        tell(self.study, p.trial, state=TrialState.FAIL)
        self._emit(p, "not_started", reason=NOT_STARTED_REASON)

    def _submit(self, p: _Pending, request: dict[str, Any]) -> None:
        """Start training `p`: on a resident runner when the search has a pool, else as a
        Ray task with its CPU/GPU share. With every worker busy it waits in line (on the
        least busy runner, or in Ray's queue). Under a time or compute budget it must claim
        its start from the broker, so that the search can revoke it when the budget runs
        out; without one it is within --trials and always runs (the claim is a round trip
        a trial: ~8 ms on a busy 2-core machine)."""
        claims = self._tail or bool(self.config.timeout or self.config.max_compute_hours)
        p.queued = request["queued"] = claims and len(self.pending) >= self.slots
        if not self._prunes:  # nobody decides "stop": the worker need not wait each epoch
            request["prunable"] = False
        if self.pool is not None:
            p.ref, p.runner = self.pool.submit(request, self.broker)
            return
        from workers import ray_task  # looked up at call time (bench.controller swaps it)

        p.ref = ray_task.submit_trial(
            request, broker=self.broker, num_cpus=self.config.cpus_per_trial,
            num_gpus=self.config.gpus_per_trial,
        )

    def _start(self, w: _Pending) -> None:
        """Submit `w` under a new key: a new trial, a duplicate whose original did not
        finish, or a queued trial moved to a free runner."""
        self._seq += 1
        pkey = f"{self._channel}:{w.trial.number}:{self._seq}"
        request = {"spec": w.spec.to_dict(), "config": self.recipe.to_dict(), "key": pkey}
        self._submit(w, request)
        self.pending[pkey] = w
        self.inflight_keys[w.key] = pkey

    def _record_result(self, p: _Pending, result: dict[str, Any]) -> RunRecord:
        state = result.get("state", "failed")
        acc = result.get("val_accuracy")
        run = RunRecord(
            id=None,
            study=self.config.study,
            trial_number=p.trial.number,
            arch_id=p.spec.arch_id,
            recipe_id=self.recipe.recipe_id,
            dataset=self.recipe.dataset,
            fidelity=self.epochs,
            state=state,
            reason=result.get("reason"),
            params=p.params,
            flops=p.flops,
            **RunRecord.measured(result),
            started=result.get("started") or p.started,
            finished=result.get("finished") or time.time(),
            retry_of=p.retry_of,
            search_id=self.search_id,
            extra={k: result[k] for k in ("worker_pid", "traceback") if result.get(k)},
        )
        epochs = [EpochRecord.from_metrics(e) for e in result.get("epochs") or []]
        run.id = self.store.record_run(
            run, epochs, weights=result.get("weights"), **self._architecture_of(p.spec)
        )
        self.compute_s += float(result.get("duration_s") or 0.0)
        if result.get("duration_s") is not None:
            self._durations.append(float(result["duration_s"]))
        shown = {"device": run.device, "host": run.host, "run_id": run.id, "reason": run.reason}
        self.storage.attrs_at_tell(p.trial, {k: v for k, v in shown.items() if v is not None})
        if state == "complete" and acc is not None and math.isfinite(acc):
            values = self._values(acc, p, result.get("latency_ms"))
            tell(self.study, p.trial, values)
            self.counts["complete"] += 1
            self.known[p.key] = run
            self._update_best_from_run(run)
            self._emit(p, "complete", values=values, run=run)
        elif state == "pruned":
            tell(self.study, p.trial, state=TrialState.PRUNED)
            self.counts["pruned"] += 1
            self.known.setdefault(p.key, run)
            self._emit(p, "pruned", run=run)
        else:
            tell(self.study, p.trial, state=TrialState.FAIL)
            self.counts["failed"] += 1
            self._emit(p, "failed", run=run, reason=run.reason)
        return run

    def _architecture_of(self, spec: ArchitectureSpec) -> dict[str, Any]:
        """`record_run` arguments that save `spec` with the run, the first time only (one
        transaction per trial instead of two)."""
        if spec.arch_id in self.saved_archs:
            return {}
        self.saved_archs.add(spec.arch_id)
        return {"spec": spec, "input_size": self.input_size}

    def _record_lost(self, p: _Pending, reason: str) -> None:
        run = RunRecord(
            id=None, study=self.config.study, trial_number=p.trial.number, arch_id=p.spec.arch_id,
            recipe_id=self.recipe.recipe_id, dataset=self.recipe.dataset, fidelity=self.epochs,
            state="failed", reason=reason, params=p.params, flops=p.flops, started=p.started,
            finished=time.time(), duration_s=time.time() - p.started, retry_of=p.retry_of,
            search_id=self.search_id,
        )
        self.store.record_run(
            run, [EpochRecord.from_metrics(e) for e in p.epochs], **self._architecture_of(p.spec)
        )
        retried = self._tell_abandoned(p.trial.number, p.trial.params, p.trial.user_attrs, reason)
        if not retried:  # a retried trial is accounted for by its retry
            self.counts["failed"] += 1
        self._emit(p, "failed", reason=reason + (" (retrying)" if retried else ""))

    def _answer_from(self, p: _Pending, source: RunRecord) -> None:
        """Tell a duplicate candidate the outcome of the run it duplicates; train nothing."""
        run = RunRecord(
            id=None, study=self.config.study, trial_number=p.trial.number, arch_id=p.spec.arch_id,
            recipe_id=self.recipe.recipe_id, dataset=self.recipe.dataset, fidelity=self.epochs,
            state=source.state, reason=source.reason, val_accuracy=source.val_accuracy,
            best_val_accuracy=source.best_val_accuracy, val_loss=source.val_loss,
            params=p.params, flops=p.flops, latency_ms=source.latency_ms,
            latency_ms_batch=source.latency_ms_batch, samples_per_s=source.samples_per_s,
            peak_memory_mb=source.peak_memory_mb, device=source.device, host=source.host,
            started=time.time(), finished=time.time(), duration_s=0.0,
            cached_from=source.cached_from or source.id, retry_of=p.retry_of,
            search_id=self.search_id,
        )
        run.id = self.store.record_run(run, **self._architecture_of(p.spec))
        self.storage.attrs_at_tell(p.trial, {"cached_from": run.cached_from})
        self.counts["cached"] += 1
        if source.state == "complete":
            values = self._values(source.val_accuracy or 0.0, p, source.latency_ms)
            tell(self.study, p.trial, values)
            self._update_best_from_run(run)
        elif source.state == "pruned":
            tell(self.study, p.trial, state=TrialState.PRUNED)
            values = None
        else:
            tell(self.study, p.trial, state=TrialState.FAIL)
            values = None
        self._emit(p, "cached", values=values, run=run)

    def _catch_sigint(self) -> Callable[[], None]:
        """First Ctrl-C: stop at the next turn of the loop (never inside a Ray call);
        a second one interrupts at once. Returns the function that restores the old handler."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _abandon_all(self, ray: Any, reason: str, *, cancel: bool = True) -> None:
        """Ctrl-C or a fatal error: cancel what runs, mark it, queue retries for the next run."""
        try:  # queued trials first, so that none starts on a runner stopped below
            self._revoke_queued(ray)
        except Exception:  # noqa: BLE001 - the broker may be gone
            pass
        stopped: set[int] = set()
        for p in list(self.pending.values()):
            if p.runner is not None and self.pool is not None:
                if p.runner not in stopped:
                    stopped.add(p.runner)
                    try:  # an actor's call can't be force-cancelled: restart the runner instead
                        self.pool.stop(p.runner)
                    except Exception:  # noqa: BLE001 - the runner may be gone already
                        pass
            elif cancel:
                try:
                    ray.cancel(p.ref, force=True)
                except Exception:  # noqa: BLE001 - the task may be finished or gone already
                    pass
            self._tell_abandoned(p.trial.number, p.trial.params, p.trial.user_attrs, reason)
        for waiting in self.waiting.values():
            for w in waiting:
                self._tell_abandoned(w.trial.number, w.trial.params, w.trial.user_attrs, reason)
        self.pending.clear()
        self.waiting.clear()

    def _update_best_from_run(self, run: RunRecord) -> None:
        if run.state != "complete" or run.val_accuracy is None:
            return
        if self.best is None or run.val_accuracy > self.best["val_accuracy"]:
            arch = self.store.architecture(run.arch_id)
            summary = ArchitectureSpec.from_dict(arch).summary() if arch else run.arch_id
            self.best = {
                "trial": run.trial_number,
                "val_accuracy": run.val_accuracy,
                "arch_id": run.arch_id,
                "params": run.params,
                "summary": summary,
            }

    def _emit(self, p: _Pending, state: str, *, values=None, run: RunRecord | None = None,
              reason: str | None = None) -> None:
        event = TrialEvent(
            number=p.trial.number,
            state=state,
            arch_id=p.spec.arch_id,
            summary=p.spec.summary(),
            values=values,
            val_accuracy=run.val_accuracy if run else None,
            params=p.params,
            flops=p.flops,
            duration_s=run.duration_s if run else None,
            reason=reason or (run.reason if run else None),
            cached_from=run.cached_from if run else None,
            retry_of=p.retry_of,
            host=run.host if run else None,
        )
        self.progress.trial(event, dict(self.counts), self.best)


def stage_markdown(spec: ArchitectureSpec, params: int, flops: int) -> str:
    """A short Markdown stage table: the trial note optuna-dashboard shows (#734: conditional
    params display poorly there, notes do not)."""
    lines = [
        f"**{spec.arch_id}** — {params:,} params, {flops:,} MACs, stem `{spec.stem}`"
        f"{' (pre-activation)' if spec.preact else ''}",
        "",
        "| stage | blocks | width | stride | block | skip |",
        "|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(spec.stages, 1):
        lines.append(
            f"| {i} | {st.depth} | {st.width} | {st.stride} | {block_label(st)} | {st.skip} |"
        )
    return "\n".join(lines)


def _alive(host: str | None, pid: int | None) -> bool:
    """Whether a search driver may still be running (certain only on this host)."""
    if host != socket.gethostname() or not pid:
        return True  # another machine: only its heartbeat can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _count_cached(store: Store, study: str) -> int:
    return sum(1 for r in store.runs(study) if r.cached_from is not None)


def _load_space(name: str) -> SearchSpace:
    try:
        return load_space(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def start_ray(address: str | None, *, slots: int | None, cpus_per_trial: float) -> str:
    """Join the cluster at `address`, or the Ray cluster already running on this machine
    (`nas pool up`, `ray start`), or start a local Ray.

    Returns "joined" or "started" (Ray was initialised here and is shut down by the caller),
    or "" when Ray was already up in this process.
    """
    token_auth()  # before Ray is imported: it reads the mode then
    import ray

    if ray.is_initialized():
        return ""
    from workers.ray_task import training_env

    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": training_env(cpus_per_trial)},
    )
    address = resolve_address(address)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError...
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot join the Ray cluster at {address}: {first}") from None
        return "joined"
    want = int(math.ceil((slots or 0) * cpus_per_trial))
    ensure_auth_token()
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, want), **kwargs)
    return "started"


def token_auth() -> None:
    """Ray's token authentication unless RAY_AUTH_MODE says otherwise. A driver that joins a
    cluster started with it (`nas pool up`, the compose stack, docs/cluster.md) must send the
    token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), and Ray reads the mode
    when it is first imported: call this before that. Once Ray is imported this does
    nothing: a mode set after the import reaches the Ray processes a local `ray.init` starts
    but not this process's client, and then nothing can connect. A local Ray turns token
    authentication on by itself."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def ensure_auth_token() -> None:
    """Create ~/.ray/auth_token, readable by its owner only, when token authentication is on
    and the person has given no token.

    `ray start` (`nas pool up`) fails on a machine that never ran Ray: it needs a token and
    makes none. `ray.init()` makes one, readable by every local user, who could then run code
    on the cluster. The token is what Ray itself would generate (256 random bits) and is
    never printed.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the person chose the token; Ray reports it if it is missing
    path = Path.home() / ".ray" / "auth_token"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise UserError(f"cannot create Ray's auth token {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def local_cluster() -> str | None:
    """The address of the Ray cluster `ray start` (or `nas pool up`) recorded on this machine,
    or RAY_ADDRESS; None when there is none. Unlike Ray's "auto" it never picks up a Ray
    that some other process started for itself."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        address = canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - another Ray, or a bad record: start our own
        return None
    if address is None or os.environ.get("RAY_ADDRESS"):
        return address
    # The record outlives a cluster that died without `ray stop`; Ray would retry it for
    # minutes. Nothing answering on its port means there is no cluster.
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2.0).close()
    except (OSError, ValueError):
        return None
    return address


def resolve_address(address: str | None) -> str | None:
    """None: the cluster on this machine if one runs, else None (start one). "auto": the
    cluster on this machine, which must exist. Anything else: as given."""
    if address not in (None, "auto"):
        return address
    found = local_cluster()
    if found is None and address == "auto":
        raise UserError("--ray-address auto: no Ray cluster runs on this machine "
                        "(`nas pool up` starts one; or give the cluster's host:port)")
    return found


def best_trials(
    study: optuna.Study, store: Store, objectives: tuple[str, ...] | list[str]
) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front (several), as plain dicts."""
    runs = {r.trial_number: r for r in store.runs(study.study_name)}
    if len(objectives) == 1:
        ranked = sorted(
            (r for r in runs.values() if r.state == "complete" and r.val_accuracy is not None),
            key=lambda r: (-r.val_accuracy, r.params or 0, r.trial_number),
        )
        chosen = ranked[:1]
    else:
        try:
            front = {t.number for t in study.best_trials}
        except Exception:  # noqa: BLE001 - no complete trial yet
            front = set()
        chosen = sorted(
            (runs[n] for n in front if n in runs and runs[n].state == "complete"),
            key=lambda r: -(r.val_accuracy or 0),
        )
    out = []
    for r in chosen:
        arch = store.architecture(r.arch_id)
        out.append(
            {
                "trial": r.trial_number,
                "val_accuracy": r.val_accuracy,
                "params": r.params,
                "flops": r.flops,
                "latency_ms": r.latency_ms,
                "arch_id": r.arch_id,
                "summary": ArchitectureSpec.from_dict(arch).summary() if arch else r.arch_id,
                "cached_from": r.cached_from,
            }
        )
    return out


def run_search(config: SearchConfig, *, progress: Progress | None = None) -> SearchSummary:
    """Run (or resume) the search `config` describes; see the module docstring."""
    return Search(config, progress=progress).run()

