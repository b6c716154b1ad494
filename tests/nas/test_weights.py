"""Trained weights in Optuna's artifact store (`nas.weights`): saved and linked from the trial,
found again from what the store recorded, checked on every read, still read from the old
`nas_weights` table, removed with their study; the same on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import save as save_safetensors

import db
from db import RunRecord, Store
from db.engine import create_store_engine, normalize_url
from nas.errors import UserError
from nas.export import export, weights_for
from nas.recorder import Recorder, Subject
from nas.weights import META_KEY, Artifacts, WeightsError, check_safetensors, default_location
from search_spaces import ArchitectureSpec, StageSpec, build_model

STUDY = "w"


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """PostgreSQL's default artifact directory lives under $XDG_DATA_HOME: keep it in tmp."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.delenv("NAS_ARTIFACTS", raising=False)
    return home


@pytest.fixture
def store(storage_url):
    s = Store(storage_url)
    yield s
    s.close()


def tiny_spec() -> ArchitectureSpec:
    return ArchitectureSpec(stages=(StageSpec(depth=1, width=8),
                                    StageSpec(depth=1, width=16, stride=2)),
                            stem_width=8)


def weights_of(spec: ArchitectureSpec, seed: int = 0) -> bytes:
    """Safetensors bytes of a (randomly initialised) network: a trained run's, as far as
    storing and exporting go."""
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in build_model(spec).state_dict().items()}
    return save_safetensors(state)


def record(store: Store, spec: ArchitectureSpec, trial: int, *, study: str = STUDY,
           weights: bytes | None = None, **fields) -> RunRecord:
    """A complete run of `spec` (architecture saved with it); `weights` into nas_weights."""
    run = RunRecord(id=None, study=study, trial_number=trial, arch_id=spec.arch_id,
                    recipe_id=None, dataset="digits", fidelity=1, state="complete",
                    val_accuracy=0.5 + trial / 100, params=1000, flops=1000, **fields)
    run_id = store.record_run(run, weights=weights, spec=spec, input_size=(32, 32))
    return store.get_run(run_id)


def saved_run(store: Store, artifacts: Artifacts, spec: ArchitectureSpec, trial: int = 0,
              *, study: str = STUDY, optuna_trial=None) -> tuple[RunRecord, bytes]:
    data = weights_of(spec, trial)
    fields = artifacts.save(data, trial=optuna_trial, arch_id=spec.arch_id)
    return record(store, spec, trial, study=study, **fields), data


def artifact_file(artifacts: Artifacts, run: RunRecord) -> Path:
    return Path(artifacts.location) / run.weights_artifact


# -- saving and loading -----------------------------------------------------------------------
def test_saved_weights_load_back_and_the_optuna_trial_lists_them(store, storage_url, data_home):
    study = optuna.create_study(study_name=STUDY, storage=storage_url, direction="maximize")
    trial = study.ask()
    artifacts = Artifacts.open(storage_url, store)
    spec = tiny_spec()
    run, data = saved_run(store, artifacts, spec, optuna_trial=trial)

    assert run.weights_size == len(data)
    assert run.weights_sha256 == hashlib.sha256(data).hexdigest()
    assert artifacts.load(run) == data
    assert store.weights(run.id) is None  # nothing went to the SQL table
    [meta] = optuna.artifacts.get_all_artifact_meta(trial)
    assert meta.artifact_id == run.weights_artifact
    assert meta.filename == f"model-{spec.arch_id}.safetensors"
    assert meta.mimetype == "application/octet-stream"
    study.tell(trial, 0.5)
    frozen = study.trials[0]  # what optuna-dashboard reads
    listed = optuna.artifacts.get_all_artifact_meta(
        frozen, storage=optuna.storages.RDBStorage(storage_url))
    assert [m.artifact_id for m in listed] == [run.weights_artifact]
    if storage_url.startswith("postgresql"):  # the data home, by host, port and database
        name = storage_url.rsplit("/", 1)[1]
        assert artifacts.location == str(data_home / "resnas" / "artifacts"
                                         / f"127.0.0.1-5432-{name}")
    # Another reader of the same database (a new Store) loads them without being told where.
    with Store(storage_url) as again:
        assert Artifacts.open(storage_url, again).load(again.get_run(run.id)) == data


def test_weights_saved_without_a_trial_are_written_unlinked_and_load_back(store, storage_url):
    artifacts = Artifacts.open(storage_url, store)
    run, data = saved_run(store, artifacts, tiny_spec())  # as `nas retrain` does: no Optuna trial
    assert artifacts.load(run) == data and len(run.weights_artifact) == 36  # a uuid


