"""The Store contract, the same on every backend (`storage_url`: SQLite file, PostgreSQL)."""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, fields

import pytest
import sqlalchemy as sa

from db import EpochRecord, RunRecord, Store, StoreError
from search_spaces.spec import ArchitectureSpec, StageSpec
from tests.db.helpers import run, spec, write_runs


@pytest.fixture
def store(storage_url):
    s = Store(storage_url)
    yield s
    s.close()


def _query(url: str, sql: str, **params) -> list[dict]:
    from db.engine import create_store_engine, normalize_url

    engine = create_store_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def test_every_run_field_epochs_and_weights_round_trip(store):
    record = RunRecord(
        id=None,
        study="s",
        trial_number=7,
        arch_id="0123456789abcdef",
        recipe_id="recipe-1",
        dataset="cifar10",
        fidelity=12,
        state="complete",
        reason="finished",
        val_accuracy=0.9125,
        best_val_accuracy=0.93,
        val_loss=0.251,
        params=11_173_962,
        flops=3_640_000_000_123,
        latency_ms=1.5,
        latency_ms_batch=12.25,
        samples_per_s=4096.5,
        peak_memory_mb=812.0,
        device="cuda:0 NVIDIA H100",
        host="gpu-box-1",
        node_id="node-abc",
        started=1_700_000_000.25,
        finished=1_700_000_123.5,
        duration_s=123.25,
        cached_from=None,
        retry_of=3,
        search_id=None,
        extra={"seed": 0, "tags": ["a", "b"], "nested": {"x": 1.5}},
    )
    epochs = [
        EpochRecord(epoch=1, train_loss=2.1, val_loss=1.9, val_accuracy=0.31, lr=0.1, seconds=4.5),
        EpochRecord(
            epoch=2, train_loss=1.2, val_loss=1.1, val_accuracy=0.61, lr=0.05, seconds=4.25
        ),
    ]
    weights = bytes(range(256)) * 40
    run_id = store.record_run(record, epochs, weights)

    got = store.get_run(run_id)
    assert asdict(got) == {**asdict(record), "id": run_id}
    assert store.run_for_trial("s", 7) == got
    assert store.epochs(run_id) == epochs
    assert store.weights(run_id) == weights
    assert store.get_run(run_id + 1000) is None
    assert store.run_for_trial("s", 8) is None
    assert store.weights(run_id + 1000) is None
    assert store.epochs(run_id + 1000) == []


def test_record_run_updates_the_row_of_the_same_study_and_trial(store):
    first = store.record_run(run("s", 0, state="running", started=1_700_000_000.0))
    store.record_run(run("s", 0, state="running"), [EpochRecord(epoch=1, val_accuracy=0.3)])
    second = store.record_run(
        run("s", 0, state="complete", val_accuracy=0.8, duration_s=9.0),
        [EpochRecord(epoch=2, val_accuracy=0.8), EpochRecord(epoch=1, val_accuracy=0.35)],
        b"weights-1",
    )
    assert first == second
    got = store.get_run(first)
    assert (got.state, got.val_accuracy, got.duration_s) == ("complete", 0.8, 9.0)
    assert got.started is None  # the record is the full truth: fields not given are cleared
    assert [(e.epoch, e.val_accuracy) for e in store.epochs(first)] == [(1, 0.35), (2, 0.8)]
    store.record_run(run("s", 0, state="complete", val_accuracy=0.8))  # no weights: keep them
    assert store.weights(first) == b"weights-1"
    assert len(store.runs("s")) == 1
    other = store.record_run(run("other", 0))
    assert other != first


