"""Resident runners (`nas pool`): warm trial workers that outlive a search.

The end-to-end test starts a real Ray cluster on this machine with `nas pool up`, runs two
real searches on it in their own processes, and checks that both trained on the same two
runner processes (no fresh worker, so no second import of torch and Lightning).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from db import Store
from nas.executors.pool import usable

NAS = [sys.executable, "-m", "nas"]
V = "abc123"


def _info(version=V, cpus=1.0, gpus=0.0, pid=1):
    return {"version": version, "cpus": cpus, "gpus": gpus, "pid": pid, "threads": 1}


def test_usable_runners_run_the_same_code_with_the_same_resources():
    infos = [_info(), _info(version="old"), None, _info(cpus=2.0)]
    assert usable(infos, version=V, cpus=1, gpus=0) == ([0], None)
    assert usable([], version=V, cpus=1, gpus=0) == ([], None)  # no pool: nothing to say

    good, why = usable([_info(version="old")], version=V, cpus=1, gpus=0)
    assert good == [] and "other code" in why and "nas pool up" in why
    good, why = usable([_info(cpus=2.0)], version=V, cpus=1, gpus=0)
    assert good == [] and "2 CPU/0 GPU" in why and "1 CPU/0 GPU" in why
    good, why = usable([None], version=V, cpus=1, gpus=0)
    assert good == [] and "answered" in why


class _Handle:
    def __init__(self):
        self.calls = []
        self.run = self

    def remote(self, request, broker):
        self.calls.append(request["key"])
        return f"ref-{request['key']}"


@pytest.mark.slow
def test_the_pool_executor_gives_each_trial_an_idle_runner(ray_local):
    from nas.executors.base import Job
    from nas.executors.pool import PoolExecutor

    handles = [_Handle(), _Handle()]
    executor = PoolExecutor(handles)
    try:
        assert executor.capacity == 2
        executor.submit(Job("a", {}, {}))
        executor.submit(Job("b", {}, {}))
        assert [h.calls for h in handles] == [[f"{executor.channel}:a"], [f"{executor.channel}:b"]]
        with pytest.raises(RuntimeError, match="busy"):  # the loop keeps to its capacity
            executor.submit(Job("c", {}, {}))
        executor._released("a")
        executor.submit(Job("d", {}, {}))
        assert handles[0].calls[-1] == f"{executor.channel}:d"
    finally:
        executor.close()


def _listening(*pids: int) -> set[str]:
    import psutil

    return {c.laddr.ip for pid in pids for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def _count_runs(url: str, study: str) -> int:
    try:
        return len(Store(url).runs(study))
    except Exception:  # noqa: BLE001 - the tables may not exist yet
        return 0


def _nas(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*NAS, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_searches_train_on_the_same_warm_runners(tmp_path: Path, ray_local):
    # A Ray of its own: its temp dir keeps it apart from the session's local Ray and from
    # any cluster a person has running on this machine (short: Ray's socket paths).
    # No RAY_* from this process (its Ray set RAY_AUTH_MODE): `nas` must set up the token
    # authentication the cluster uses by itself, as in a user's fresh shell.
    ray_dir = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # A home without ~/.ray: a machine that never ran Ray has no auth token yet.
    home = tmp_path / "home"
    home.mkdir()
    env.update(RAY_TMPDIR=ray_dir, PYTHONWARNINGS="ignore", HOME=str(home))
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    try:
        up = _nas("pool", "up", "--slots", "2", env=env)
        assert up.returncode == 0, up.stderr[-2000:]
        assert "2 runner(s) ready" in up.stdout
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600
        assert token.read_text().strip() not in up.stdout + up.stderr

        status = _nas("pool", "status", env=env)
        assert status.returncode == 0, status.stderr[-2000:]
        pids = {int(line.split()[1]) for line in status.stdout.splitlines()
                if line.strip().startswith("resnas-runner-")}
        assert len(pids) == 2
        broker = [line for line in status.stdout.splitlines() if "report broker: pid" in line]
        assert broker and "0 search(es) served" in broker[0], status.stdout
        broker_pid = int(broker[0].split("pid ")[1].split(",")[0])
        # The runners and the broker keep the node's priority (the cluster started from this
        # process): Ray would lower every worker's by 15, below the driver's.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in (*pids, broker_pid)] == [ours] * 3
        # The pool's Ray serves this machine only: its processes listen on loopback.
        assert _listening(*pids, broker_pid) <= {"127.0.0.1", "::ffff:127.0.0.1"}

        for study in ("warm1", "warm2"):
            done = _nas("search", "--study", study, "--storage", url, "--trials", "3",
                        "--epochs", "1", "--seed", "0", "--ray-address", "auto", env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "training on 2 resident runner(s)" in done.stdout

        runs = Store(url).runs("warm1") + Store(url).runs("warm2")
        trained = [r for r in runs if r.cached_from is None]
        assert trained and {r.extra["worker_pid"] for r in trained} <= pids

        # The runners answer again with the pids they had: no restart, no fresh process.
        again = _nas("pool", "status", env=env)
        assert {int(line.split()[1]) for line in again.stdout.splitlines()
                if line.strip().startswith("resnas-runner-")} == pids
        # Both searches read their epochs from the pool's broker (no process of their own),
        # and closed their channel on it when they ended.
        assert f"report broker: pid {broker_pid}," in again.stdout
        assert "2 search(es) served, 0 running" in again.stdout

        # A search that asks for other resources than the runners hold gets a clear error
        # (the runners hold every CPU, so its trials could never start) and exit code 2.
        other = _nas("search", "--study", "other", "--storage", url, "--trials", "1",
                     "--epochs", "1", "--cpus-per-trial", "2", "--ray-address", "auto", env=env)
        assert other.returncode == 2
        assert "resident runner" in other.stderr and "Traceback" not in other.stderr

        # The cluster loses the pool's broker and a runner while a search trains on them: the
        # trials in flight are lost and retried (on a broker of the search's own), and the
        # search finishes as if nothing happened.
        search = subprocess.Popen(
            [*NAS, "search", "--study", "lost", "--storage", url, "--trials", "4", "--epochs",
             "3", "--batch-size", "16", "--seed", "3", "--ray-address", "auto", "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while search.poll() is None and time.time() < deadline:
            if _count_runs(url, "lost") >= 1:
                break
            time.sleep(0.2)
        os.kill(broker_pid, signal.SIGKILL)
        os.kill(sorted(pids)[0], signal.SIGKILL)
        out, err = search.communicate(timeout=600)
        assert search.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        runs = Store(url).runs("lost")
        lost = [r for r in runs if r.reason and r.reason.startswith("worker_lost")]
        assert lost, [(r.trial_number, r.state, r.reason) for r in runs]
        assert Store(url).searches("lost")[-1].status == "finished"
        import optuna

        trials = optuna.load_study(study_name="lost", storage=url).get_trials(deepcopy=False)
        assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        # Each loss with retries left (2 by default) has its retry; the target was met.
        assert all(any(x.retry_of == r.trial_number for x in runs) for r in lost
                   if trials[r.trial_number].user_attrs.get("attempt", 0) < 2), [
            (r.trial_number, r.state, r.reason, r.retry_of) for r in runs]
        assert sum(r.state in ("complete", "pruned") for r in runs) >= 4
    finally:
        down = _nas("pool", "down", "--stop-ray", env=env, timeout=120)
    assert down.returncode == 0 and "stopped 2 runner(s); stopped the Ray cluster" in down.stdout
    # Only that cluster: the test session's own Ray still runs tasks.
    assert ray_local.get(ray_local.remote(lambda: 41 + 1).remote()) == 42
    # After `down` nothing is left to join.
    gone = _nas("pool", "status", env=env, timeout=120)
    assert gone.returncode == 2 and "no Ray cluster runs on this machine" in gone.stderr
    shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_search_on_its_own_ray_trains_at_the_node_priority(tmp_path: Path):
    # Ray would lower every worker's priority by 15, below the driver's (see WORKER_ENV).
    # A fresh interpreter: this session's Ray is already initialised in this one.
    code = (
        "import os, ray\n"
        "from nas.cluster import start_ray\n"
        "assert start_ray(None, slots=1, cpus_per_trial=1) == 'started'\n"
        "f = ray.remote(lambda: (os.getpriority(os.PRIO_PROCESS, 0), os.environ['OMP_NUM_THREADS']))\n"
        "print(ray.get(f.remote()))\n"
        "ray.shutdown()\n"
    )
    ray_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "PYTHONWARNINGS": "ignore"}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str((os.getpriority(os.PRIO_PROCESS, 0), "1"))


def test_the_ray_auth_token_is_made_once_and_only_its_owner_reads_it(tmp_path, monkeypatch):
    from nas.cluster import ensure_auth_token

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / ".ray" / "auth_token"

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ensure_auth_token()
    assert not token.exists()

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ensure_auth_token()
    first = token.read_text()
    assert len(first) == 64 and int(first, 16) >= 0
    assert token.stat().st_mode & 0o777 == 0o600
    ensure_auth_token()  # an existing token is the cluster's: never replaced
    assert token.read_text() == first

    # A token the person named is theirs to provide.
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("HOME", str(other))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "mine"))
    ensure_auth_token()
    assert not (other / ".ray").exists()
