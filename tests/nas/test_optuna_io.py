"""BatchingStorage: a new trial's params and attributes in one commit, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import sqlalchemy as sa

from nas.optuna_io import BatchingStorage, dashboard_note, fix_params
from nas.search import open_storage

TrialState = optuna.trial.TrialState


def _study(url: str, name: str = "io") -> tuple[optuna.Study, BatchingStorage]:
    storage = BatchingStorage(open_storage(url))
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0),
        direction="maximize",
    )
    return study, storage


def _count_commits(storage: BatchingStorage) -> list[int]:
    commits = [0]
    sa.event.listen(storage._backend.engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
    return commits


def _suggest(trial: optuna.trial.Trial) -> None:
    trial.suggest_int("depth", 1, 8)
    trial.suggest_categorical("skip", ["identity", "projection"])
    trial.suggest_float("lr", 1e-3, 1.0, log=True)


def _second_trial(url: str) -> tuple[optuna.Study, BatchingStorage, optuna.trial.Trial]:
    """A study with one finished trial, and the next trial asked. The first trial teaches
    the process the study's distributions; the batched path is for the trials after it."""
    study, storage = _study(url)
    first = study.ask()
    with storage.batch(first):
        _suggest(first)
    study.tell(first, 0.5)
    return study, storage, study.ask()


def test_batch_writes_params_and_attrs_in_one_commit(storage_url):
    study, storage, trial = _second_trial(storage_url)
    commits = _count_commits(storage)
    with storage.batch(trial) as batch:
        _suggest(trial)
        batch.user_attrs.update({"arch_id": "abc", "params": 123})
        batch.system_attrs["constraints:params"] = -5.0
        batch.study_system_attrs.update(dashboard_note(trial, "**note**"))
        assert commits[0] == 0  # nothing written while the block runs
    assert commits[0] == 1

    fresh = optuna.load_study(study_name="io", storage=open_storage(storage_url))
    got = fresh.trials[1]
    assert set(got.params) == {"depth", "skip", "lr"}
    assert got.params == trial.params
    assert got.user_attrs == {"arch_id": "abc", "params": 123}
    assert got.system_attrs["constraints:params"] == -5.0
    study_attrs = fresh._storage.get_study_system_attrs(fresh._study_id)
    assert any(str(k).startswith("dashboard:") for k in study_attrs)


def test_attrs_at_tell_are_written_with_the_state_or_not_at_all(storage_url):
    study, storage = _study(storage_url)
    commits = _count_commits(storage)
    plain, trial = study.ask(), study.ask()
    for t in (plain, trial):
        with storage.batch(t):
            _suggest(t)
    before = commits[0]
    study.tell(plain, 0.1)
    plain_tell = commits[0] - before
    storage.attrs_at_tell(trial, {"device": "cpu", "run_id": 7})
    before = commits[0]
    study.tell(trial, 0.9)
    assert commits[0] - before == plain_tell  # the attributes ride on the tell's commit
    got = optuna.load_study(study_name="io", storage=open_storage(storage_url)).trials[1]
    assert got.state == TrialState.COMPLETE and got.value == 0.9
    assert got.user_attrs == {"device": "cpu", "run_id": 7}

    # A refused update (the trial is finished already) leaves the attributes out too.
    other = study.ask()
    storage._backend.set_trial_state_values(other._trial_id, TrialState.FAIL)
    storage.attrs_at_tell(other, {"device": "gpu"})
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(other._trial_id, TrialState.COMPLETE, [1.0])
    got = optuna.load_study(study_name="io", storage=open_storage(storage_url)).trials[2]
    assert got.state == TrialState.FAIL and "device" not in got.user_attrs


def test_batch_keeps_optunas_checks(sqlite_url):
    study, storage = _study(sqlite_url)
    t0 = study.ask()
    with storage.batch(t0):
        t0.suggest_int("depth", 1, 8)
    study.tell(t0, 0.1)
    t1 = study.ask()
    # A parameter whose distribution changed within the study is refused, as Optuna does.
    with pytest.raises(ValueError), storage.batch(t1):
        t1.suggest_categorical("depth", ["a", "b"])
    # A batch on a finished trial is refused and writes nothing.
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError), storage.batch(t0) as batch:
        batch.user_attrs["late"] = 1
    assert "late" not in optuna.load_study(study_name="io", storage=open_storage(sqlite_url)).trials[0].user_attrs


def test_batch_flushes_what_it_holds_when_the_block_raises(sqlite_url):
    study, storage = _study(sqlite_url)
    trial = study.ask()
    with pytest.raises(RuntimeError), storage.batch(trial) as batch:
        trial.suggest_int("depth", 1, 8)
        batch.user_attrs["reason"] = "invalid spec"
        raise RuntimeError("boom")
    got = optuna.load_study(study_name="io", storage=open_storage(sqlite_url)).trials[0]
    assert "depth" in got.params and got.user_attrs["reason"] == "invalid spec"


