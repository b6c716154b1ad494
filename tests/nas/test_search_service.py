"""The search service: pruning, multi-objective fronts, dedup, constraints and surviving faults.

Real Ray, real Lightning training on digits, the real SQL store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from db import Store
from nas.config import build_config
from nas.samplers import CostAwareHalving
from nas.search import NOT_STARTED_REASON, Progress, run_search

TINY_SPACE = """
name: tiny
description: four architectures only
stem: cifar
stem_width: 8
stages:
  - {stride: 1, depth: [1], width: [8], skip: [identity, projection]}
  - {stride: 2, depth: [1], width: [16], skip: [identity, projection]}
"""


def _config(url: str, study: str, **overrides):
    train = overrides.pop("train", {"epochs": 2})
    flags = {"study": study, "storage": url, "space": "resnet", "trials": 6, "workers": 2,
             "seed": 1, "train": train}
    flags.update(overrides)
    return build_config({}, flags, "flags")


def _optuna_trials(url: str, study: str):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_asha_prunes_some_trials_early(ray_local, sqlite_url):
    summary = run_search(_config(sqlite_url, "asha", trials=10, pruner="asha", train={"epochs": 4}))
    runs = Store(sqlite_url).runs("asha")
    pruned = [r for r in runs if r.state == "pruned"]
    assert summary.counts["pruned"] >= 1, summary.counts
    store = Store(sqlite_url)
    for r in pruned:
        assert len(store.epochs(r.id)) < 4 or r.cached_from is not None
    states = {t.state for t in _optuna_trials(sqlite_url, "asha")}
    assert optuna.trial.TrialState.PRUNED in states


def test_multi_objective_search_returns_a_pareto_front_and_still_prunes(ray_local, sqlite_url):
    summary = run_search(
        _config(sqlite_url, "mo", trials=12, objectives="accuracy,params", pruner="asha",
                train={"epochs": 3}, seed=3)
    )
    front = summary.best
    assert front, "a multi-objective search must report its Pareto front"
    for a in front:  # no point of the front dominates another
        for b in front:
            if a is not b:
                assert not (
                    a["val_accuracy"] >= b["val_accuracy"] and a["params"] <= b["params"]
                    and (a["val_accuracy"], a["params"]) != (b["val_accuracy"], b["params"])
                )
    assert summary.counts["pruned"] >= 1, summary.counts
    study = optuna.load_study(study_name="mo", storage=sqlite_url)
    assert len(study.directions) == 2


def test_cost_aware_halving_only_compares_with_cheaper_candidates():
    rule = CostAwareHalving(epochs=9)
    # Three big, accurate models reach rung 1.
    for acc in (0.9, 0.92, 0.95):
        assert not rule.should_prune(1, (1_000_000.0,), acc) or acc < 0.95
    # A tiny model with lower accuracy is not pruned: nothing as cheap beats it.
    assert rule.should_prune(1, (1_000.0,), 0.5) is False
    # A big model that loses to cheaper-or-equal ones is pruned.
    assert rule.should_prune(1, (2_000_000.0,), 0.3) is True
    # Epochs between rungs never prune.
    assert rule.should_prune(2, (2_000_000.0,), 0.0) is False


def test_duplicates_are_trained_once_and_answered_from_the_store(ray_local, sqlite_url, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    summary = run_search(
        _config(sqlite_url, "dups", space=str(space), trials=10, pruner="none", sampler="random")
    )
    runs = Store(sqlite_url).runs("dups")
    assert len(runs) == 10
    trained = [r for r in runs if r.cached_from is None]
    assert len({r.arch_id for r in trained}) == len(trained) <= 4
    assert summary.counts["cached"] == 10 - len(trained) >= 6
    by_id = {r.id: r for r in runs}
    for r in runs:
        if r.cached_from is not None:
            source = by_id[r.cached_from]
            assert (source.arch_id, source.val_accuracy) == (r.arch_id, r.val_accuracy)


def test_no_trained_trial_exceeds_max_params(ray_local, sqlite_url):
    limit = 40_000
    summary = run_search(_config(sqlite_url, "budget", trials=6, max_params=limit, pruner="none"))
    runs = Store(sqlite_url).runs("budget")
    assert runs and all(r.params <= limit for r in runs)
    infeasible = [t for t in _optuna_trials(sqlite_url, "budget") if t.user_attrs.get("infeasible")]
    assert summary.counts["infeasible"] == len(infeasible)
    assert all(t.user_attrs["params"] > limit for t in infeasible)
    assert all(t.constraints.get("params", 0) > 0 for t in infeasible)
    assert not [r for r in runs if r.arch_id in {t.user_attrs["arch_id"] for t in infeasible}]


class KillFirstWorker(Progress):
    """SIGKILLs the Ray worker process of the first trial that reports its second epoch."""

    def __init__(self) -> None:
        self.killed: list[tuple[int, int]] = []

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        if not self.killed and epoch >= 2:
            os.kill(metrics["pid"], signal.SIGKILL)
            self.killed.append((number, metrics["pid"]))


def test_a_killed_worker_leads_to_a_retried_trial(ray_local, sqlite_url):
    killer = KillFirstWorker()
    summary = run_search(
        _config(sqlite_url, "killworker", trials=4, pruner="none", train={"epochs": 4}),
        progress=killer,
    )
    assert killer.killed, "no trial worker was killed"
    victim = killer.killed[0][0]
    runs = Store(sqlite_url).runs("killworker")
    lost = [r for r in runs if r.reason and r.reason.startswith("worker_lost")]
    assert [r.trial_number for r in lost] == [victim], [(r.trial_number, r.state, r.reason) for r in runs]
    retries = [r for r in runs if r.retry_of == victim]
    assert len(retries) == 1 and retries[0].state == "complete"
    trials = _optuna_trials(sqlite_url, "killworker")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    counted = [t for t in trials if not t.user_attrs.get("retried")]
    assert len(counted) == 4 and all(t.state.is_finished() for t in counted)
    assert trials[victim].params == trials[retries[0].trial_number].params
    assert summary.status == "finished"


def _nas_search(url: str, study: str, trials: int) -> list[str]:
    return [sys.executable, "-m", "nas", "search", "--study", study, "--storage", url,
            "--trials", str(trials), "--workers", "2", "--epochs", "6", "--pruner", "none",
            "--seed", "2", "--quiet"]


def _wait_for_runs(url: str, study: str, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if len(Store(url).runs(study)) >= n:
                return
        except Exception:  # noqa: BLE001 - the database may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"no {n} runs of {study} within {timeout} s")


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_killed_or_interrupted_driver_resumes_with_nothing_left_running(how, sqlite_url):
    cmd = _nas_search(sqlite_url, "resume", trials=5)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_runs(sqlite_url, "resume", 1)
        if how == "sigkill":
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if how == "sigint":
        assert proc.returncode == 130, err
        assert "Resume with the same command" in err
        assert "Traceback" not in err
    before = {r.trial_number for r in Store(sqlite_url).runs("resume") if r.state == "complete"}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = _optuna_trials(sqlite_url, "resume")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    counted = [t for t in trials if not t.user_attrs.get("retried")]
    assert len(counted) == 5 and all(t.state.is_finished() for t in counted)
    after = {r.trial_number for r in Store(sqlite_url).runs("resume") if r.state == "complete"}
    assert before <= after  # nothing finished was lost


def test_compute_budget_stops_proposing(ray_local, sqlite_url):
    summary = run_search(
        _config(sqlite_url, "budgeted", trials=50, pruner="none", max_compute_hours=1e-4)
    )
    assert summary.status == "budget"
    assert 1 <= sum(summary.counts.values()) < 50
    # Nothing in flight was dropped: every trial Optuna knows is finished, and recorded unless
    # it was queued behind a busy worker and revoked before it started.
    trials = _optuna_trials(sqlite_url, "budgeted")
    assert all(t.state.is_finished() for t in trials)
    started = [t for t in trials if t.user_attrs.get("reason") != NOT_STARTED_REASON]
    assert len(Store(sqlite_url).runs("budgeted")) == len(started)


@pytest.fixture
def runners(ray_local):
    """Two resident runners (`nas pool up`) on the test's Ray, gone after the test."""
    from nas import pool

    pool.up(slots=2, cpus=1.0, gpus=0.0)
    yield
    pool.down(stop_ray=False)


