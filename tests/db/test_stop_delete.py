"""Stop requests and study deletion (`nas stop`, `nas delete`), the same on every backend."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

import db
from db import EpochRecord, Store, StoreError
from db.engine import create_store_engine, normalize_url
from db.models import SearchModel
from tests.db.helpers import run, spec


@pytest.fixture
def store(storage_url):
    s = Store(storage_url)
    yield s
    s.close()


@pytest.fixture
def names():
    """Two study names unique to this test (PostgreSQL databases may outlive a run)."""
    tag = uuid.uuid4().hex[:8]
    return f"alpha-{tag}", f"beta-{tag}"


def _execute(url: str, sql: str, **params) -> list[dict]:
    engine = create_store_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return [dict(r._mapping) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _count(url: str, table: str, **where) -> int:
    clause = " AND ".join(f"{k} = :{k}" for k in where) or "1 = 1"
    return _execute(url, f"SELECT COUNT(*) AS n FROM {table} WHERE {clause}", **where)[0]["n"]


def _age_heartbeat(url: str, search_id: int, seconds: float) -> None:
    """Pretend search `search_id`'s driver last beat `seconds` ago."""
    stamp = datetime.fromtimestamp(time.time() - seconds, tz=timezone.utc)
    engine = create_store_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.update(SearchModel).where(SearchModel.id == search_id).values(heartbeat=stamp)
            )
    finally:
        engine.dispose()


def _fill(store: Store, study: str, *, depth: int, trials: int = 3) -> int:
    """A finished search of `study` with `trials` runs (epochs, weights) of its own arch."""
    sid = store.start_search(study, {"heartbeat_s": 10.0}, host="box", pid=1)
    arch = spec(depth=depth)
    for t in range(trials):
        store.record_run(
            run(study, t, arch_id=arch.arch_id, val_accuracy=0.5 + t / 10, search_id=sid),
            [EpochRecord(epoch=1, train_loss=1.0), EpochRecord(epoch=2, train_loss=0.5)],
            weights=b"w" * 32,
            spec=arch,
            input_size=(32, 32),
        )
    store.end_search(sid, "finished")
    return sid


# -- stop requests -----------------------------------------------------------------------
def test_request_stop_marks_only_the_running_searches_of_that_study(store, names):
    alpha, beta = names
    done = store.start_search(alpha, {}, host="box", pid=1)
    store.end_search(done, "finished")
    first = store.start_search(alpha, {}, host="box", pid=2)
    second = store.start_search(alpha, {}, host="other", pid=3)
    elsewhere = store.start_search(beta, {}, host="box", pid=4)

    assert store.request_stop(alpha) == [first, second]

    by_id = {s.id: s for s in store.searches(alpha) + store.searches(beta)}
    assert by_id[first].stop_requested_at is not None and by_id[first].stopping
    assert by_id[second].stopping
    assert by_id[done].stop_requested_at is None and not by_id[done].stopping
    assert by_id[elsewhere].stop_requested_at is None and not by_id[elsewhere].stopping
    assert by_id[first].stop_requested_at >= by_id[first].started


def test_stop_requested_flips_and_survives_a_second_request(store, names):
    alpha, _ = names
    sid = store.start_search(alpha, {}, host="box", pid=1)
    assert store.stop_requested(sid) is False
    assert store.request_stop(alpha) == [sid]
    assert store.stop_requested(sid) is True
    [first] = store.searches(alpha)

    assert store.request_stop(alpha) == [sid]  # idempotent; the first request's time stays
    [again] = store.searches(alpha)
    assert again.stop_requested_at == first.stop_requested_at
    store.heartbeat(sid)
    assert store.stop_requested(sid) is True

    store.end_search(sid, "interrupted")
    [ended] = store.searches(alpha)
    assert not ended.stopping and ended.stop_requested_at == first.stop_requested_at
    assert store.request_stop(alpha) == []  # nothing running any more
    with pytest.raises(StoreError, match="no such search"):
        store.stop_requested(sid + 100)


