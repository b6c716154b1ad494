"""The search on real Ray: killed workers and drivers, the command line, the report broker.

Real Ray, real Lightning training on digits, the real SQL store. What the loop decides
(scheduling, retries, budgets, duplicates, pruning) is tested on the in-process executor in
test_loop.py; these prove the wiring.
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
from nas.events import Progress
from nas.pruning import CostAwareHalving
from nas.search import run_search


def _config(url: str, study: str, **overrides):
    train = overrides.pop("train", {"epochs": 2})
    flags = {"study": study, "storage": url, "space": "resnet", "trials": 6, "workers": 2,
             "seed": 1, "train": train}
    flags.update(overrides)
    return build_config({}, flags, "flags")


def _optuna_trials(url: str, study: str):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_cost_aware_halving_only_compares_with_cheaper_candidates():
    rule = CostAwareHalving(epochs=9, min_at_rung=1)  # the comparison alone, no start-up
    # Three big, accurate models reach rung 1.
    for acc in (0.9, 0.92, 0.95):
        assert not rule.should_prune(1, (1_000_000.0,), acc) or acc < 0.95
    # A tiny model with lower accuracy is not pruned: nothing as cheap beats it.
    assert rule.should_prune(1, (1_000.0,), 0.5) is False
    # A big model that loses to cheaper-or-equal ones is pruned.
    assert rule.should_prune(1, (2_000_000.0,), 0.3) is True
    # Epochs between rungs never prune.
    assert rule.should_prune(2, (2_000_000.0,), 0.0) is False


def test_cost_aware_halving_waits_until_enough_trials_reached_the_rung():
    rule = CostAwareHalving(epochs=9, min_at_rung=4)
    # The same losing big model: kept while the rung holds fewer than 4 trials.
    assert [rule.should_prune(1, (1_000_000.0,), acc) for acc in (0.9, 0.1, 0.1)] == [False] * 3
    assert rule.should_prune(1, (1_000_000.0,), 0.1) is True


class KillFirstWorker(Progress):
    """SIGKILLs the Ray worker process of the first trial that reports its second epoch."""

    def __init__(self) -> None:
        self.killed: list[tuple[int, int]] = []

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        if not self.killed and epoch >= 2:
            os.kill(metrics["pid"], signal.SIGKILL)
            self.killed.append((number, metrics["pid"]))


@pytest.mark.slow
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
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    counted = [t for t in trials if t.number not in retried]
    assert len(counted) == 4 and all(t.state.is_finished() for t in counted)
    assert trials[victim].params == trials[retries[0].trial_number].params
    assert summary.status == "finished"


class FreezeFirstWorker(Progress):
    """SIGSTOPs the Ray worker process of the first trial that reports its first epoch."""

    def __init__(self) -> None:
        self.frozen: list[tuple[int, int]] = []

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        if not self.frozen:
            os.kill(metrics["pid"], signal.SIGSTOP)
            self.frozen.append((number, metrics["pid"]))


def _state_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]  # R, S, T (stopped), Z ...
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_a_frozen_worker_without_a_time_limit_is_given_up_as_stalled_and_retried(sqlite_url):
    # No time limit: only the worker's beats can tell that it froze. The search starts its
    # own Ray (a worker it kills is one of its own processes).
    freezer = FreezeFirstWorker()
    try:
        summary = run_search(_config(sqlite_url, "frozen", trials=3, pruner="none", stall_s=20,
                                     train={"epochs": 3}), progress=freezer)
    finally:
        # Before anyone wakes it: Ray kills a force-cancelled worker that does not answer
        # within a few seconds (on the test session's Ray, which outlives the search).
        end = time.time() + 60
        # A killed process passes through R on its way out: wait until it is gone or a zombie.
        while time.time() < end and any(_state_of(pid) not in (None, "Z") for _, pid in freezer.frozen):
            time.sleep(0.5)
        left = [_state_of(pid) for _, pid in freezer.frozen]
        for _, pid in freezer.frozen:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert freezer.frozen, "no trial worker was frozen"
    victim, pid = freezer.frozen[0]
    runs = Store(sqlite_url).runs("frozen")
    stalled = [r for r in runs if r.reason and r.reason.startswith("stalled")]
    assert [r.trial_number for r in stalled] == [victim], [(r.trial_number, r.reason) for r in runs]
    assert [r.state for r in runs if r.retry_of == victim] == ["complete"]
    assert summary.status == "finished" and summary.counted == 3
    assert not [t for t in _optuna_trials(sqlite_url, "frozen")
                if t.state == optuna.trial.TrialState.RUNNING]
    assert left in ([None], ["Z"])  # the frozen process was killed, not left stopped


class ListeningSockets(Progress):
    """At the first epoch: every TCP socket the processes this test started listen on (the
    search's own Ray is among them), as (process name, address)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        import psutil

        if self.seen:
            return
        for proc in psutil.Process().children(recursive=True):
            try:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        self.seen.append((proc.name(), conn.laddr.ip))
            except psutil.Error:
                pass


@pytest.mark.slow
def test_a_search_s_own_ray_listens_on_loopback_only_and_serves_no_metrics(sqlite_url):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray of this test session is up: the search would use it")
    sockets = ListeningSockets()
    run_search(_config(sqlite_url, "loopback", trials=1, train={"epochs": 1}), progress=sockets)
    assert len(sockets.seen) >= 4, sockets.seen  # GCS, raylet, workers, agents
    assert {ip for _, ip in sockets.seen} <= {"127.0.0.1", "::ffff:127.0.0.1"}, sockets.seen
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # this process's own
    # Once it is down, this process can still start (or join) a Ray of the usual kind.
    from nas.cluster import cluster_mode_enabled

    assert cluster_mode_enabled()


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


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])  # SIGINT: test_loop.py, in-process
def test_killed_or_interrupted_driver_resumes_with_nothing_left_running(how, sqlite_url):
    cmd = _nas_search(sqlite_url, "resume", trials=5)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_runs(sqlite_url, "resume", 1)
        if how == "sigkill":
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if how != "sigkill":
        assert proc.returncode == 130, err
        assert "Resume with the same command" in err
        assert "Traceback" not in err
    before = {r.trial_number for r in Store(sqlite_url).runs("resume") if r.state == "complete"}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = _optuna_trials(sqlite_url, "resume")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    counted = [t for t in trials if t.number not in retried]
    assert len(counted) == 5 and all(t.state.is_finished() for t in counted)
    after = {r.trial_number for r in Store(sqlite_url).runs("resume") if r.state == "complete"}
    assert before <= after  # nothing finished was lost


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_search_on_a_ray_it_did_not_start_leaves_no_broker_behind(ray_local, sqlite_url):
    import ray

    from nas.search import Search

    search = Search(_config(sqlite_url, "nobroker", trials=1, pruner="none",
                            train={"epochs": 1}))
    assert search.run().counts.get("complete") == 1
    assert ray.is_initialized()  # the session's Ray outlives the search ...
    with pytest.raises(ray.exceptions.RayActorError):  # ... and its broker does not
        ray.get(search.executor.broker.info.remote(), timeout=30)