def test_queued_trials_not_started_when_the_time_is_up_never_start(runners, sqlite_url):
    # Two runners with two trials queued behind each; the time is up while the first two
    # train. (The time counts from the search's start, which on a loaded machine has taken
    # most of 0.5 s before the first trial: finding the runners and opening the broker.)
    late = dict(workers=2, pruner="none", train={"epochs": 12})
    summary = run_search(_config(sqlite_url, "late", trials=10, prefetch=2, timeout=2.0, **late))
    assert summary.status == "budget"
    assert sum(summary.counts.values()) == 2
    trials = _optuna_trials(sqlite_url, "late")
    revoked = [t for t in trials if t.user_attrs.get("reason") == NOT_STARTED_REASON]
    assert len(revoked) == 4 and len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.FAIL for t in revoked)
    assert sorted(r.trial_number for r in Store(sqlite_url).runs("late")) == [0, 1]
    # They do not count toward --trials: a study of 3 trials needs one more.
    again = run_search(_config(sqlite_url, "late", trials=3, prefetch=0, **late))
    assert sum(again.counts.values()) == 1


def test_a_busy_runner_gets_its_next_trial_queued_but_never_the_last_ones(runners, sqlite_url):
    # Two runners, five trials. With one queued behind each, trial 2 is handed out while
    # trials 0 and 1 train, so a runner starts it without waiting for the driver to record
    # the one before; the last two are handed out only to free runners (queued, one could
    # start after the other runner has run dry). Without queueing, trial 2 is asked for
    # after a trial has ended.
    def asked_vs_first_end(study: str, prefetch: int) -> tuple[float, float]:
        run_search(_config(sqlite_url, study, trials=5, prefetch=prefetch, sampler="random",
                           pruner="none", train={"epochs": 2}))
        end = min(r.finished for r in Store(sqlite_url).runs(study) if r.trial_number < 2)
        asked = {t.number: t.datetime_start.timestamp() for t in _optuna_trials(sqlite_url, study)}
        return asked[2] - end, asked[3] - end

    third, fourth = asked_vs_first_end("queue1", 1)
    assert third < 0 < fourth
    third, _ = asked_vs_first_end("queue0", 0)
    assert third > 0