def test_bytes_that_are_not_safetensors_are_refused_before_anything_is_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        artifacts = Artifacts.open(url, store)
        good = weights_of(tiny_spec())
        check_safetensors(good)
        for bad, why in ((b"", "too short"), (b"\xff" * 8 + b"{}", "does not fit"),
                         ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
                         (good[:-1], "cover"), (good + b"x", "cover")):
            with pytest.raises(ValueError, match=why):
                artifacts.save(bad, arch_id="a1")
        assert not (tmp_path / "nas.db.artifacts").exists()
        assert store.meta(META_KEY) is None


def test_a_result_is_kept_when_the_artifact_store_refuses_its_weights(tmp_path):
    class Full:  # a disk or bucket that takes nothing more
        def write(self, artifact_id, body):
            raise OSError(28, "No space left on device")

    url = f"sqlite:///{tmp_path / 'nas.db'}"
    spec = tiny_spec()
    with Store(url) as store:
        recorder = Recorder(store, STUDY, input_size=(32, 32),
                            artifacts=Artifacts(Full(), "/full", store, record=False))
        run = recorder.result(Subject(0, spec, "r", "digits", 1, 1000, 1000),
                              {"state": "complete", "val_accuracy": 0.5,
                               "weights": weights_of(spec)})
        kept = store.get_run(run.id)
        assert kept.state == "complete" and kept.val_accuracy == 0.5
        assert kept.weights_artifact is None and store.weights(run.id) is None
        assert "No space left on device" in kept.extra["weights_error"]


def test_a_worker_result_with_broken_weights_is_kept_without_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    spec = tiny_spec()
    with Store(url) as store:
        recorder = Recorder(store, STUDY, input_size=(32, 32),
                            artifacts=Artifacts.open(url, store))
        subject = Subject(0, spec, "r", "digits", 1, 1000, 1000)
        good = recorder.result(subject, {"state": "complete", "val_accuracy": 0.5,
                                         "weights": weights_of(spec)})
        assert good.weights_artifact and store.weights(good.id) is None
        subject = Subject(1, spec, "r", "digits", 1, 1000, 1000)
        bad = recorder.result(subject, {"state": "complete", "val_accuracy": 0.5,
                                        "weights": b"not safetensors"})
        assert bad.state == "complete" and bad.weights_artifact is None
        assert "not a safetensors file" in store.get_run(bad.id).extra["weights_error"]
        # Without an artifact store the Recorder keeps them in nas_weights, as it used to.
        old = Recorder(store, "old", input_size=(32, 32))
        run = old.result(Subject(0, spec, "r", "digits", 1, 1000, 1000),
                         {"state": "complete", "weights": weights_of(spec)})
        assert run.weights_artifact is None and store.weights(run.id) == weights_of(spec)