def _count_statements(storage: BatchingStorage) -> list[str]:
    seen: list[str] = []
    sa.event.listen(
        storage._backend.engine, "before_cursor_execute",
        lambda conn, cursor, statement, *rest: seen.append(statement.split()[0].upper()),
    )
    return seen


def test_running_trials_are_read_from_the_copy_and_match_the_database(storage_url):
    study, storage, trial = _second_trial(storage_url)
    with storage.batch(trial) as batch:
        _suggest(trial)
        batch.user_attrs["arch_id"] = "abc"
        batch.system_attrs["constraints:params"] = -5.0
    trial.set_user_attr("worker", "w1")
    trial.report(0.25, 1)
    trial.report(0.5, 2)

    statements = _count_statements(storage)
    mine = storage.get_trial(trial._trial_id)
    assert statements == []  # no round trip for a running trial this process created
    database = open_storage(storage_url).get_trial(trial._trial_id)
    for field in ("number", "state", "params", "distributions", "user_attrs", "system_attrs",
                  "intermediate_values", "datetime_start"):
        assert getattr(mine, field) == getattr(database, field), field
    assert mine.params["depth"] == trial.params["depth"]

    # What a caller does to its answer does not change the copy.
    mine.user_attrs["scribble"] = 1
    assert "scribble" not in storage.get_trial(trial._trial_id).user_attrs

    # Once finished, the database answers (with the state and value the tell wrote).
    study.tell(trial, 0.75)
    statements.clear()
    done = storage.get_trial(trial._trial_id)
    assert statements  # read from the database, not from a copy of the running trial
    assert done.state == TrialState.COMPLETE and done.value == 0.75


def test_a_new_trials_batch_only_inserts(sqlite_url):
    """A trial created here is running and its attributes are known: the batch inserts; it
    neither reads the trial's row nor deletes attributes."""
    study, storage = _study(sqlite_url)
    trial = study.ask()
    statements = _count_statements(storage)
    with storage.batch(trial) as batch:
        batch.user_attrs["arch_id"] = "abc"
        batch.system_attrs["constraints:params"] = 1.0
        batch.study_system_attrs.update(dashboard_note(trial, "**two** stages"))
    assert statements == ["INSERT"] * 3
    from optuna_dashboard import get_note

    assert get_note(trial) == "**two** stages"  # the dashboard reads the note
    # Setting a key the trial has replaces it: the row is deleted first.
    statements.clear()
    with storage.batch(trial) as batch:
        batch.user_attrs["arch_id"] = "def"
    assert statements.count("DELETE") == 1
    got = optuna.load_study(study_name="io", storage=open_storage(sqlite_url)).trials[0]
    assert got.user_attrs == {"arch_id": "def"}


def test_a_trial_taken_from_the_queue_is_then_read_from_the_copy(sqlite_url):
    """A WAITING trial may be taken by any process, so the database answers for it; once
    this process has taken it (WAITING -> RUNNING succeeds for one process only), it runs
    it alone and reads it from its copy, as for a trial it created."""
    study, storage = _study(sqlite_url)
    elsewhere = optuna.load_study(study_name="io", storage=open_storage(sqlite_url))
    elsewhere.enqueue_trial({"depth": 3}, user_attrs={"attempt": 1})
    waiting = elsewhere.trials[0]
    assert storage.get_trial(waiting._trial_id).state == TrialState.WAITING
    assert waiting._trial_id not in storage._own

    trial = study.ask()
    assert trial._trial_id == waiting._trial_id and trial._trial_id in storage._own
    with storage.batch(trial) as batch:
        assert trial.suggest_int("depth", 1, 8) == 3
        batch.user_attrs["arch_id"] = "abc"
    trial.report(0.4, 1)
    statements = _count_statements(storage)
    got = storage.get_trial(trial._trial_id)
    assert statements == []  # from the copy
    assert (got.state, got.params, got.intermediate_values) == (TrialState.RUNNING, {"depth": 3}, {1: 0.4})
    assert got.user_attrs == {"attempt": 1, "arch_id": "abc"}
    stored = optuna.load_study(study_name="io", storage=open_storage(sqlite_url)).trials[0]
    assert (stored.params, stored.intermediate_values, stored.user_attrs) == (
        got.params, got.intermediate_values, got.user_attrs)
    study.tell(trial, 0.5)
    assert trial._trial_id not in storage._own
    assert storage.get_trial(trial._trial_id).state == TrialState.COMPLETE
    # A queued trial another process took first is not this one's: it is not copied.
    elsewhere.enqueue_trial({"depth": 4})
    taken = elsewhere.trials[-1]
    assert elsewhere._storage.set_trial_state_values(taken._trial_id, TrialState.RUNNING)
    assert not storage.set_trial_state_values(taken._trial_id, TrialState.RUNNING)
    assert taken._trial_id not in storage._own