def test_a_trial_is_recorded_in_one_statement_per_table(store, storage_url):
    """What the search driver writes per finished trial: architecture, stages, run, epochs
    and weights, one INSERT each in one transaction, and the next trial's values (another
    architecture, other row counts) land where they belong."""
    statements: list[str] = []

    def seen(conn, cursor, sql, *rest):
        if not sql.lstrip().upper().startswith("BEGIN"):  # SQLite's write lock
            statements.append(" ".join(sql.split()[:3]).upper())

    sa.event.listen(store._engine, "before_cursor_execute", seen)
    a, b = spec(2), spec(3, "projection", width=8)
    first = store.record_run(
        run("s", 0, arch_id=a.arch_id), [EpochRecord(epoch=e, val_accuracy=e / 10) for e in (1, 2)],
        b"w0", spec=a, input_size=(32, 32),
    )
    assert statements == [
        "INSERT INTO NAS_ARCHITECTURES", "INSERT INTO NAS_STAGES", "INSERT INTO NAS_RUNS",
        "INSERT INTO NAS_EPOCHS", "INSERT INTO NAS_WEIGHTS",
    ]
    second = store.record_run(
        run("s", 1, arch_id=b.arch_id, state="failed"),
        [EpochRecord(epoch=e, val_accuracy=e / 100) for e in (1, 2, 3)], spec=b, input_size=(8, 8),
    )
    assert len(statements) == 9  # no weights the second time
    assert store.architecture(a.arch_id) == a.to_dict()
    assert store.architecture(b.arch_id) == b.to_dict()
    stages = _query(storage_url, "SELECT arch_id, stage, width, skip FROM nas_stages "
                                 "ORDER BY arch_id, stage")
    assert sorted((s["arch_id"], s["stage"], s["width"], s["skip"]) for s in stages) == sorted(
        [(a.arch_id, i, w, "identity") for i, w in ((1, 16), (2, 32), (3, 64))]
        + [(b.arch_id, i, w, "projection") for i, w in ((1, 8), (2, 16), (3, 32))]
    )
    assert [e.val_accuracy for e in store.epochs(first)] == [0.1, 0.2]
    assert [e.val_accuracy for e in store.epochs(second)] == [0.01, 0.02, 0.03]
    assert store.get_run(second).state == "failed" and store.weights(second) is None
    assert _query(storage_url, "SELECT input_size FROM nas_architectures WHERE arch_id = :a",
                  a=b.arch_id) == [{"input_size": "8x8"}]


def test_record_run_rejects_unknown_state(store):
    with pytest.raises(ValueError, match="`state` got 'done'; allowed: complete"):
        store.record_run(run("s", 0, state="done"))


def test_find_finished_matches_all_keys_across_studies_complete_only_best_first(store):
    arch = "cafe" * 4
    store.record_run(run("a", 0, arch, val_accuracy=0.70))
    best = store.record_run(run("b", 0, arch, val_accuracy=0.75))
    store.record_run(run("b", 1, arch, val_accuracy=0.99, cached_from=best))  # a copy
    store.record_run(run("c", 0, arch, state="failed", val_accuracy=None, reason="nan loss"))
    store.record_run(run("c", 1, arch, state="pruned", val_accuracy=0.98))
    store.record_run(run("c", 2, arch, state="running"))
    store.record_run(run("d", 0, arch, recipe_id="r2", val_accuracy=0.97))
    store.record_run(run("d", 1, arch, dataset="cifar100", val_accuracy=0.97))
    store.record_run(run("d", 2, arch, fidelity=50, val_accuracy=0.97))
    store.record_run(run("d", 3, "beef" * 4, val_accuracy=0.97))

    found = store.find_finished(arch, "r1", "cifar10", 10)
    assert (found.id, found.study, found.val_accuracy) == (best, "b", 0.75)
    assert store.find_finished(arch, "r1", "cifar10", 11) is None
    assert store.find_finished("none", "r1", "cifar10", 10) is None


def test_runs_filters_by_state_and_top_is_best_first(store):
    for i, (state, acc) in enumerate(
        [("complete", 0.5), ("complete", 0.9), ("pruned", 0.2), ("failed", None), ("complete", 0.7)]
    ):
        store.record_run(run("s", i, state=state, val_accuracy=acc))
    store.record_run(run("t", 0, val_accuracy=1.0))
    assert [r.trial_number for r in store.runs("s")] == [0, 1, 2, 3, 4]
    assert [r.trial_number for r in store.runs("s", states=["complete"])] == [0, 1, 4]
    assert [r.trial_number for r in store.runs("s", top=2)] == [1, 4]
    assert [r.trial_number for r in store.runs("s", states=["failed", "pruned"])] == [2, 3]
    assert [(r.study, r.trial_number) for r in store.runs(top=1)] == [("t", 0)]
    assert len(store.runs()) == 6
    with pytest.raises(ValueError, match="`states`"):
        store.runs("s", states=["nope"])
    with pytest.raises(ValueError, match="`top`"):
        store.runs("s", top=0)