# -- where the artifact store is ----------------------------------------------------------------
def test_the_default_is_beside_the_sqlite_file_and_is_recorded_on_first_save(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    beside = tmp_path / "nas.db.artifacts"
    with Store(url) as store:
        artifacts = Artifacts.open(url, store)
        assert artifacts.location == str(beside)
        assert not beside.exists() and store.meta(META_KEY) is None  # opening writes nothing
        run, data = saved_run(store, artifacts, tiny_spec())
        assert artifact_file(artifacts, run).is_file()
        assert store.meta(META_KEY) == str(beside)
    with Store(url) as store:  # `nas export` on the same database, no flag
        found = Artifacts.open(url, store)
        assert found.location == str(beside) and found.load(store.get_run(run.id)) == data


def test_a_recorded_location_is_found_without_a_flag_and_a_given_one_wins(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    elsewhere = tmp_path / "shared" / "weights"
    with Store(url) as store:
        monkeypatch.setenv("HOME", str(tmp_path))
        given = Artifacts.open(url, store, "~/shared/weights")  # `~` expanded, created
        assert given.location == str(elsewhere) and elsewhere.is_dir()
        run, data = saved_run(store, given, tiny_spec())
        assert store.meta(META_KEY) == str(elsewhere)
        assert Artifacts.open(url, store).location == str(elsewhere)
        assert Artifacts.open(url, store).load(run) == data
        other = Artifacts.open(url, store, str(tmp_path / "other"))
        assert other.location == str(tmp_path / "other")
        saved_run(store, other, tiny_spec(), 1)
        assert store.meta(META_KEY) == str(elsewhere)  # the first location stays recorded


def test_the_postgresql_default_names_host_port_and_database_but_no_secret(data_home):
    where = default_location("postgresql://nas:s3cret@db.example:6543/search?sslmode=require")
    assert where == str(data_home / "resnas" / "artifacts" / "db.example-6543-search")
    assert "s3cret" not in where and "nas:" not in where
    assert default_location("postgresql://nas@db/x").endswith("db-5432-x")
    assert default_location("sqlite:///relative.db") == str(Path.cwd() / "relative.db.artifacts")
    assert default_location("sqlite://") is None  # in memory: a temporary directory


def test_a_location_that_cannot_be_used_is_one_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        with pytest.raises(UserError) as info:
            Artifacts.open(url, store, "/proc/resnas-weights")
        message = str(info.value)
        assert "/proc/resnas-weights" in message and "`--artifacts`" in message
        assert "\n" not in message
        with pytest.raises(UserError, match="allowed: a directory or s3://"):
            Artifacts.open(url, store, "gs://bucket/x")
        with pytest.raises(UserError, match="credentials do not belong") as info:
            Artifacts.open(url, store, "s3://key:secret@bucket/x")
        assert "secret" not in str(info.value).replace("credentials", "")
        try:
            import boto3  # noqa: F401
        except ImportError:
            with pytest.raises(UserError, match=r"needs boto3.*pip install boto3"):
                Artifacts.open(url, store, "s3://bucket/prefix")
        # A default directory that cannot be created (here: under a plain file, which even
        # root cannot do) is said when weights are first saved, not when opening to read.
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        artifacts = Artifacts.open(f"sqlite:///{blocker / 'nas.db'}", store)
        with pytest.raises(UserError) as info:
            artifacts.save(weights_of(tiny_spec()), arch_id="a1")
        message = str(info.value)
        assert str(blocker / "nas.db.artifacts") in message and "`--artifacts`" in message
        assert "\n" not in message


# -- reading what the store recorded ----------------------------------------------------------
def test_a_run_whose_weights_are_in_the_old_table_still_loads_and_exports(store, storage_url,
                                                                          tmp_path):
    spec = tiny_spec()
    data = weights_of(spec)
    run = record(store, spec, 0, weights=data)  # as recorded before the artifact store
    artifacts = Artifacts.open(storage_url, store)
    assert run.weights_artifact is None and artifacts.load(run) == data
    assert weights_for(store, run) == (data, run.id)
    report = export(store, STUDY, tmp_path / "bundle", formats="safetensors")
    assert report.run_id == run.id and report.max_abs_diff["safetensors"] == 0.0
    cached = record(store, spec, 1, cached_from=run.id)  # answered from it: its weights
    assert weights_for(store, cached) == (data, run.id)


@pytest.mark.parametrize("damage, why", [
    ("changed", "does not match its recorded sha256"),
    ("truncated", "not the"),
    ("longer", "is longer than"),
    ("gone", "is missing"),
    ("not safetensors", "is not a safetensors file"),
])
def test_a_damaged_artifact_is_a_weights_error_of_one_line(tmp_path, damage, why):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        artifacts = Artifacts.open(url, store)
        run, data = saved_run(store, artifacts, tiny_spec())
        path = artifact_file(artifacts, run)
        if damage == "changed":
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        elif damage == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "longer":
            path.write_bytes(data + b"\0")
        elif damage == "gone":
            path.unlink()
        else:  # the recorded size and checksum match, but the bytes are no safetensors file
            junk = b"\xff" * len(data)
            path.write_bytes(junk)
            store.record_run(RunRecord(**{**run.__dict__, "id": None,
                                          "weights_sha256": hashlib.sha256(junk).hexdigest()}))
            run = store.get_run(run.id)
        with pytest.raises(WeightsError) as info:
            artifacts.load(run)
        message = str(info.value)
        assert why in message and "\n" not in message
        assert f"run {run.id} (trial 0 of study '{STUDY}')" in message
        assert artifacts.location in message
        assert isinstance(info.value, UserError)


def _nas(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_the_export_command_reports_a_damaged_artifact_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        artifacts = Artifacts.open(url, store)
        run, _ = saved_run(store, artifacts, tiny_spec())
    ok = _nas("export", STUDY, "--storage", url, "--out", str(tmp_path / "ok"),
              "--formats", "safetensors", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    artifact_file(artifacts, run).write_bytes(b"\0" * 16)
    bad = _nas("export", STUDY, "--storage", url, "--out", str(tmp_path / "bad"),
               "--formats", "safetensors", cwd=tmp_path)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "holds 16 bytes" in bad.stderr and run.weights_artifact in bad.stderr
    moved = tmp_path / "moved"
    artifact_file(artifacts, run).rename(tmp_path / "gone")
    moved.mkdir()
    missing = _nas("export", STUDY, "--storage", url, "--out", str(tmp_path / "m"),
                   "--artifacts", str(moved), cwd=tmp_path)
    assert missing.returncode == 2 and "is missing" in missing.stderr
    assert str(moved) in missing.stderr and "Traceback" not in missing.stderr


# -- deleting -----------------------------------------------------------------------------------
def test_delete_removes_the_studys_artifacts_and_keeps_the_others(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        artifacts = Artifacts.open(url, store)
        mine = [saved_run(store, artifacts, tiny_spec(), i)[0] for i in range(2)]
        theirs, data = saved_run(store, artifacts, tiny_spec(), 0, study="keep")
        artifact_file(artifacts, mine[1]).unlink()  # already gone: no error
    result = _nas("delete", STUDY, "--storage", url, "--yes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 artifacts" in result.stdout and "2 nas_runs" in result.stdout
    assert not artifact_file(artifacts, mine[0]).exists()
    with Store(url) as store:
        assert store.runs(STUDY) == []
        assert Artifacts.open(url, store).load(store.get_run(theirs.id)) == data
        assert artifacts.remove(mine[0]) is False  # removing twice is no error


# -- a database from before the artifact store ----------------------------------------------------
def test_a_0005_database_with_weights_in_nas_weights_exports_after_the_upgrade(storage_url,
                                                                               tmp_path):
    spec = tiny_spec()
    data = weights_of(spec)
    db.upgrade(storage_url, "0005")
    engine = create_store_engine(normalize_url(storage_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO nas_runs (study, trial_number, arch_id, dataset, fidelity, state,"
                " val_accuracy, params, flops) VALUES (:s, 0, :a, 'digits', 1, 'complete', 0.7,"
                " 1000, 1000)"), {"s": STUDY, "a": spec.arch_id})
            run_id = conn.execute(sa.text("SELECT id FROM nas_runs")).scalar_one()
            conn.execute(sa.text("INSERT INTO nas_weights (run_id, format, data)"
                                 " VALUES (:r, 'safetensors', :d)"), {"r": run_id, "d": data})
    finally:
        engine.dispose()

    with Store(storage_url) as store:  # migrates to head
        assert db.current_revision(storage_url) == db.head_revision() == "0006"
        store.save_architecture(spec, params=1000, flops=1000, input_size=(32, 32))
        run = store.get_run(run_id)
        assert run.weights_artifact is None and run.weights_size is None
        report = export(store, STUDY, tmp_path / "bundle", formats="safetensors")
        assert report.run_id == run_id and report.max_abs_diff["safetensors"] == 0.0
        assert store.meta(META_KEY) is None  # reading saved nothing, recorded nothing


# -- a search ---------------------------------------------------------------------------------
def test_a_search_keeps_its_weights_in_the_artifact_store_linked_from_the_trials(tmp_path):
    from nas.config import build_config
    from nas.executors.local import LocalExecutor, Script
    from nas.search import run_search

    def trained(request):
        spec = ArchitectureSpec.from_dict(request.spec)
        return Script(epochs=[{"val_accuracy": 0.5, "val_loss": 0.5}],
                      extra={"weights": weights_of(spec)})

    url = f"sqlite:///{tmp_path / 'nas.db'}"
    config = build_config({}, {"study": STUDY, "storage": url, "space": "resnet", "trials": 2,
                               "workers": 1, "seed": 0, "pruner": "none",
                               "artifacts": str(tmp_path / "art"), "train": {"epochs": 1}},
                          "flags")
    run_search(config, executor=LocalExecutor(trained))
    with Store(url) as store:
        runs = [r for r in store.runs(STUDY) if r.cached_from is None]
        assert runs and all(r.weights_artifact for r in runs)
        assert all(store.weights(r.id) is None for r in runs)
        assert store.meta(META_KEY) == str(tmp_path / "art")
        storage = optuna.storages.RDBStorage(url)
        trials = optuna.load_study(study_name=STUDY, storage=storage).trials
        for r in runs:
            [meta] = optuna.artifacts.get_all_artifact_meta(trials[r.trial_number],
                                                            storage=storage)
            assert meta.artifact_id == r.weights_artifact
        report = export(store, STUDY, tmp_path / "bundle", formats="safetensors")
        assert report.max_abs_diff["safetensors"] == 0.0