def test_fixed_params_are_what_enqueue_then_ask_give_without_the_queue(storage_url):
    study, storage, trial = _second_trial(storage_url)
    statements = _count_statements(storage)
    with storage.batch(trial) as batch:
        assert fix_params(trial, batch, {"depth": 6, "skip": "projection"})
        _suggest(trial)
    assert statements == ["INSERT"] * 2  # params and system attributes, nothing read
    assert trial.params["depth"] == 6 and trial.params["skip"] == "projection"
    study.tell(trial, 0.7)
    # What `enqueue_trial` + `ask` leave in the study: the same params and attribute.
    study.enqueue_trial({"depth": 6, "skip": "projection"})
    queued = study.ask()
    with storage.batch(queued) as batch:
        assert not fix_params(queued, batch, {"depth": 1})  # it has its own
        _suggest(queued)
    study.tell(queued, 0.7)
    fresh = optuna.load_study(study_name="io", storage=open_storage(storage_url)).trials
    for got in fresh[1:]:
        assert {k: got.params[k] for k in ("depth", "skip")} == {"depth": 6, "skip": "projection"}
        assert got.system_attrs["fixed_params"] == {"depth": 6, "skip": "projection"}
        assert got.state == TrialState.COMPLETE


@pytest.mark.postgres
def test_a_growing_study_gets_fresh_planner_statistics(pg_url, ray_local, monkeypatch):
    """PostgreSQL keeps a prepared statement's plan until the table is analyzed; made on a
    new study's empty tables, lookups by trial id were sequential scans whose cost grew with
    the study (bench.controller). A search analyzes the tables as its study grows."""
    import sqlalchemy as sa

    from db import Store
    from nas import search
    from nas.config import build_config

    monkeypatch.setattr(search, "ANALYZE_AT", (2,))
    search.run_search(build_config({}, {"study": "stats", "storage": pg_url, "trials": 3,
                                        "workers": 1, "train": {"epochs": 1}}, "flags"))
    with Store(pg_url)._engine.connect() as conn:
        analyzed = dict(conn.execute(sa.text(
            "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables")).all())
    assert analyzed["trial_params"] and analyzed["trials"] and analyzed["nas_runs"]


def test_ask_looks_for_enqueued_trials_only_when_there_can_be_some(sqlite_url, monkeypatch):
    """`ask` reads the study's new trials to find a WAITING one: after one was made here, or
    once a poll interval has passed (one made by another process); otherwise not."""
    from nas import optuna_io

    study, storage = _study(sqlite_url)
    study.tell(study.ask(), 0.1)  # the first ask looked: nothing waiting
    seen: list[str] = []
    sa.event.listen(storage._backend.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: seen.append(statement))
    trial = study.ask()
    assert seen and not [s for s in seen if "ORDER BY trials.trial_id" in s]  # no look-up
    study.tell(trial, 0.2)

    study.enqueue_trial({"depth": 3})  # made here: the next ask looks, and takes it
    trial = study.ask()
    assert trial.suggest_int("depth", 1, 8) == 3
    study.tell(trial, 0.3)

    other = optuna.load_study(study_name="io", storage=open_storage(sqlite_url))
    other.enqueue_trial({"depth": 5})  # another process's: seen within the poll interval
    monkeypatch.setattr(optuna_io, "WAITING_POLL_S", 0.0)
    trial = study.ask()
    assert trial.suggest_int("depth", 1, 8) == 5


def test_a_long_note_reads_back_whole_in_the_dashboard_without_importing_it(sqlite_url):
    study, storage = _study(sqlite_url)
    trial = study.ask()
    body = "| stage | blocks |\n" + "".join(f"| {i} | basic |\n" for i in range(400))
    assert len(body) > 2 * 2045  # three chunks
    with storage.batch(trial) as batch:
        batch.study_system_attrs.update(dashboard_note(trial, body))
    from optuna_dashboard import get_note

    assert get_note(trial) == body

    # The driver writes notes without the dashboard package, which loads scikit-learn and
    # SciPy (seconds before a search's first trial).
    code = ("import sys; from types import SimpleNamespace; from nas.optuna_io import "
            "dashboard_note; dashboard_note(SimpleNamespace(_trial_id=1), 'x'); "
            "print(sorted(m for m in ('optuna_dashboard', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_new_sqlite_file_skips_optunas_schema_check_and_an_old_schema_still_fails(tmp_path):
    """Optuna's check compares the schema with the head it has just stamped on a new file:
    it is skipped there, and only there. An existing database with an older Optuna schema
    still gets Optuna's message, through a UserError."""
    from nas.errors import UserError
    from nas.search import new_sqlite_file

    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    assert open_storage(url).skip_compatibility_check is True
    optuna.create_study(study_name="io", storage=open_storage(url))
    reopened = open_storage(url)
    assert reopened.skip_compatibility_check is False
    assert [s.study_name for s in reopened.get_all_studies()] == ["io"]

    (tmp_path / "empty.db").touch()
    assert new_sqlite_file(f"sqlite:///{tmp_path / 'empty.db'}")
    assert not new_sqlite_file(f"sqlite:///file:{tmp_path / 'other.db'}?mode=rwc&uri=true")
    assert not new_sqlite_file("postgresql+psycopg://postgres@127.0.0.1:5432/test")

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    engine.dispose()
    with pytest.raises(UserError, match="no longer compatible"):
        open_storage(url)
