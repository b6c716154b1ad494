"""The Optuna study of a search: storage URL -> study, checks on an existing one, crash
recovery (trials a dead driver left RUNNING), retries, and the best trials.

Optuna is used through its public API only; everything resnas adds to a trial is a user
attribute, a constraint (`Trial.set_constraint`) or a row in our own `nas_` tables.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError

from db import Store, StoreError
from db.engine import describe_error, scrub
from db.store import STALE_HEARTBEATS  # older: the search is taken as dead
from nas.errors import UserError, mask_url
from nas.storage_retry import wrap_storage
from search_spaces import ArchitectureSpec

TrialState = optuna.trial.TrialState
OBJECTIVE_DIRECTIONS = {
    "accuracy": "maximize",
    "params": "minimize",
    "flops": "minimize",
    "latency": "minimize",
}
# Metric names the dashboard shows instead of "Objective 0".
OBJECTIVE_NAMES = {"accuracy": "val_accuracy", "params": "params", "flops": "macs",
                   "latency": "latency_ms"}


def real_url(url: str) -> str:
    """`url` validated and with its driver pinned (psycopg 3), password included."""
    from db.engine import normalize_url

    try:
        return normalize_url(url).render_as_string(hide_password=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _first_line(exc: BaseException, url: str) -> str:
    """What went wrong, in one line: Optuna's wrapper says "an exception is raised during
    the commit" where the driver said "database disk image is malformed"; give both (the
    driver's words as the store gives them, `db.engine.describe_error`)."""
    text = str(exc).strip()
    out = text.splitlines()[0].strip() if text else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, SQLAlchemyError):
        cause = cause.__cause__ or cause.__context__
    driver = None if cause is None else describe_error(cause, None)
    if driver and driver.split(": ", 1)[-1][:60] not in out:  # said already: once is enough
        out += f" ({driver})"
    return scrub(out, None).replace(url, mask_url(url))


def open_storage(url: str, *, retry_s: float | None = 60.0) -> optuna.storages.BaseStorage:
    """Optuna's storage on `url`, with `pool_pre_ping` for PostgreSQL (#5600) and the
    store's connection arguments; every call retried through a database restart for up to
    `retry_s` seconds (None: the bare `RDBStorage`, which optuna-dashboard wants)."""
    from sqlalchemy.engine import make_url

    from db.engine import pg_connect_args

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
        # Optuna's migration scripts once more.
        storage = optuna.storages.RDBStorage(
            real, engine_kwargs=engine_kwargs, skip_compatibility_check=new_sqlite_file(real)
        )
    except Exception as exc:  # noqa: BLE001 - Optuna wraps driver errors in many types
        raise UserError(f"cannot open the storage at {mask_url(url)}: {_first_line(exc, real)}"
                        ) from None
    if real.startswith("sqlite"):
        _sqlite_like_the_store(storage.engine)
    if retry_s is None:
        return storage
    # Optuna caches trials only in front of a bare RDBStorage: wrap_storage keeps that cache.
    return wrap_storage(storage, real, budget_s=retry_s)