def test_request_stop_of_a_study_without_running_search_returns_nothing(store, names):
    alpha, _ = names
    store.record_run(run(alpha, 0))
    assert store.request_stop(alpha) == []


def test_unknown_study_is_a_store_error_naming_the_known_ones(store, names):
    alpha, beta = names
    store.record_run(run(alpha, 0))
    store.start_search(beta, {}, host="box", pid=1)
    known = rf"known studies: '{alpha}', '{beta}'"
    with pytest.raises(StoreError, match=rf"`study` got 'nope': no such study .*{known}"):
        store.request_stop("nope")
    with pytest.raises(StoreError, match=known):
        store.delete_study("nope")


def test_unknown_study_in_an_empty_store(store):
    with pytest.raises(StoreError, match="known studies: none yet"):
        store.request_stop("nope")


# -- deleting ----------------------------------------------------------------------------
def test_delete_study_removes_its_rows_and_leaves_another_study_intact(store, names, storage_url):
    alpha, beta = names
    _fill(store, alpha, depth=2, trials=3)
    beta_search = _fill(store, beta, depth=3, trials=2)
    shared = spec(depth=4)
    for study, trial in ((alpha, 10), (beta, 10)):  # one architecture both studies use
        store.record_run(
            run(study, trial, arch_id=shared.arch_id), spec=shared, input_size=(32, 32)
        )
    # beta answered a duplicate from one of alpha's runs
    source = store.run_for_trial(alpha, 0)
    cached = store.record_run(run(beta, 11, arch_id=source.arch_id, cached_from=source.id))
    store.save_recipe("r1", {"epochs": 10}, "cifar10")
    beta_before = [(r.trial_number, r.val_accuracy) for r in store.runs(beta)]
    alpha_ids = [r.id for r in store.runs(alpha)]

    counts = store.delete_study(alpha)

    assert counts == {
        "nas_runs": 4,
        "nas_epochs": 6,
        "nas_weights": 3,
        "nas_searches": 1,
        "nas_architectures": 0,  # alpha's own arch is still used by beta's cached run
        "nas_stages": 0,
        "cache_links_cleared": 1,
    }
    assert store.runs(alpha) == [] and store.searches(alpha) == []
    for run_id in alpha_ids:
        assert store.epochs(run_id) == [] and store.weights(run_id) is None
    assert alpha not in store.study_names() and beta in store.study_names()
    assert [s["name"] for s in store.studies()] == [beta]

    assert [(r.trial_number, r.val_accuracy) for r in store.runs(beta)] == beta_before
    assert store.get_run(cached).cached_from is None  # its source is gone; the result stays
    [kept] = store.searches(beta)
    assert kept.id == beta_search
    for r in store.runs(beta, states=["complete"]):
        if r.trial_number < 2:
            assert len(store.epochs(r.id)) == 2 and store.weights(r.id) == b"w" * 32
    assert store.architecture(shared.arch_id) is not None
    assert store.architecture(spec(depth=2).arch_id) is not None
    assert store.recipe("r1") == {"epochs": 10}  # recipes are shared and kept

    # Once beta goes too, the architectures nothing uses any more go with it.
    counts = store.delete_study(beta)
    assert counts["nas_runs"] == 4 and counts["nas_searches"] == 1
    assert counts["nas_architectures"] == 3 and counts["nas_stages"] == 9
    assert _count(storage_url, "nas_architectures") == 0
    assert _count(storage_url, "nas_stages") == 0
    assert store.study_names() == [] and store.studies() == []
    assert store.recipe("r1") == {"epochs": 10}


def test_delete_keeps_architectures_saved_without_a_run(store, names):
    alpha, _ = names
    lone = spec(depth=5)
    store.save_architecture(lone, params=1, flops=2, input_size=(32, 32))  # broke a limit
    _fill(store, alpha, depth=2, trials=1)
    assert store.delete_study(alpha)["nas_architectures"] == 1
    assert store.architecture(lone.arch_id) is not None