@pytest.mark.slow
def test_searches_sharing_a_broker_read_only_their_own_reports(ray_local):
    import ray

    from workers.ray_task import ReportBroker

    broker = ReportBroker.remote()
    ray.get([broker.open.remote("a"), broker.open.remote("b")])
    ray.get([broker.post.remote("a:1:1", 1, {"n": 1}), broker.post.remote("b:7:1", 1, {"n": 2})])
    ray.get(broker.beat.remote("b:7:1"))  # a beat reaches its own search only
    assert ray.get(broker.next_reports.remote("a", 5.0)) == ([("a:1:1", 1, {"n": 1})], [])
    assert ray.get(broker.next_reports.remote("b", 5.0)) == ([("b:7:1", 1, {"n": 2})], ["b:7:1"])
    assert ray.get(broker.next_reports.remote("a", 0.1)) == ([], [])
    assert ray.get(broker.next_reports.remote("b", 0.1)) == ([], [])  # read once

    # "a" ends while one of its workers waits for a decision: that one is told to stop, a
    # later report of "a" is told the same at once, and b goes on.
    waiting = broker.report.remote("a:2:2", 1, {"n": 3})
    assert ray.get(broker.next_reports.remote("a", 5.0))[0][0][0] == "a:2:2"
    ray.get(broker.close.remote("a"))
    assert ray.get(waiting, timeout=30) is True
    assert ray.get(broker.report.remote("a:3:3", 1, {}), timeout=30) is True
    ray.get(broker.beat.remote("a:3:3"))  # its search has ended: nobody reads it
    assert ray.get(broker.next_reports.remote("a", 0.1)) == ([], [])
    info = ray.get(broker.info.remote())
    assert (info["searches"], info["open"]) == (2, 1)
    ray.kill(broker)


@pytest.mark.slow
def test_a_search_that_never_prunes_does_not_hold_its_workers_each_epoch(ray_local, sqlite_url):
    import ray

    from workers.ray_task import BrokerReporter, ReportBroker

    # The worker posts the epoch and trains on: no owner ever answers here, and a reporter
    # that waited would block for DECISION_TIMEOUT_S (minutes).
    broker = ReportBroker.remote("c")
    assert BrokerReporter(broker, "c:k", wait=False).report(1, {"val_accuracy": 0.5}) is False
    ((key, epoch, metrics),), _ = ray.get(broker.next_reports.remote("c", 5.0))
    assert (key, epoch, metrics["val_accuracy"]) == ("c:k", 1, 0.5)

    # The epochs still reach the study: every trial has its learning curve.
    run_search(_config(sqlite_url, "curves", trials=2, pruner="none", train={"epochs": 2}))
    for trial in _optuna_trials(sqlite_url, "curves"):
        assert sorted(trial.intermediate_values) == [1, 2]