def test_architecture_saved_once_with_typed_stage_rows(store, storage_url):
    mixed = spec(2, skips=("identity", "projection", "projection"))
    store.save_architecture(mixed, params=1000, flops=2000, input_size=(32, 32))
    store.save_architecture(mixed, params=1000, flops=2000, input_size=(32, 32))  # idempotent
    assert store.architecture(mixed.arch_id) == mixed.to_dict()
    assert store.architecture("missing") is None
    arch = _query(storage_url, "SELECT * FROM nas_architectures")
    assert len(arch) == 1
    assert {
        k: arch[0][k]
        for k in (
            "params",
            "flops",
            "input_size",
            "total_depth",
            "num_stages",
            "block_types",
            "skip_types",
        )
    } == {
        "params": 1000,
        "flops": 2000,
        "input_size": "32x32",
        "total_depth": 14,
        "num_stages": 3,
        "block_types": "basic",
        "skip_types": "identity,projection",
    }
    stages = _query(storage_url, "SELECT * FROM nas_stages ORDER BY stage")
    assert [(s["stage"], s["depth"], s["width"], s["stride"], s["skip"]) for s in stages] == [
        (1, 2, 16, 1, "identity"),
        (2, 2, 32, 2, "projection"),
        (3, 2, 64, 2, "projection"),
    ]

    assert {(s["heads"], s["compression"]) for s in stages} == {(1, 0.5)}  # the defaults

    store.save_recipe("r1", {"epochs": 10, "lr": 0.1}, "cifar10")
    store.save_recipe("r1", {"epochs": 10, "lr": 0.1}, "cifar10")
    assert store.recipe("r1") == {"epochs": 10, "lr": 0.1}
    assert store.recipe("r2") is None


def test_search_lifecycle_and_study_overview(store):
    sid = store.start_search("s", {"trials": 8, "space": "resnet"}, host="box", pid=42)
    store.heartbeat(sid)
    [search] = store.searches("s")
    assert (search.id, search.status, search.host, search.pid) == (sid, "running", "box", 42)
    assert search.config == {"trials": 8, "space": "resnet"}
    assert search.finished is None and search.heartbeat >= search.started

    store.record_run(run("s", 0, val_accuracy=0.6, search_id=sid))
    source = store.record_run(run("s", 1, val_accuracy=0.8, search_id=sid))
    store.record_run(run("s", 2, val_accuracy=0.8, cached_from=source))
    store.record_run(run("s", 3, state="pruned", val_accuracy=0.99))
    store.record_run(run("s", 4, state="failed"))
    [summary] = store.studies()
    assert summary["name"] == "s"
    assert summary["runs"] == {"complete": 3, "pruned": 1, "failed": 1, "running": 0}
    assert (summary["total"], summary["cached"]) == (5, 1)
    assert summary["best_val_accuracy"] == 0.8
    assert summary["running_searches"] == 1
    assert summary["last_activity"] >= search.heartbeat

    store.end_search(sid, "interrupted")
    [search] = store.searches("s")
    assert search.status == "interrupted" and search.finished is not None
    assert store.studies()[0]["running_searches"] == 0
    store.start_search("only-searched", {}, host="box", pid=1)
    assert [s["name"] for s in store.studies()] == ["only-searched", "s"]
    assert store.study_names() == ["only-searched", "s"]
    with pytest.raises(ValueError, match="`status`"):
        store.end_search(sid, "done")
    with pytest.raises(StoreError, match="no such search"):
        store.heartbeat(sid + 100)


@pytest.mark.parametrize(
    "study", ["it's; DROP TABLE nas_runs; --", 'quote " and \\ backslash', "[bold]x[/]", "ünï"]
)
def test_study_names_are_data_not_sql(storage_url, study):
    store = Store(storage_url)
    try:
        run_id = store.record_run(run(study, 0, val_accuracy=0.5))
        store.start_search(study, {"study": study}, host="h", pid=1)
        assert store.get_run(run_id).study == study
        assert [r.id for r in store.runs(study)] == [run_id]
        assert store.run_for_trial(study, 0).id == run_id
        assert store.searches(study)[0].config == {"study": study}
        assert store.studies()[0]["name"] == study
        assert store.runs("it's") == []
    finally:
        store.close()


def test_skip_depth_view_aggregates_complete_trained_runs(store, storage_url):
    shallow_id = spec(3, "identity")  # total depth 1 + 9*2 + 1 = 20 -> bucket 1-20
    deep_id = spec(9, "identity")  # 56 -> 41-60
    deep_plain = spec(9, "none")
    mixed = spec(3, skips=("identity", "projection", "projection"))
    for s in (shallow_id, deep_id, deep_plain, mixed):
        store.save_architecture(s, params=1, flops=1, input_size=(32, 32))
    t = iter(range(100))
    for acc in (0.90, 0.80, 0.70):
        store.record_run(run("s", next(t), deep_id.arch_id, val_accuracy=acc))
    src = store.record_run(run("s", next(t), deep_plain.arch_id, val_accuracy=0.40))
    store.record_run(run("s", next(t), deep_plain.arch_id, val_accuracy=0.40, cached_from=src))
    store.record_run(run("s", next(t), deep_plain.arch_id, state="pruned", val_accuracy=0.1))
    store.record_run(run("s", next(t), deep_plain.arch_id, state="failed"))
    store.record_run(run("s", next(t), shallow_id.arch_id, val_accuracy=0.85))
    store.record_run(run("s", next(t), mixed.arch_id, val_accuracy=0.86))
    store.record_run(run("other", 0, deep_id.arch_id, val_accuracy=0.1))

    rows = _query(
        storage_url,
        "SELECT * FROM nas_skip_depth WHERE study = :study ORDER BY skip_type, depth_min",
        study="s",
    )
    got = [
        (
            r["skip_type"],
            r["depth_bucket"],
            r["runs"],
            round(r["mean_val_accuracy"], 6),
            r["max_val_accuracy"],
        )
        for r in rows
    ]
    assert got == [
        ("identity", "1-20", 1, 0.85, 0.85),
        ("identity", "41-60", 3, 0.8, 0.9),
        ("identity,projection", "1-20", 1, 0.86, 0.86),
        ("none", "41-60", 1, 0.4, 0.4),
    ]