def _sqlite_like_the_store(engine: Any) -> None:
    """Optuna's SQLite connections with the store's durability: the store's tables and
    Optuna's share one file in WAL mode (db/engine.py), where `synchronous = NORMAL` never
    corrupts and loses nothing when a process dies, and skips the fsync of every commit (a
    trial makes a dozen: one per suggested parameter and attribute)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    engine.dispose()  # connections made before the hook get it on their next connect


def new_sqlite_file(url: str) -> bool:
    """Whether `url` is an SQLite database file that does not exist yet, or is empty."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""  # never in-memory here: `real_url` refuses those
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") or database.startswith("file:"):
        return False  # a `file:` URI may name an existing file under another spelling
    path = Path(database)
    return not path.exists() or path.stat().st_size == 0


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    *,
    objectives: list[str] | tuple[str, ...],
    sampler: Callable[[int], optuna.samplers.BaseSampler],
    pruner: optuna.pruners.BasePruner | None,
    identity: dict[str, Any],
) -> optuna.Study:
    """Create or load the study `name`; refuse one made for other objectives, another space
    or another recipe (`identity`: {"space", "recipe_id", ...}, kept as a study attribute).

    `sampler(offset)` makes the sampler, its seed offset by `offset`: a resumed study gets
    the number of trials it holds, so that it does not replay the proposals of the first run
    with the same seed (all answered from the cache) but explores on, still reproducibly."""
    directions = [OBJECTIVE_DIRECTIONS[o] for o in objectives]
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler(0),
                                    pruner=pruner, directions=directions, load_if_exists=True)
    except ValueError as exc:
        raise UserError(f"study `{name}`: {exc}") from None
    if [d.name.lower() for d in study.directions] != directions:
        have = ",".join(d.name.lower() for d in study.directions)
        raise UserError(
            f"study `{name}` exists with directions {have}; --objectives {','.join(objectives)} "
            f"needs {','.join(directions)}. Use another --study name."
        )
    recorded = study.user_attrs.get("resnas")
    if recorded and (recorded.get("space"), recorded.get("recipe_id")) != (
        identity["space"], identity["recipe_id"]
    ):
        raise UserError(
            f"study `{name}` was created with space `{recorded.get('space')}` and recipe "
            f"{recorded.get('recipe_id')}; this run asks for space `{identity['space']}` and "
            f"recipe {identity['recipe_id']}. Use another --study name, or the same options."
        )
    if not recorded:
        study.set_user_attr("resnas", identity)
        study.set_metric_names([OBJECTIVE_NAMES[o] for o in objectives])
    if existing := len(study.get_trials(deepcopy=False)):
        study.sampler = sampler(existing)
    return study


def fail_trial(
    study: optuna.Study, trial: int, params: dict[str, Any], attrs: dict[str, Any],
    *, max_retries: int,
) -> bool:
    """Tell trial number `trial` FAIL (it will never report) and, while it has retries left,
    enqueue the same parameters as a new trial that links back to it (`retry_of`, `attempt`).
    Returns whether a retry was queued; False, changing nothing, when the trial has already
    been finished by somebody else."""
    try:
        study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        return False
    attempt = int(attrs.get("attempt", 0))
    if attempt >= max_retries:
        return False
    study.enqueue_trial(params, user_attrs={"retry_of": trial, "attempt": attempt + 1},
                        skip_if_exists=False)
    return True


def counted_trials(trials: list[optuna.trial.FrozenTrial], lost: set[int] | frozenset[int] = frozenset()
                   ) -> int:
    """How many of the study's trials count toward `--trials`: the finished ones, less those
    that broke a constraint (never trained), those a retry replaces, and the trial numbers in
    `lost` (lost trials whose retries ran out: nothing was learnt from them)."""
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    return sum(
        1 for t in trials
        if t.state.is_finished() and not t.user_attrs.get("infeasible") and t.number not in retried
        and not (t.state == TrialState.FAIL and t.number in lost)
        # queued trials an older resnas revoked before they started
        and not str(t.user_attrs.get("reason", "")).startswith("not_started")
    )


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


def close_dead_searches(store: Store, study: str, *, own: int, heartbeat_s: float) -> None:
    """Refuse a study that another live driver searches; mark the searches of dead
    drivers `interrupted`."""
    now = time.time()
    for s in store.searches(study):
        if s.status != "running" or s.id == own:
            continue
        age = now - (s.heartbeat or s.started or 0)
        if _alive(s.host, s.pid) and age < STALE_HEARTBEATS * heartbeat_s:
            raise UserError(
                f"study `{study}` is being searched right now by {s.host} pid {s.pid} "
                f"(heartbeat {age:.0f} s ago). Wait for it, or use another --study."
            )
        store.end_search(s.id, "interrupted")


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