def test_delete_refuses_a_running_search_with_a_fresh_heartbeat(store, names, storage_url):
    alpha, beta = names
    _fill(store, alpha, depth=2, trials=2)
    sid = store.start_search(alpha, {"heartbeat_s": 10.0}, host="box", pid=7)

    with pytest.raises(StoreError, match=rf"search #{sid} on box pid 7.*`nas stop {alpha}`"):
        store.delete_study(alpha)
    store.request_stop(alpha)
    with pytest.raises(StoreError, match="asked to stop; wait until it has stopped"):
        store.delete_study(alpha)
    assert len(store.runs(alpha)) == 2 and len(store.searches(alpha)) == 2  # nothing deleted

    counts = store.delete_study(alpha, force=True)
    assert counts["nas_runs"] == 2 and counts["nas_searches"] == 2
    assert store.study_names() == []


def test_delete_allows_a_running_search_whose_heartbeat_is_stale(store, names, storage_url):
    alpha, _ = names
    sid = store.start_search(alpha, {"heartbeat_s": 10.0}, host="box", pid=7)
    _age_heartbeat(storage_url, sid, 29)  # within 3 x 10 s: alive
    with pytest.raises(StoreError, match="being searched right now"):
        store.delete_study(alpha)
    _age_heartbeat(storage_url, sid, 31)  # its driver is gone
    assert store.delete_study(alpha)["nas_searches"] == 1


def test_stale_uses_the_interval_the_search_recorded(store, names, storage_url):
    alpha, beta = names
    slow = store.start_search(alpha, {"heartbeat_s": 60.0}, host="box", pid=7)
    _age_heartbeat(storage_url, slow, 100)  # < 3 x 60 s
    with pytest.raises(StoreError, match="being searched right now"):
        store.delete_study(alpha)
    unknown = store.start_search(beta, {}, host="box", pid=8)  # default interval: 10 s
    _age_heartbeat(storage_url, unknown, 100)
    assert store.delete_study(beta)["nas_searches"] == 1


# -- migration ---------------------------------------------------------------------------
def test_upgrade_from_0003_adds_stop_requests_to_existing_searches(storage_url, names):
    alpha, _ = names
    db.upgrade(storage_url, "0003")
    _execute(
        storage_url,
        "INSERT INTO nas_searches (study, config, status, host, pid, started, heartbeat)"
        " VALUES (:study, '{}', 'running', 'box', 1, :now, :now)",
        study=alpha,
        now="2024-01-01 00:00:00+00:00",
    )
    engine = create_store_engine(normalize_url(storage_url))
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("nas_searches")}
    finally:
        engine.dispose()
    assert "stop_requested_at" not in columns

    store = Store(storage_url)  # migrates to head on open
    try:
        assert db.current_revision(storage_url) == db.head_revision() == "0006"
        [old] = store.searches(alpha)
        assert old.status == "running" and old.stop_requested_at is None and not old.stopping
        assert old.live == {} and old.error is None  # 0005: unknown for older rows
        assert store.stop_requested(old.id) is False
        assert store.request_stop(alpha) == [old.id]
        assert store.stop_requested(old.id) is True
        assert store.delete_study(alpha)["nas_searches"] == 1  # heartbeat long stale
    finally:
        store.close()


def test_optuna_queue_counts_waiting_and_over_budget_trials_per_study(store, storage_url, names):
    import optuna

    assert store.optuna_queue() == {}  # Optuna's tables do not exist yet
    study_name = names[0]
    study = optuna.create_study(study_name=study_name, storage=storage_url, direction="maximize")
    trial = study.ask()
    trial.set_user_attr("infeasible", True)
    study.tell(trial, 0.0)
    other = study.ask()
    other.set_user_attr("infeasible", False)
    study.tell(other, 0.5)
    study.enqueue_trial({})
    study.enqueue_trial({})
    assert store.optuna_queue() == {study_name: {"waiting": 2, "infeasible": 1}}