def test_trial_summary_without_optuna_has_null_state_then_joins_optuna(storage_url):
    optuna = pytest.importorskip("optuna")
    store = Store(storage_url)
    arch = spec(3)
    store.save_architecture(arch, params=5, flops=6, input_size=(32, 32))
    store.record_run(run("joined", 0, arch.arch_id, val_accuracy=0.5))
    store.record_run(run("joined", 1, arch.arch_id, state="running"))
    store.close()
    rows = _query(storage_url, "SELECT * FROM nas_trial_summary ORDER BY trial_number")
    assert [r["optuna_state"] for r in rows] == [None, None]
    assert rows[0]["total_depth"] == 20 and rows[0]["skip_types"] == "identity"

    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(study_name="joined", storage=storage)
    done = study.ask()
    study.tell(done, 0.5)
    study.ask()  # trial 1 stays RUNNING
    storage.engine.dispose()

    Store(storage_url).close()  # the next open sees Optuna's tables and recreates the view
    rows = _query(storage_url, "SELECT * FROM nas_trial_summary ORDER BY trial_number")
    assert [(r["trial_number"], r["state"], r["optuna_state"]) for r in rows] == [
        (0, "complete", "COMPLETE"),
        (1, "running", "RUNNING"),
    ]
    assert all(r["optuna_trial_id"] is not None for r in rows)


def test_four_processes_write_ten_runs_each(storage_url):
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        counts = pool.starmap(write_runs, [(storage_url, w, 10) for w in range(4)])
    assert counts == [10] * 4
    store = Store(storage_url)
    try:
        runs = store.runs()
        assert len(runs) == 40
        assert sorted({r.study for r in runs}) == [f"concurrent-{w}" for w in range(4)]
        assert all(store.weights(r.id) == b"w" * 64 for r in runs[:4])
    finally:
        store.close()


def test_run_record_defaults_after_state():
    names = [f.name for f in fields(RunRecord)]
    assert names[:8] == [
        "id",
        "study",
        "trial_number",
        "arch_id",
        "recipe_id",
        "dataset",
        "fidelity",
        "state",
    ]
    record = RunRecord(None, "s", 0, "a", None, None, None, "running")
    assert record.extra == {} and record.val_accuracy is None


def test_dense_and_transformer_stages_keep_their_own_fields(store, storage_url):
    hybrid = ArchitectureSpec(
        stages=(
            StageSpec(depth=2, width=8, block="dense", expansion=2, compression=0.75),
            StageSpec(depth=1, width=16, stride=2, block="transformer", heads=4),
        ),
        pos_embed=2,
    )
    store.save_architecture(hybrid, params=10, flops=20, input_size=(8, 8))
    assert ArchitectureSpec.from_dict(store.architecture(hybrid.arch_id)) == hybrid
    arch = _query(storage_url, "SELECT block_types, total_depth FROM nas_architectures")[0]
    assert arch == {"block_types": "dense,transformer", "total_depth": 1 + 4 + 1 + 4 + 1}
    stages = _query(storage_url, "SELECT block, heads, compression FROM nas_stages ORDER BY stage")
    assert [tuple(s.values()) for s in stages] == [("dense", 1, 0.75), ("transformer", 4, 0.5)]


def test_meta_facts_are_read_back_replaced_and_none_when_absent(store, storage_url):
    assert store.meta("artifact_store") is None
    store.set_meta("artifact_store", "/data/nas.db.artifacts")
    store.set_meta("artifact_store", "s3://bucket/resnas")  # replaced, not duplicated
    assert store.meta("artifact_store") == "s3://bucket/resnas"
    rows = _query(storage_url, "SELECT value FROM nas_meta WHERE key = 'artifact_store'")
    assert rows == [{"value": "s3://bucket/resnas"}]
    with pytest.raises(ValueError, match="`value`"):
        store.set_meta("artifact_store", 3)
