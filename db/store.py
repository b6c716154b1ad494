"""The Store: every read and write of search results, each public method one short transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.engine import (
    WRITE_OPTION,
    StoreError,
    backend_of,
    create_store_engine,
    describe_error,
    display_url,
    normalize_url,
    store_error,
)
from db.migrate import head_revision, migrate_engine, revision_of
from db.models import (
    RUN_STATES,
    SEARCH_STATUSES,
    ArchitectureModel,
    BaseModel,
    EpochModel,
    MetaModel,
    RecipeModel,
    RunModel,
    SearchModel,
    StageModel,
    WeightsModel,
)
from db.retry import DEFAULT_BUDGET_S, retry_call, transient_cause
from search_spaces.spec import ArchitectureSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Optuna's tables, which share the database; named here because `db` does not import Optuna.
OPTUNA_TABLES = (
    "studies", "study_directions", "study_user_attributes", "study_system_attributes",
    "trials", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_user_attributes", "trial_system_attributes", "trial_heartbeats",
)

# A running search whose heartbeat is younger than this many heartbeat intervals is taken as
# alive (by `delete_study` here and by `nas.study` when a search starts); the interval is the
# one the search recorded in its config (`heartbeat_s`), else the default below (that of
# `SearchConfig`).
STALE_HEARTBEATS = 3
DEFAULT_HEARTBEAT_S = 10.0


@dataclass
class RunRecord:
    """One trial's outcome as the orchestrator writes it and analysis reads it.

    Times are unix seconds; `fidelity` is the number of training epochs; `cached_from` is the
    id of the run whose result this one reused; `retry_of` the trial number it retries;
    `inherited_from` the id of the run whose trained weights it started from (`--inherit`).
    """

    id: int | None
    study: str
    trial_number: int
    arch_id: str
    recipe_id: str | None
    dataset: str | None
    fidelity: int | None
    state: str
    reason: str | None = None
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    val_loss: float | None = None
    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None
    latency_ms_batch: float | None = None
    samples_per_s: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    host: str | None = None
    node_id: str | None = None
    started: float | None = None
    finished: float | None = None
    duration_s: float | None = None
    cached_from: int | None = None
    retry_of: int | None = None
    search_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    weights_artifact: str | None = None  # id in the artifact store; None: none or `nas_weights`
    weights_size: int | None = None
    weights_sha256: str | None = None
    inherited_from: int | None = None  # id of the run whose weights this one started from

    # What a worker measures, under the same names in its result dict (`TrialResult`).
    MEASURED = (
        "val_accuracy", "best_val_accuracy", "val_loss", "latency_ms", "latency_ms_batch",
        "samples_per_s", "peak_memory_mb", "device", "host", "node_id", "duration_s",
    )

    @classmethod
    def measured(cls, result: dict[str, Any]) -> dict[str, Any]:
        """The measured fields of a worker's result dict, as keyword arguments."""
        return {name: result.get(name) for name in cls.MEASURED}

    @property
    def inherit(self) -> dict[str, Any]:
        """What `--inherit` recorded of the parent this run started from (`extra["inherit"]`:
        its trial, study, accuracy, the morph, the search's recipe); {} when nothing."""
        info = (self.extra or {}).get("inherit")
        return info if isinstance(info, dict) else {}

    @property
    def inherited(self) -> bool:
        """Whether this run started from a parent's weights: `inherited_from`, or what `extra`
        recorded when the parent's row is gone (its study deleted, and the link with it)."""
        return self.inherited_from is not None or bool(self.inherit)


@dataclass
class EpochRecord:
    """One point of a learning curve (`seconds`: wall time of that epoch)."""

    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float | None = None
    seconds: float | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> EpochRecord:
        """From a worker's per-epoch metrics dict (extra keys, e.g. `pid`, are ignored)."""
        return cls(
            epoch=int(metrics.get("epoch", 0)),
            train_loss=metrics.get("train_loss"),
            val_loss=metrics.get("val_loss"),
            val_accuracy=metrics.get("val_accuracy"),
            lr=metrics.get("lr"),
            seconds=metrics.get("seconds"),
        )


@dataclass
class SearchRecord:
    """One launch of a search; `heartbeat` tells whether its driver is still alive.

    `stop_requested_at` (unix seconds) is when `nas stop` asked it to stop; a search that is
    still `running` with it set is stopping (see `stopping`).
    """

    id: int
    study: str
    status: str
    host: str | None
    pid: int | None
    started: float | None
    heartbeat: float | None
    finished: float | None
    config: dict[str, Any] = field(default_factory=dict)
    stop_requested_at: float | None = None
    # At its last heartbeat: {trial number: seconds since that trial's last sign of life}.
    live: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # what it said when it ended `failed`

    @property
    def stopping(self) -> bool:
        """Running, and asked to stop: it ends once the trials in flight are recorded."""
        return self.status == "running" and self.stop_requested_at is not None


