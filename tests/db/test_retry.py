"""Transient database faults: which errors count as one, the bounded retries that ride them
out, and the Store and Optuna's storage surviving a real PostgreSQL "restart" (a TCP proxy in
front of the shared server drops every connection and refuses new ones for a while)."""

from __future__ import annotations

import logging
import sqlite3
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from db import DatabaseUnavailable, Store, StoreError, is_transient
from db.retry import MAX_WAIT_S, retry_call
from tests.db.helpers import run
from tests.faultproxy import FaultProxy

PASSWORD = "S3cret"  # trust auth accepts any password; it must never be shown


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def proxy():
    with FaultProxy(("127.0.0.1", 5432)) as p:
        yield p


@pytest.fixture
def proxy_url(pg_url, proxy):
    """A fresh PostgreSQL database reached through the proxy, with a password in the URL."""
    return make_url(pg_url).set(port=proxy.port, password=PASSWORD).render_as_string(
        hide_password=False)


def _connect_error(url: str) -> sa.exc.DBAPIError:
    """The error SQLAlchemy raises when connecting to `url` fails."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"connecting to {url} worked")


def _assert_unavailable_message(text: str, proxy: FaultProxy, budget: str) -> None:
    assert f"the database at postgresql+psycopg://postgres:***@127.0.0.1:{proxy.port}/" in text
    assert f"stopped answering for {budget} s while " in text
    assert "Connection refused" in text  # the driver's own words
    assert "nothing finished is lost" in text and "run the same command again" in text
    assert "check the URL" not in text
    assert PASSWORD not in text


# -- classification ------------------------------------------------------------------------
@pytest.mark.postgres
def test_refused_connection_is_transient_also_inside_optunas_wrapper(proxy_url, proxy):
    optuna = pytest.importorskip("optuna")
    storage = optuna.storages.RDBStorage(proxy_url)
    try:
        proxy.down()
        refused = _connect_error(proxy_url)
        assert "Connection refused" in str(refused.orig)
        assert is_transient(refused)
        with pytest.raises(optuna.exceptions.StorageInternalError) as wrapped:
            storage.get_all_studies()
        assert is_transient(wrapped.value)  # the driver's error is in its __cause__ chain
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_integrity_error_and_missing_table_are_not_transient(sqlite_url):
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(sa.exc.IntegrityError) as duplicate, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(sa.exc.OperationalError) as missing, engine.begin() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table"))
    # A value the driver cannot bind: ProgrammingError (InterfaceError before Python 3.11).
    with pytest.raises((sa.exc.ProgrammingError, sa.exc.InterfaceError)) as unbindable, \
            engine.begin() as conn:
        conn.execute(sa.text("SELECT :v"), {"v": object()})
    engine.dispose()
    assert not is_transient(duplicate.value)
    assert not is_transient(missing.value)  # SQLite says OperationalError for this too
    assert not is_transient(unbindable.value)
    try:
        raise StoreError("recording failed") from duplicate.value
    except StoreError as wrapped:
        assert not is_transient(wrapped)


@pytest.mark.postgres
def test_postgres_programming_error_is_not_transient(pg_url):
    engine = sa.create_engine(pg_url)
    with pytest.raises(sa.exc.ProgrammingError) as missing, engine.begin() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table"))
    engine.dispose()
    assert not is_transient(missing.value)


def test_locked_sqlite_file_is_transient(tmp_path):
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sa.exc.OperationalError) as locked, engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()
    assert "database is locked" in str(locked.value)
    assert is_transient(locked.value)


@pytest.mark.parametrize("words", ["database or disk is full", "disk I/O error"])
def test_full_or_failing_disk_under_sqlite_is_transient(words):
    error = sa.exc.OperationalError("INSERT INTO t VALUES (1)", {}, sqlite3.OperationalError(words))
    assert is_transient(error)


def test_suppressed_context_is_not_followed():
    error = sa.exc.OperationalError(None, None, Exception("server closed the connection"))
    try:
        try:
            raise error
        except sa.exc.OperationalError:
            raise ValueError("bad input") from None
    except ValueError as exc:
        assert not is_transient(exc)


# -- retry_call ------------------------------------------------------------------------------
@pytest.mark.postgres
def test_retry_call_gives_up_after_its_budget_with_the_real_cause(proxy_url, proxy):
    proxy.down()
    fake = FakeTime()
    tries = []

    def connect() -> None:
        tries.append(1)
        engine = sa.create_engine(proxy_url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    retries = []
    with pytest.raises(DatabaseUnavailable) as raised:
        retry_call(connect, budget_s=60.0, what="ending search 1", url=proxy_url,
                   sleep=fake.sleep, clock=fake.clock,
                   on_retry=lambda attempt, exc, wait: retries.append((attempt, wait)))
    assert isinstance(raised.value, StoreError)
    _assert_unavailable_message(str(raised.value), proxy, "60")
    assert "while ending search 1: OperationalError" in str(raised.value)
    # Backoff: 0.25 s doubling, never over the cap; the budget spent exactly, not exceeded.
    assert 0.2 <= fake.waits[0] <= 0.25
    assert all(0 < w <= MAX_WAIT_S for w in fake.waits)
    assert max(fake.waits) > MAX_WAIT_S * 0.75  # it did grow to the cap
    assert sum(fake.waits) == pytest.approx(60.0)
    assert len(tries) == len(fake.waits) + 1  # one last try when the budget ran out
    assert [a for a, _ in retries] == list(range(1, len(fake.waits) + 1))
    assert [w for _, w in retries] == fake.waits


def test_retry_call_returns_once_the_fault_passes():
    fake = FakeTime()
    outcomes = [sa.exc.OperationalError(None, None, Exception("connection refused"))] * 3

    def flaky() -> str:
        if outcomes:
            raise outcomes.pop()
        return "done"

    assert retry_call(flaky, what="x", url=None, sleep=fake.sleep, clock=fake.clock) == "done"
    assert len(fake.waits) == 3
    assert fake.waits[0] < fake.waits[1] < fake.waits[2] <= 1.0


def test_retry_call_passes_other_errors_through_at_once():
    fake = FakeTime()
    integrity = sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    def broken() -> None:
        raise integrity

    with pytest.raises(sa.exc.IntegrityError) as raised:
        retry_call(broken, what="x", url=None, sleep=fake.sleep, clock=fake.clock)
    assert raised.value is integrity
    assert fake.waits == []


# -- the Store -------------------------------------------------------------------------------
@pytest.mark.postgres
def test_store_keeps_working_across_a_server_restart(proxy_url, proxy, pg_url, caplog):
    store = Store(proxy_url, retry_budget_s=30.0)
    try:
        search = store.start_search("restart", {"heartbeat_s": 1}, host="h", pid=1)
        store.record_run(run("restart", 0, val_accuracy=0.5))
        store.heartbeat(search)
        connections = proxy.accepted
        with caplog.at_level(logging.WARNING, logger="db.store"):
            proxy.restart(2.0)  # drops the pooled connection; refuses new ones for 2 s
            store.record_run(run("restart", 1, val_accuracy=0.6))
            store.heartbeat(search)
        assert any("is not answering" in r.getMessage() for r in caplog.records)
        assert proxy.accepted > connections  # it reconnected through the proxy
        store.end_search(search, "finished")
    finally:
        store.close()
    with Store(pg_url) as direct:
        assert [(r.trial_number, r.val_accuracy) for r in direct.runs("restart")] == [
            (0, 0.5), (1, 0.6)]
        [record] = direct.searches("restart")
        assert record.status == "finished"


@pytest.mark.postgres
def test_store_raises_database_unavailable_when_the_server_stays_away(proxy_url, proxy):
    store = Store(proxy_url, retry_budget_s=1.0)
    try:
        search = store.start_search("away", {}, host="h", pid=1)
        proxy.down()
        with pytest.raises(DatabaseUnavailable) as raised:
            store.heartbeat(search)
    finally:
        store.close()
    _assert_unavailable_message(str(raised.value), proxy, "1")
    assert f"while heartbeat of search {search}: " in str(raised.value)


@pytest.mark.postgres
@pytest.mark.parametrize("migrate", [True, False])
def test_first_open_of_an_unreachable_url_fails_at_once(proxy_url, proxy, migrate, caplog):
    proxy.down()
    with caplog.at_level(logging.WARNING), pytest.raises(StoreError) as raised:
        Store(proxy_url, migrate=migrate, retry_budget_s=60.0)
    assert not isinstance(raised.value, DatabaseUnavailable)
    text = str(raised.value)
    assert "cannot open storage" in text and "check the URL" in text
    assert "Connection refused" in text and PASSWORD not in text
    assert not any("not answering" in r.getMessage() for r in caplog.records)


@pytest.mark.postgres
def test_first_open_of_a_missing_database_fails_at_once(pg_url):
    missing = make_url(pg_url).set(database=f"resnas_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreError) as raised:
        Store(missing.render_as_string(hide_password=False), retry_budget_s=60.0)
    assert not isinstance(raised.value, DatabaseUnavailable)
    assert "check the URL" in str(raised.value) and "does not exist" in str(raised.value)


def test_connect_failure_of_a_store_that_worked_gets_no_check_the_url_hint():
    from db.engine import store_error

    url = make_url(f"postgresql+psycopg://postgres:{PASSWORD}@db.example:5432/nas")
    refused = sa.exc.OperationalError(None, None, Exception("Connection refused"))
    assert "check the URL" in str(store_error("reading runs", refused, url))
    worked = str(store_error("reading runs", refused, url, opened=True))
    assert "check the URL" not in worked and "cannot open" not in worked
    assert "reading runs failed on postgresql+psycopg://postgres:***@db.example" in worked


def test_start_search_run_again_finds_the_row_it_made(sqlite_url, monkeypatch):
    """What a retry after a lost commit does: same launch, same instant -> the same row."""
    import db.store

    store = Store(sqlite_url)
    try:
        first = store.start_search("again", {}, host="h", pid=7)
        stamp = db.store._now()
        monkeypatch.setattr(db.store, "_now", lambda: stamp)
        second = store.start_search("again", {}, host="h", pid=7)
        assert store.start_search("again", {}, host="h", pid=7) == second != first
        assert [s.id for s in store.searches("again")] == [first, second]
    finally:
        store.close()


# -- Optuna's storage ------------------------------------------------------------------------
@pytest.mark.postgres
def test_optuna_storage_asks_and_tells_across_a_server_restart(proxy_url, proxy, pg_url, caplog):
    optuna = pytest.importorskip("optuna")
    from nas.storage_retry import wrap_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = optuna.storages.RDBStorage(proxy_url, engine_kwargs={"pool_pre_ping": True})
    storage = wrap_storage(rdb, proxy_url, budget_s=30.0)
    # What Optuna itself would use for a bare RDBStorage: its trial cache in front.
    assert type(storage.inner) is type(optuna.storages.get_storage(rdb)) is not type(rdb)
    study = optuna.create_study(study_name="restart", storage=storage)
    with caplog.at_level(logging.WARNING, logger="nas.storage_retry"):
        for i in range(6):
            if i == 2:
                proxy.restart(1.5)  # between one tell and the next ask
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            if i == 4:
                proxy.restart(1.5)  # between an ask and its tell
            study.tell(trial, x)
    assert sum("not answering Optuna" in r.getMessage() for r in caplog.records) >= 2
    rdb.remove_session()
    rdb.engine.dispose()

    direct = optuna.load_study(study_name="restart", storage=pg_url)
    trials = direct.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [t.value for t in trials] == [t.params["x"] for t in trials]
    assert len(optuna.get_all_study_names(pg_url)) == 1


class LosesAnswers:
    """A storage whose next call of a method named in `lose` commits and then fails as if the
    connection had dropped before the answer came back; of one named in `refuse`, fails
    without doing anything."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lose: set[str] = set()
        self.refuse: set[str] = set()
        self.lost: list[str] = []

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def dropped() -> sa.exc.OperationalError:
            return sa.exc.OperationalError(
                "COMMIT", {}, Exception("server closed the connection unexpectedly"))

        def call(*args, **kwargs):
            if name in self.refuse:
                self.refuse.discard(name)
                raise dropped()
            result = method(*args, **kwargs)
            if name in self.lose:
                self.lose.discard(name)
                self.lost.append(name)
                raise dropped()
            return result

        return call