def test_a_free_runner_takes_over_a_trial_queued_behind_a_long_one(runners, sqlite_url):
    # Trial 0 is long, the others short. Trial 2 queues behind trial 0 (both runners are
    # busy; the first is the least busy). When the other runner has trained trial 1, the
    # last two trials may not queue and trial 2 holds the other slot: that runner would
    # idle until trial 0 ends. Trial 2 moves to it instead.
    from nas.search import Search

    search = Search(_config(sqlite_url, "steal", trials=5, prefetch=1, space="skip-ablation",
                            sampler="random", pruner="none", train={"epochs": 1},
                            enqueue=("resnet56", "resnet20", "plain20", "resnet32", "plain56")))
    assert sum(search.run().counts.values()) == 5
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("steal")}
    assert [runs[n].state for n in range(5)] == ["complete"] * 5
    pid = {n: r.extra["worker_pid"] for n, r in runs.items()}
    assert pid[2] == pid[1] != pid[0]
    assert runs[2].started < runs[0].finished
    assert search._stolen == 1
    # The trial moved was told once: no "not started" trial, nothing trained twice.
    assert len(_optuna_trials(sqlite_url, "steal")) == 5


def test_a_free_runner_takes_the_trial_at_the_back_of_a_busy_runners_line(runners, sqlite_url, tmp_path):
    # Runner 0 trains trial 0 (short), then trial 2 (long), which it had queued; trial 4 is
    # queued behind trial 2. Runner 1 trains 1 and 3, then has nothing to do, and the last
    # two trials may not queue. Trial 2 still carries its queued mark, but it has started:
    # the trial to move is trial 4, at the back of runner 0's line.
    import json
    from dataclasses import replace

    from nas.search import Search
    from search_spaces import zoo

    def arch(depth: int, skip: str) -> str:  # blocks per stage: compute grows with depth
        base = zoo.get("resnet20")
        spec = replace(base, name=None, stages=tuple(replace(s, depth=depth, skip=skip) for s in base.stages))
        path = tmp_path / f"d{depth}-{skip}.json"
        path.write_text(json.dumps({"spec": spec.to_dict()}))
        return str(path)

    order = [(1, "identity"), (3, "none"), (9, "identity"), (1, "none"), (5, "identity"),
             (3, "identity"), (1, "gated")]
    search = Search(_config(sqlite_url, "steal-back", trials=7, prefetch=1, space="skip-ablation",
                            sampler="random", pruner="none", train={"epochs": 1},
                            enqueue=tuple(arch(d, k) for d, k in order)))
    assert sum(search.run().counts.values()) == 7
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("steal-back")}
    assert [runs[n].state for n in range(7)] == ["complete"] * 7
    pid = {n: r.extra["worker_pid"] for n, r in runs.items()}
    assert pid[0] == pid[2] != pid[1] == pid[3]
    assert pid[4] == pid[1]
    assert runs[4].started < runs[2].finished
    assert search._stolen == 1
    assert len(_optuna_trials(sqlite_url, "steal-back")) == 7