_RUN_FIELDS = [f.name for f in fields(RunRecord) if f.name != "id"]
_TIME_FIELDS = ("started", "finished")
_EPOCH_FIELDS = [f.name for f in fields(EpochRecord)]


def _to_dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def _to_ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite keeps no zone; we always write UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` got {value!r}; allowed: {' | '.join(allowed)}")


def _run_record(row: RunModel) -> RunRecord:
    data = {name: getattr(row, name) for name in _RUN_FIELDS}
    for name in _TIME_FIELDS:
        data[name] = _to_ts(data[name])
    data["extra"] = dict(data["extra"] or {})
    return RunRecord(id=row.id, **data)


def _run_record_or_none(row: RunModel | None) -> RunRecord | None:
    return None if row is None else _run_record(row)


def _search_record(row: SearchModel) -> SearchRecord:
    return SearchRecord(
        id=row.id,
        study=row.study,
        status=row.status,
        host=row.host,
        pid=row.pid,
        started=_to_ts(row.started),
        heartbeat=_to_ts(row.heartbeat),
        finished=_to_ts(row.finished),
        config=dict(row.config or {}),
        stop_requested_at=_to_ts(row.stop_requested_at),
        live=dict(row.live or {}),
        error=row.error,
    )


def _heartbeat_s(config: dict[str, Any] | None) -> float:
    """The heartbeat interval a search recorded in its config, else the default."""
    value = (config or {}).get("heartbeat_s")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_HEARTBEAT_S


class Store:
    """The SQL store of a search: SQLite file or PostgreSQL, beside Optuna's tables.

    Args:
        url: `sqlite:///path.db` or `postgresql://user:pass@host:5432/db` (`postgres://` and
            `postgresql+psycopg://` work too; PostgreSQL is reached with psycopg 3).
        migrate: bring the schema to the head revision on open (default). With False, a
            schema that is not at head raises `StoreError` (run `nas db upgrade`).
        retry_budget_s: once the store has worked, how long (seconds) each method rides out
            a transient fault (a server restart, a locked or full SQLite file) by retrying
            before it raises `DatabaseUnavailable`. The first contact is never retried: a
            wrong URL fails at once.

    Raises:
        StoreError: bad URL, unreachable database, failed migration.
    """

    def __init__(
        self, url: str, *, migrate: bool = True, retry_budget_s: float = DEFAULT_BUDGET_S
    ) -> None:
        self._url = normalize_url(url)
        self.url: str = self._url.render_as_string(hide_password=False)
        self.display_url: str = display_url(self._url)
        self._backend = backend_of(self._url)
        self.retry_budget_s = retry_budget_s
        # Whether a transaction has succeeded on this URL: only then is a failure to connect
        # a fault to wait out rather than a wrong URL to report.
        self._opened = False
        if migrate:
            migration_engine = create_store_engine(self._url, migration=True)
            try:
                migrate_engine(migration_engine, self._url)
            finally:
                migration_engine.dispose()
            self._opened = True
        self._engine = create_store_engine(self._url)
        self._upserts: dict[tuple, Any] = {}
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        if not migrate:
            self._check_revision()
        logger.debug("store opened on %s", self.display_url)

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool; the Store is unusable afterwards."""
        self._engine.dispose()

    # -- plumbing ------------------------------------------------------------------------
    @contextmanager
    def _session(self, what: str, *, write: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error, `StoreError` for DB errors
        (the driver's error kept as its cause, where `db.retry` looks for it)."""
        session = Session(self._write_engine if write else self._engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise store_error(what, exc, self._url, opened=self._opened) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _transaction(
        self, what: str, body: Callable[[Session], T], *, write: bool = False
    ) -> T:
        """`body(session)` as one transaction (`_session`), run again as a whole while the
        database is transiently away, for up to `retry_budget_s` (`db.retry.retry_call`).

        A body must be safe to run twice: its first run may have committed just before the
        connection dropped, unseen. Reads are; the writes here are upserts or updates to a
        fixed value, and the one plain insert (`start_search`) looks for its own row first.
        """

        def attempt() -> T:
            with self._session(what, write=write) as session:
                return body(session)

        if not self._opened:
            result = attempt()  # the first contact fails fast: a wrong URL is not a fault
            self._opened = True
            return result
        return retry_call(attempt, budget_s=self.retry_budget_s, what=what, url=self._url,
                          on_retry=self._log_retry)

    def _log_retry(self, attempt: int, exc: BaseException, wait_s: float) -> None:
        logger.warning(
            "the database at %s is not answering (%s); retry %d in %.1f s",
            self.display_url, describe_error(transient_cause(exc) or exc, self._url),
            attempt, wait_s,
        )

    def _upsert(
        self, model: type, conflict: tuple[str, ...], update: tuple[str, ...] = (),
        returning: Any = None,
    ) -> Any:
        """INSERT INTO `model`'s table ... ON CONFLICT (`conflict`) DO UPDATE SET `update`
        to the new values (DO NOTHING without `update`), for running with parameters.

        Built once per Store and for the table rather than the ORM entity: building the
        statement, and the ORM's bulk-insert layer, cost more per trial than the INSERT
        itself (bench.controller's profile). A list of parameter dicts runs as executemany.
        """
        key = (model, conflict, update, returning)
        stmt = self._upserts.get(key)
        if stmt is None:
            dialect = postgresql if self._backend == "postgresql" else sqlite
            stmt = dialect.insert(model.__table__)
            if update:
                stmt = stmt.on_conflict_do_update(
                    index_elements=list(conflict), set_={k: stmt.excluded[k] for k in update}
                )
            else:
                stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
            if returning is not None:
                stmt = stmt.returning(returning)
            self._upserts[key] = stmt
        return stmt

    def _check_revision(self) -> None:
        current = self._transaction(
            "reading the schema revision", lambda session: revision_of(session.connection())
        )
        head = head_revision()
        if current != head:
            raise StoreError(
                f"storage {self.display_url} is at schema revision {current!r}, "
                f"not {head!r}; run `nas db upgrade`"
            )

    # -- searches ------------------------------------------------------------------------
    def start_search(self, study: str, config: dict, *, host: str, pid: int) -> int:
        """Record a search launch (status `running`); returns its id for heartbeats."""
        now = _now()

        def body(session: Session) -> int:
            # A retry after a commit whose answer was lost finds the row it made (same study,
            # host, pid and start to the microsecond) instead of adding a second one.
            mine = session.scalar(sa.select(SearchModel.id).where(
                SearchModel.study == study, SearchModel.host == host, SearchModel.pid == pid,
                SearchModel.started == now,
            ))
            if mine is not None:
                return int(mine)
            row = SearchModel(
                study=study,
                config=dict(config),
                status="running",
                host=host,
                pid=pid,
                started=now,
                heartbeat=now,
            )
            session.add(row)
            session.flush()
            return row.id

        return self._transaction(f"starting a search of study {study!r}", body, write=True)

    def refresh_statistics(self) -> None:
        """PostgreSQL: ANALYZE the tables a search writes (ours and Optuna's beside them).

        psycopg prepares a statement after its 5th run, and PostgreSQL keeps the plan it made
        then until the table is next analyzed. Made while a new study's tables were nearly
        empty, that plan reads every lookup by trial id as a sequential scan, and each trial
        cost more than the last (bench.controller: 28 -> 42 ms a trial from 1,000 to 10,000
        trials) wherever autovacuum is off or has not come round. A search calls this as its
        study passes a few sizes. Tables this user may not analyze are skipped by the server.
        """
        if self._backend != "postgresql":
            return

        def body(session: Session) -> None:
            existing = set(sa.inspect(session.connection()).get_table_names())
            tables = [t for t in (*OPTUNA_TABLES, *BaseModel.metadata.tables) if t in existing]
            session.execute(sa.text("ANALYZE " + ", ".join(f'"{t}"' for t in tables)))

        self._transaction("refreshing planner statistics", body, write=True)

    def heartbeat(self, search_id: int, live: dict[str, float] | None = None) -> None:
        """Mark search `search_id` alive now; `live`: its running trials, each with the
        seconds since its last sign of life (what `nas status` shows)."""
        values: dict[str, Any] = {"heartbeat": _now()}
        if live is not None:
            values["live"] = live

        def body(session: Session) -> int:
            return session.execute(
                sa.update(SearchModel).where(SearchModel.id == search_id).values(**values)
            ).rowcount

        if self._transaction(f"heartbeat of search {search_id}", body, write=True) == 0:
            raise StoreError(f"`search_id` got {search_id!r}: no such search")

    def end_search(self, search_id: int, status: str, error: str | None = None) -> None:
        """Close search `search_id` with `status` (finished | interrupted | failed) and, for
        a failed one, the `error` it ended with (one line, no secrets: the caller's text)."""
        _check_choice("status", status, SEARCH_STATUSES)
        now = _now()

        def body(session: Session) -> int:
            return session.execute(
                sa.update(SearchModel)
                .where(SearchModel.id == search_id)
                .values(status=status, heartbeat=now, finished=None if status == "running" else now,
                        live=sa.null() if status != "running" else SearchModel.live,
                        error=error[:2000] if error else None)
            ).rowcount

        if self._transaction(f"ending search {search_id}", body, write=True) == 0:
            raise StoreError(f"`search_id` got {search_id!r}: no such search")

    def request_stop(self, study: str) -> list[int]:
        """Ask every running search of `study` to stop cleanly (what `nas stop` runs).

        Marks each search of `study` with status `running` (`stop_requested_at`, kept from
        the first request if asked again); its driver sees the mark on its next heartbeat
        (`stop_requested`), finishes the trials in flight and ends the search. Works from any
        machine that reaches the database. A running search whose driver died is marked too
        (harmless: the next launch closes it as interrupted).

        Returns:
            The ids of the running searches, oldest first (empty when none is running).

        Raises:
            StoreError: `study` is not in this store (the message lists the known studies).
        """
        self._require_study(study)

        def body(session: Session) -> list[int]:
            ids = list(
                session.scalars(
                    sa.select(SearchModel.id)
                    .where(SearchModel.study == study, SearchModel.status == "running")
                    .order_by(SearchModel.id)
                ).all()
            )
            if ids:
                session.execute(
                    sa.update(SearchModel)
                    .where(SearchModel.id.in_(ids), SearchModel.stop_requested_at.is_(None))
                    .values(stop_requested_at=_now())
                )
            return ids

        return self._transaction(f"requesting study {study!r} to stop", body, write=True)

    def stop_requested(self, search_id: int) -> bool:
        """Whether someone asked search `search_id` to stop (one indexed read; the driver
        calls it on each heartbeat)."""
        query = sa.select(SearchModel.stop_requested_at).where(SearchModel.id == search_id)
        row = self._transaction(f"reading the stop request of search {search_id}",
                                lambda session: session.execute(query).first())
        if row is None:
            raise StoreError(f"`search_id` got {search_id!r}: no such search")
        return row[0] is not None

    def searches(self, study: str) -> list[SearchRecord]:
        """The launches of `study`, oldest first."""
        query = sa.select(SearchModel).where(SearchModel.study == study).order_by(SearchModel.id)
        return self._transaction(
            f"reading searches of study {study!r}",
            lambda session: [_search_record(r) for r in session.scalars(query).all()],
        )

    # -- architectures and recipes -------------------------------------------------------
    def save_architecture(
        self,
        spec: ArchitectureSpec,
        *,
        params: int,
        flops: int,
        input_size: tuple[int, int],
    ) -> None:
        """Insert the architecture and its stage rows, or refresh its params/FLOPs. Idempotent."""
        statements = self._architecture_statements(spec, params, flops, input_size)

        def body(session: Session) -> None:
            for stmt, values in statements:
                session.execute(stmt, values)

        self._transaction(f"saving architecture {spec.arch_id}", body, write=True)

    def _architecture_statements(
        self, spec: ArchitectureSpec, params: int, flops: int, input_size: tuple[int, int]
    ) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """(statement, parameters) for the architecture row and its stage rows."""
        arch_id = spec.arch_id
        height, width = input_size
        values = {
            "arch_id": arch_id,
            "spec": spec.to_dict(),
            "params": int(params),
            "flops": int(flops),
            "input_size": f"{int(height)}x{int(width)}",
            "total_depth": spec.total_depth,
            "total_blocks": spec.total_blocks,
            "num_stages": len(spec.stages),
            "block_types": ",".join(sorted({s.block for s in spec.stages})),
            "skip_types": ",".join(sorted({s.skip for s in spec.stages})),
            "created": _now(),
        }
        stmt = self._upsert(ArchitectureModel, ("arch_id",), ("params", "flops", "input_size"))
        stages = [
            {
                "arch_id": arch_id,
                "stage": index,
                "depth": s.depth,
                "width": s.width,
                "stride": s.stride,
                "block": s.block,
                "expansion": s.expansion,
                "groups": s.groups,
                "width_per_group": s.width_per_group,
                "skip": s.skip,
                "heads": s.heads,
                "compression": s.compression,
            }
            for index, s in enumerate(spec.stages, start=1)
        ]
        return (stmt, values), (self._upsert(StageModel, ("arch_id", "stage")), stages)

    def save_recipe(self, recipe_id: str, recipe: dict, dataset: str) -> None:
        """Insert the recipe unless it exists (its id is the hash of its content)."""
        values = {"recipe_id": recipe_id, "recipe": dict(recipe), "dataset": dataset,
                  "created": _now()}
        stmt = self._upsert(RecipeModel, ("recipe_id",))
        self._transaction(f"saving recipe {recipe_id}",
                          lambda session: session.execute(stmt, values), write=True)

    def architecture(self, arch_id: str) -> dict | None:
        """The spec dict of `arch_id` (feed it to `ArchitectureSpec.from_dict`)."""
        query = sa.select(ArchitectureModel.spec).where(ArchitectureModel.arch_id == arch_id)
        spec = self._transaction(f"reading architecture {arch_id}",
                                 lambda session: session.scalar(query))
        return None if spec is None else dict(spec)

    def input_size(self, arch_id: str) -> tuple[int, int] | None:
        """The (height, width) `arch_id`'s costs were counted at."""
        query = sa.select(ArchitectureModel.input_size).where(ArchitectureModel.arch_id == arch_id)
        size = self._transaction(f"reading architecture {arch_id}",
                                 lambda session: session.scalar(query))
        if not size:
            return None
        height, width = str(size).split("x")
        return int(height), int(width)

    def recipe(self, recipe_id: str) -> dict | None:
        """The recipe dict of `recipe_id`."""
        query = sa.select(RecipeModel.recipe).where(RecipeModel.recipe_id == recipe_id)
        recipe = self._transaction(f"reading recipe {recipe_id}",
                                   lambda session: session.scalar(query))
        return None if recipe is None else dict(recipe)

    # -- runs ----------------------------------------------------------------------------
    def record_run(
        self,
        run: RunRecord,
        epochs: Sequence[EpochRecord] = (),
        weights: bytes | None = None,
        *,
        spec: ArchitectureSpec | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> int:
        """Insert `run`, or update the row with the same (study, trial_number); returns its id.

        Run, epochs and weights are written in one transaction. Epochs are merged by epoch
        number (so a running trial can send its curve piece by piece); `weights=None` keeps
        whatever weights the run already has. With `spec` (and `input_size`), the
        architecture is saved as `save_architecture` would, in the same transaction.
        """
        _check_choice("state", run.state, RUN_STATES)
        if weights is not None and not isinstance(weights, (bytes, bytearray, memoryview)):
            raise ValueError(f"`weights` got {type(weights).__name__}; allowed: bytes or None")
        values = {name: getattr(run, name) for name in _RUN_FIELDS}
        for name in _TIME_FIELDS:
            values[name] = _to_dt(values[name])
        values["extra"] = dict(values["extra"] or {})
        values["updated"] = _now()
        stmt = self._upsert(
            RunModel, ("study", "trial_number"),
            tuple(k for k in values if k not in ("study", "trial_number")),
            returning=RunModel.__table__.c.id,
        )
        what = f"recording trial {run.trial_number} of study {run.study!r}"
        arch = (
            self._architecture_statements(spec, run.params or 0, run.flops or 0, input_size)
            if spec is not None and input_size is not None
            else ()
        )
        # Every statement is an upsert keyed by (study, trial_number), (run_id, epoch) or
        # run_id: run again after a commit whose answer was lost, it writes the same rows.
        def body(session: Session) -> int:
            for arch_stmt, arch_values in arch:
                session.execute(arch_stmt, arch_values)
            run_id = int(session.execute(stmt, values).scalar_one())
            if epochs:
                rows = [
                    {"run_id": run_id, **{n: getattr(e, n) for n in _EPOCH_FIELDS}} for e in epochs
                ]
                epoch_stmt = self._upsert(
                    EpochModel, ("run_id", "epoch"), tuple(n for n in _EPOCH_FIELDS if n != "epoch")
                )
                session.execute(epoch_stmt, rows)
            if weights is not None:
                weight_stmt = self._upsert(WeightsModel, ("run_id",), ("format", "data"))
                session.execute(
                    weight_stmt, {"run_id": run_id, "format": "safetensors", "data": bytes(weights)}
                )
            return run_id

        return self._transaction(what, body, write=True)

    def find_finished(
        self, arch_id: str, recipe_id: str, dataset: str, fidelity: int
    ) -> RunRecord | None:
        """A `complete`, trained (not itself cached) run of the same architecture, recipe,
        dataset and fidelity, from any study; the best validation accuracy if several."""
        query = (
            sa.select(RunModel)
            .where(
                RunModel.arch_id == arch_id,
                RunModel.recipe_id == recipe_id,
                RunModel.dataset == dataset,
                RunModel.fidelity == fidelity,
                RunModel.state == "complete",
                RunModel.cached_from.is_(None),
            )
            .order_by(RunModel.val_accuracy.desc().nulls_last(), RunModel.id)
            .limit(1)
        )
        return self._transaction(f"looking up a finished run of {arch_id}",
                                 lambda session: _run_record_or_none(session.scalar(query)))

    def trained_runs(self, dataset: str) -> list[RunRecord]:
        """`complete` runs on `dataset` that trained (not cached) and kept weights, in the
        artifact store or in `nas_weights`, from any study, by id.
        The parents `--inherit` picks from."""
        has_legacy = sa.exists().where(WeightsModel.run_id == RunModel.id)
        query = (
            sa.select(RunModel)
            .where(
                RunModel.dataset == dataset,
                RunModel.state == "complete",
                RunModel.cached_from.is_(None),
                sa.or_(RunModel.weights_artifact.is_not(None), has_legacy),
            )
            .order_by(RunModel.id)
        )
        return self._transaction(
            "reading trained runs",
            lambda session: [_run_record(r) for r in session.scalars(query).all()],
        )

    def runs(
        self,
        study: str | None = None,
        *,
        states: Sequence[str] | None = None,
        top: int | None = None,
    ) -> list[RunRecord]:
        """Runs of `study` (all studies if None) in trial order; with `top`, the best
        `top` by validation accuracy, best first."""
        query = sa.select(RunModel)
        if study is not None:
            query = query.where(RunModel.study == study)
        if states is not None:
            states = [states] if isinstance(states, str) else list(states)
            for state in states:
                _check_choice("states", state, RUN_STATES)
            query = query.where(RunModel.state.in_(states))
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or top < 1:
                raise ValueError(f"`top` got {top!r}; allowed: an integer >= 1 or None")
            query = query.order_by(
                RunModel.val_accuracy.desc().nulls_last(), RunModel.trial_number
            ).limit(top)
        else:
            query = query.order_by(RunModel.study, RunModel.trial_number)
        return self._transaction(
            "reading runs", lambda session: [_run_record(r) for r in session.scalars(query).all()]
        )

    def get_run(self, run_id: int) -> RunRecord | None:
        return self._transaction(
            f"reading run {run_id}",
            lambda session: _run_record_or_none(session.get(RunModel, run_id)),
        )

    def run_for_trial(self, study: str, trial_number: int) -> RunRecord | None:
        query = sa.select(RunModel).where(
            RunModel.study == study, RunModel.trial_number == trial_number
        )
        return self._transaction(f"reading trial {trial_number} of study {study!r}",
                                 lambda session: _run_record_or_none(session.scalar(query)))

    def epochs(self, run_id: int) -> list[EpochRecord]:
        """The learning curve of run `run_id`, by epoch."""
        query = sa.select(EpochModel).where(EpochModel.run_id == run_id).order_by(EpochModel.epoch)
        return self._transaction(f"reading epochs of run {run_id}", lambda session: [
            EpochRecord(**{n: getattr(r, n) for n in _EPOCH_FIELDS})
            for r in session.scalars(query).all()
        ])

    def weights(self, run_id: int) -> bytes | None:
        """The safetensors bytes of run `run_id`, if the worker sent any."""
        query = sa.select(WeightsModel.data).where(WeightsModel.run_id == run_id)
        data = self._transaction(f"reading weights of run {run_id}",
                                 lambda session: session.scalar(query))
        return None if data is None else bytes(data)

    # -- facts about the store -----------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """The value recorded under `key` in `nas_meta` (e.g. `artifact_store`), or None."""
        query = sa.select(MetaModel.value).where(MetaModel.key == key)
        return self._transaction(f"reading {key!r} from nas_meta",
                                 lambda session: session.scalar(query))

    def set_meta(self, key: str, value: str) -> None:
        """Record `value` under `key` in `nas_meta`, replacing what was there. Never a
        secret: anyone who reads the database reads it."""
        if not isinstance(value, str):
            raise ValueError(f"`value` got {type(value).__name__}; allowed: str")
        stmt = self._upsert(MetaModel, ("key",), ("value",))
        self._transaction(f"writing {key!r} to nas_meta",
                          lambda session: session.execute(stmt, {"key": key, "value": value}),
                          write=True)

    # -- deleting ------------------------------------------------------------------------
    def delete_study(self, study: str, *, force: bool = False) -> dict[str, int]:
        """Delete every `nas_*` row of `study`, in one transaction (what `nas delete` runs).

        Deleted: the study's runs, their epochs and weights, and its searches. Architectures
        (and their stage rows) that only this study's runs used are deleted too; those another
        study's run still uses stay, and so do architectures saved without a run (candidates
        that broke a limit: nothing ties them to a study). Recipes are kept: they are shared,
        tiny, and a search of another study saves its recipe before its first run. Runs of
        other studies that were answered from one of the deleted runs keep their copied
        result; their `cached_from` becomes NULL (as the foreign key's ON DELETE SET NULL).

        This does NOT delete the Optuna study (its trials, in Optuna's tables of the same
        database): the caller deletes it with `optuna.delete_study(study_name=..., storage=...)`.

        Args:
            study: the study name.
            force: delete even while a search of the study is running with a fresh heartbeat
                (younger than `STALE_HEARTBEATS` of its heartbeat intervals). That driver
                would keep writing rows for a study that no longer exists; stop it first.

        Returns:
            Rows deleted per table (`nas_runs`, `nas_epochs`, `nas_weights`, `nas_searches`,
            `nas_architectures`, `nas_stages`), plus `cache_links_cleared`: other studies'
            runs whose `cached_from` was cleared.

        Raises:
            StoreError: `study` is not in this store (the message lists the known studies), or
                it has a live search and `force` is False.
        """
        self._require_study(study)
        of_study = sa.select(RunModel.id).where(RunModel.study == study)
        used_here = sa.select(RunModel.arch_id).where(RunModel.study == study)
        used_elsewhere = sa.select(RunModel.arch_id).where(RunModel.study != study)
        only_here = sa.and_(
            ArchitectureModel.arch_id.in_(used_here),
            ArchitectureModel.arch_id.not_in(used_elsewhere),
        )
        only_here_stages = sa.and_(
            StageModel.arch_id.in_(used_here), StageModel.arch_id.not_in(used_elsewhere)
        )

        # Run again after a commit whose answer was lost, this deletes nothing more and the
        # counts it returns are all 0: the study is gone either way.
        def body(session: Session) -> dict[str, int]:
            counts: dict[str, int] = {}
            if not force:
                self._refuse_live_searches(session, study)
            # Children first, so the counts are ours and not left to ON DELETE CASCADE.
            counts["nas_stages"] = session.execute(
                sa.delete(StageModel).where(only_here_stages)
            ).rowcount
            counts["nas_architectures"] = session.execute(
                sa.delete(ArchitectureModel).where(only_here)
            ).rowcount
            counts["nas_epochs"] = session.execute(
                sa.delete(EpochModel).where(EpochModel.run_id.in_(of_study))
            ).rowcount
            counts["nas_weights"] = session.execute(
                sa.delete(WeightsModel).where(WeightsModel.run_id.in_(of_study))
            ).rowcount
            counts["cache_links_cleared"] = session.execute(
                sa.update(RunModel)
                .where(RunModel.study != study, RunModel.cached_from.in_(of_study))
                .values(cached_from=None)
            ).rowcount
            counts["nas_runs"] = session.execute(
                sa.delete(RunModel).where(RunModel.study == study)
            ).rowcount
            counts["nas_searches"] = session.execute(
                sa.delete(SearchModel).where(SearchModel.study == study)
            ).rowcount
            return counts

        counts = self._transaction(f"deleting study {study!r}", body, write=True)
        logger.info("deleted study %r from %s: %s", study, self.display_url, counts)
        return counts

    @staticmethod
    def _refuse_live_searches(session: Session, study: str) -> None:
        rows = session.execute(
            sa.select(
                SearchModel.id, SearchModel.host, SearchModel.pid, SearchModel.heartbeat,
                SearchModel.config, SearchModel.stop_requested_at,
            ).where(SearchModel.study == study, SearchModel.status == "running")
        ).all()
        now = _now().timestamp()
        for search_id, host, pid, heartbeat, config, stop_requested_at in rows:
            age = now - (_to_ts(heartbeat) or 0.0)
            if age >= STALE_HEARTBEATS * _heartbeat_s(config):
                continue  # its driver is gone; deleting is safe
            what = (
                f"study {study!r} is being searched right now: search #{search_id} on {host} "
                f"pid {pid} (heartbeat {age:.0f} s ago)"
            )
            if stop_requested_at is not None:
                raise StoreError(
                    f"{what} and was asked to stop; wait until it has stopped, "
                    "or delete anyway (`nas delete --force`)"
                )
            raise StoreError(
                f"{what}; stop it first with `nas stop {study}`, or delete anyway (`nas delete --force`)"
            )

    # -- overview ------------------------------------------------------------------------
    def _require_study(self, study: str) -> None:
        known = self.study_names()
        if study not in known:
            listed = ", ".join(repr(s) for s in known) if known else "none yet"
            raise StoreError(
                f"`study` got {study!r}: no such study in {self.display_url}; "
                f"known studies: {listed}"
            )

    def study_names(self) -> list[str]:
        """Every study with a run or a search in this store, sorted."""
        query = sa.union(sa.select(RunModel.study), sa.select(SearchModel.study))
        return self._transaction("listing studies",
                                 lambda session: sorted(session.scalars(query).all()))

    def optuna_queue(self) -> dict[str, dict[str, int]]:
        """Per Optuna study in this database: `waiting` (trials queued to run: retries,
        `--enqueue`) and `infeasible` (candidates over a budget, never trained, no run row),
        which only Optuna's side of the store holds. {} when Optuna's tables are absent."""
        def body(session: Session) -> list[Any]:
            if not sa.inspect(session.connection()).has_table("trial_user_attributes"):
                return []
            return list(session.execute(sa.text(
                "SELECT s.study_name,"
                " SUM(CASE WHEN CAST(t.state AS VARCHAR(16)) = 'WAITING' THEN 1 ELSE 0 END),"
                " SUM(CASE WHEN a.trial_id IS NULL THEN 0 ELSE 1 END)"
                " FROM trials t JOIN studies s ON s.study_id = t.study_id"
                " LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
                "  AND a.key = 'infeasible' AND a.value_json = 'true'"
                " GROUP BY s.study_name")).all())

        rows = self._transaction("counting queued trials", body)
        return {name: {"waiting": int(w or 0), "infeasible": int(i or 0)}
                for name, w, i in rows}

    def studies(self) -> list[dict]:
        """One dict per study, sorted by name.

        Keys: `name`, `runs` ({state: count} over all four states), `total`, `cached`,
        `retried` (runs that retry a trial whose worker was lost),
        `best_val_accuracy` (complete runs), `last_activity` (unix seconds: latest run write,
        start, finish or search heartbeat), `running_searches` (count with status running).
        """
        run_query = sa.select(
            RunModel.study,
            RunModel.state,
            sa.func.count(),
            sa.func.count(RunModel.cached_from),
            sa.func.count(RunModel.retry_of),
            sa.func.max(sa.case((RunModel.state == "complete", RunModel.val_accuracy))),
            sa.func.max(RunModel.updated),
            sa.func.max(RunModel.finished),
            sa.func.max(RunModel.started),
        ).group_by(RunModel.study, RunModel.state)
        search_query = sa.select(
            SearchModel.study,
            sa.func.count(sa.case((SearchModel.status == "running", 1))),
            sa.func.max(SearchModel.heartbeat),
            sa.func.max(SearchModel.finished),
        ).group_by(SearchModel.study)
        run_rows, search_rows = self._transaction(
            "summarising studies",
            lambda session: (session.execute(run_query).all(),
                             session.execute(search_query).all()),
        )

        summary: dict[str, dict] = {}

        def entry(name: str) -> dict:
            if name not in summary:
                summary[name] = {
                    "name": name,
                    "runs": {s: 0 for s in RUN_STATES},
                    "total": 0,
                    "cached": 0,
                    "retried": 0,
                    "best_val_accuracy": None,
                    "last_activity": None,
                    "running_searches": 0,
                }
            return summary[name]

        def touch(item: dict, *stamps: Any) -> None:
            for stamp in stamps:
                ts = _to_ts(stamp) if isinstance(stamp, datetime) else None
                if ts is not None and (item["last_activity"] is None or ts > item["last_activity"]):
                    item["last_activity"] = ts

        for study, state, count, cached, retried, best, updated, finished, started in run_rows:
            item = entry(study)
            item["retried"] += retried
            item["runs"][state] = item["runs"].get(state, 0) + count
            item["total"] += count
            item["cached"] += cached
            if best is not None and (
                item["best_val_accuracy"] is None or best > item["best_val_accuracy"]
            ):
                item["best_val_accuracy"] = best
            touch(item, updated, finished, started)
        for study, running, heartbeat, finished in search_rows:
            item = entry(study)
            item["running_searches"] = running
            touch(item, heartbeat, finished)
        return [summary[name] for name in sorted(summary)]


def record_fields() -> list[str]:
    """Field names of `RunRecord`, in order (for CSV headers and the like)."""
    return [f.name for f in fields(RunRecord)]