@pytest.fixture
def lossy():
    optuna = pytest.importorskip("optuna")
    from nas.storage_retry import RetryingStorage

    inner = LosesAnswers(optuna.storages.InMemoryStorage())
    fake = FakeTime()
    return inner, RetryingStorage(inner, None, sleep=fake.sleep, clock=fake.clock)


def test_lost_answers_of_ask_and_tell_are_not_applied_twice(lossy):
    optuna = pytest.importorskip("optuna")
    inner, storage = lossy
    study = optuna.create_study(storage=storage)
    inner.lose.add("create_new_trial")
    trial = study.ask()
    trial.suggest_int("x", 0, 9)
    inner.lose.add("set_trial_state_values")
    study.tell(trial, 1.0)
    assert inner.lost == ["create_new_trial", "set_trial_state_values"]
    [only] = study.get_trials()
    assert only.number == trial.number and only.state.name == "COMPLETE" and only.value == 1.0
    # A second tell of the caller's own is still refused, by the storage too.
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [2.0])
    inner.refuse.add("set_trial_state_values")  # a fault first, then the refusal
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [2.0])


def test_lost_answers_of_enqueue_and_study_creation_are_not_applied_twice(lossy):
    optuna = pytest.importorskip("optuna")
    inner, storage = lossy
    inner.lose.add("create_new_study")
    study = optuna.create_study(storage=storage)  # unnamed: the name is chosen before the try
    assert len(storage.get_all_studies()) == 1
    study.enqueue_trial({"x": 1})
    inner.lose.add("create_new_trial")
    study.enqueue_trial({"x": 2})
    inner.lose.add("set_trial_state_values")  # WAITING -> RUNNING, as ask takes a queued trial
    trial = study.ask()
    assert inner.lost == ["create_new_study", "create_new_trial", "set_trial_state_values"]
    assert trial.suggest_int("x", 0, 9) == 1
    states = [(t.state.name, t.system_attrs["fixed_params"]) for t in study.get_trials()]
    assert states == [("RUNNING", {"x": 1}), ("WAITING", {"x": 2})]


def test_retrying_storage_overrides_every_public_storage_method():
    optuna = pytest.importorskip("optuna")
    from nas.storage_retry import RetryingStorage

    public = {name for name, value in vars(optuna.storages.BaseStorage).items()
              if callable(value) and not name.startswith("_")}
    assert public <= set(vars(RetryingStorage)), public - set(vars(RetryingStorage))
