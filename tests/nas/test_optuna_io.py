"""BatchingStorage: a new trial's params and attributes in one commit, on SQLite and PostgreSQL."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa

from nas.optuna_io import BatchingStorage, dashboard_note
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


def test_batch_writes_params_and_attrs_in_one_commit(storage_url):
    study, storage = _study(storage_url)
    # The first trial teaches the process the study's distributions; the batched path is for
    # the trials after it.
    first = study.ask()
    with storage.batch(first):
        _suggest(first)
    study.tell(first, 0.5)

    trial = study.ask()
    commits = _count_commits(storage)
    with storage.batch(trial) as batch:
        _suggest(trial)
        batch.user_attrs.update({"arch_id": "abc", "params": 123})
        batch.system_attrs["constraints:params"] = -5.0
        batch.study_system_attrs.update(dashboard_note(trial, "**note**") or {})
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