def test_enqueued_architectures_run_first_once_each(ray_local, sqlite_url):
    from dataclasses import replace

    from search_spaces import zoo

    ids = [replace(zoo.get(n), in_channels=1).arch_id for n in ("resnet20", "resnet32")]
    cfg = dict(space="skip-ablation", sampler="random", train={"epochs": 1},
               enqueue=("resnet20", "resnet32", "resnet20"))
    run_search(_config(sqlite_url, "enq", trials=3, **cfg))
    runs = sorted(Store(sqlite_url).runs("enq"), key=lambda r: r.trial_number)
    assert [r.arch_id for r in runs[:2]] == ids
    # Resumed with the same --enqueue, the study holds them already: nothing is enqueued twice.
    run_search(_config(sqlite_url, "enq", trials=4, **cfg))
    fixed = [t for t in _optuna_trials(sqlite_url, "enq") if "fixed_params" in t.system_attrs]
    assert [t.number for t in fixed] == [0, 1]


def test_a_trial_already_queued_in_the_study_runs_before_the_enqueued_architectures(
    ray_local, sqlite_url
):
    """--enqueue architectures are given to the trials as they are asked; one that `ask`
    takes from Optuna's queue (a retry, another process's `enqueue_trial`) keeps its own."""
    from dataclasses import replace

    from search_spaces import load_space, zoo

    space = load_space("skip-ablation")
    resnet20, resnet32 = (replace(zoo.get(n), in_channels=1) for n in ("resnet20", "resnet32"))
    study = optuna.create_study(study_name="queued", storage=sqlite_url, direction="maximize")
    study.enqueue_trial(space.params_for(resnet32))
    run_search(_config(sqlite_url, "queued", trials=2, space="skip-ablation", sampler="random",
                       train={"epochs": 1}, enqueue=("resnet20",)))
    runs = sorted(Store(sqlite_url).runs("queued"), key=lambda r: r.trial_number)
    assert [r.arch_id for r in runs] == [resnet32.arch_id, resnet20.arch_id]
    trials = _optuna_trials(sqlite_url, "queued")
    assert [t.system_attrs["fixed_params"] for t in trials] == [
        space.params_for(resnet32), space.params_for(resnet20)]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_json_lines_enqueue_and_store_views_from_the_command_line(sqlite_url, tmp_path):
    import json

    from search_spaces import zoo

    cmd = [sys.executable, "-m", "nas", "search", "--study", "cli", "--storage", sqlite_url,
           "--space", "skip-ablation", "--enqueue", "resnet20", "--trials", "2", "--workers", "2",
           "--epochs", "1", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [x["event"] for x in lines] == ["trial", "trial", "summary"]
    first = min(lines[:2], key=lambda x: x["number"])
    from dataclasses import replace

    assert first["arch_id"] == replace(zoo.get("resnet20"), in_channels=1).arch_id
    assert lines[-1]["study"] == "cli"

    trials = subprocess.run([sys.executable, "-m", "nas", "trials", "cli", "--storage", sqlite_url,
                             "--format", "json"], capture_output=True, text=True, timeout=120)
    assert trials.returncode == 0, trials.stderr
    rows = json.loads(trials.stdout)
    assert sorted(r["trial_number"] for r in rows) == [0, 1]
    status = subprocess.run([sys.executable, "-m", "nas", "status", "--storage", sqlite_url],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "cli" in status.stdout


def test_grid_search_covers_the_grid_once_and_stops(ray_local, sqlite_url, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    summary = run_search(
        _config(sqlite_url, "grid", space=str(space), trials=10, sampler="grid", pruner="none",
                train={"epochs": 1})
    )
    runs = Store(sqlite_url).runs("grid")
    assert summary.status == "finished"
    assert len(runs) == 4 and len({r.arch_id for r in runs}) == 4
    assert all(r.cached_from is None for r in runs)


def test_a_search_on_a_ray_it_did_not_start_leaves_no_broker_behind(ray_local, sqlite_url):
    import ray

    from nas.search import Search

    search = Search(_config(sqlite_url, "nobroker", trials=1, pruner="none",
                            train={"epochs": 1}))
    assert search.run().counts.get("complete") == 1
    assert ray.is_initialized()  # the session's Ray outlives the search ...
    with pytest.raises(ray.exceptions.RayActorError):  # ... and its broker does not
        ray.get(search.broker.info.remote(), timeout=30)


def test_a_queued_trial_whose_search_has_ended_does_not_start(ray_local):
    import ray

    from workers.ray_task import ReportBroker, _execute

    broker = ReportBroker.remote()
    ray.kill(broker, no_restart=True)
    # No spec or recipe: had it started, run_trial would have failed on them.
    assert _execute({"key": "k", "queued": True}, broker, 1) == {
        "state": "not_started", "reason": "not_started"}


def test_searches_sharing_a_broker_read_only_their_own_reports(ray_local):
    import ray

    from workers.ray_task import ReportBroker

    broker = ReportBroker.remote()
    ray.get([broker.open.remote("a"), broker.open.remote("b")])
    ray.get([broker.post.remote("a:1:1", 1, {"n": 1}), broker.post.remote("b:7:1", 1, {"n": 2})])
    assert ray.get(broker.next_reports.remote("a", 5.0)) == [("a:1:1", 1, {"n": 1})]
    assert ray.get(broker.next_reports.remote("b", 5.0)) == [("b:7:1", 1, {"n": 2})]
    assert ray.get(broker.next_reports.remote("a", 0.1)) == []

    # "a" ends while one of its workers waits for a decision and another has a queued
    # trial: the waiting one is told to stop, the queued one never starts, and b goes on.
    waiting = broker.report.remote("a:2:2", 1, {"n": 3})
    assert ray.get(broker.next_reports.remote("a", 5.0))[0][0] == "a:2:2"
    ray.get(broker.close.remote("a"))
    assert ray.get(waiting, timeout=30) is True
    assert ray.get(broker.claim.remote("a:3:3")) is False
    assert ray.get(broker.claim.remote("b:8:2")) is True
    assert ray.get(broker.next_reports.remote("a", 0.1)) == []
    info = ray.get(broker.info.remote())
    assert (info["searches"], info["open"]) == (2, 1)
    ray.kill(broker)


def test_a_search_that_never_prunes_does_not_hold_its_workers_each_epoch(ray_local, sqlite_url):
    import ray

    from workers.ray_task import BrokerReporter, ReportBroker

    # The worker posts the epoch and trains on: no owner ever answers here, and a reporter
    # that waited would block for DECISION_TIMEOUT_S (minutes).
    broker = ReportBroker.remote("c")
    assert BrokerReporter(broker, "c:k", wait=False).report(1, {"val_accuracy": 0.5}) is False
    (key, epoch, metrics), = ray.get(broker.next_reports.remote("c", 5.0))
    assert (key, epoch, metrics["val_accuracy"]) == ("c:k", 1, 0.5)

    # The epochs still reach the study: every trial has its learning curve.
    run_search(_config(sqlite_url, "curves", trials=2, pruner="none", train={"epochs": 2}))
    for trial in _optuna_trials(sqlite_url, "curves"):
        assert sorted(trial.intermediate_values) == [1, 2]
