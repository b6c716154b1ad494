"""A real multi-node search on one machine.

Two Ray nodes are started with `ray start --block` as separate process groups (a head with one
CPU, a second node with one CPU and a `node2` resource), both with Ray token authentication on.
`nas search --ray-address` runs as a subprocess against a fresh PostgreSQL database; when both
nodes have trained something and the second node is busy with a trial, the second node's
whole process tree is killed. The search must still finish, with every trial accounted for:
the trial lost with the node is recorded as `worker_lost` and retried as a linked trial.

Nothing here uses `ray.init` in the test process (the session-wide `ray_local` fixture may be
live in this process), and nothing calls `ray stop`, which would stop every Ray on the machine:
only the processes this test started are ended, by process group and by PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # 60-110 s on 2 cores

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
NAS = BIN / "nas"
TRIALS = 6
START_TIMEOUT_S = 90
SEARCH_TIMEOUT_S = 420


# -- processes, read from /proc (Linux; no psutil in the venv) ---------------------------------
def _proc_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields follow the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry)] = (ppid, argv)
    return table


def _kill(pids, sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _clean_env(token: str) -> dict[str, str]:
    """The caller's environment without any RAY_* setting, plus token auth for our cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class Node:
    """One `ray start --block` we own: its own process group, temp dir and log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], root: Path) -> None:
        self.name = name
        self.temp_dir = root / name
        self.temp_dir.mkdir()
        self.log_path = root / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--block",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                *args,
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.killed_at: float | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_started(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"ray node {self.name} exited with {self.proc.returncode}:\n{self.log()}"
                )
            if "block forever" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.25)
        pytest.fail(f"ray node {self.name} did not start in {timeout:.0f}s:\n{self.log()}")

    def processes(self) -> dict[int, list[str]]:
        """pid -> argv of the `ray start` process, its descendants, and any process naming
        our temp dir (a worker that outlived its raylet)."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: dict[int, list[str]] = {}
        todo = [self.proc.pid] if self.proc.pid in table else []
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
        marker = str(self.temp_dir)
        for pid, (_, argv) in table.items():
            if any(marker in a for a in argv):
                found.setdefault(pid, argv)
        return found

    def node_id(self) -> str:
        """Ray's id of this node, from its raylet's command line."""
        deadline = time.time() + 30
        while time.time() < deadline:
            for argv in self.processes().values():
                if argv and argv[0].endswith("raylet"):
                    for arg in argv:
                        if arg.startswith(("--node_id=", "--node-id=")):
                            return arg.split("=", 1)[1]
            time.sleep(0.2)
        pytest.fail(f"no raylet with a node id found for node {self.name}:\n{self.log()}")

    def busy(self) -> bool:
        """True while one of this node's workers executes a trial (Ray's process title)."""
        return any(
            argv and argv[0].startswith("ray::_execute") for argv in self.processes().values()
        )

    def kill(self) -> None:
        """SIGKILL the whole node at once, like a machine that loses power."""
        pids = list(self.processes())
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill(pids)
        self.killed_at = time.time()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Graceful first (`ray start --block` stops its children on SIGTERM), then SIGKILL."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        pids = list(self.processes())
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _kill(pids)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        _wait_gone(pids, timeout=10)
        self._log.close()


def _stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_search_spans_two_nodes_and_survives_losing_one(pg_url):
    if not os.path.isdir("/proc") or not RAY.exists() or not NAS.exists():
        pytest.skip(f"needs Linux /proc and the `ray` and `nas` scripts beside {sys.executable}")
    import optuna

    from db import Store

    token = secrets.token_hex(32)
    env = _clean_env(token)
    gcs_port, head_agent, client_port, node2_agent = _free_ports(4)
    # Short: Ray's unix sockets live under the temp dir (path limit ~107 bytes).
    root = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    study = f"multinode-{uuid.uuid4().hex[:6]}"
    nodes: list[Node] = []
    search: subprocess.Popen | None = None
    out_path, err_path = root / "search.out", root / "search.err"
    store = None
    try:
        head = Node(
            "h",
            [
                "--head",
                f"--port={gcs_port}",
                "--num-cpus=1",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--dashboard-agent-listen-port={head_agent}",
                f"--ray-client-server-port={client_port}",
            ],
            env,
            root,
        )
        nodes.append(head)
        head.wait_started()
        node2 = Node(
            "w",
            [
                f"--address=127.0.0.1:{gcs_port}",
                "--num-cpus=1",
                "--num-gpus=0",
                '--resources={"node2": 1}',
                f"--dashboard-agent-listen-port={node2_agent}",
            ],
            env,
            root,
        )
        nodes.append(node2)
        node2.wait_started()
        head_id, node2_id = head.node_id(), node2.node_id()
        assert head_id != node2_id

        cmd = [
            str(NAS),
            "search",
            "--study",
            study,
            "--storage",
            pg_url,
            "--ray-address",
            f"127.0.0.1:{gcs_port}",
            "--workers",
            "2",
            "--cpus-per-trial",
            "1",
            "--epochs",
            "2",
            "--trials",
            str(TRIALS),
            "--batch-size",
            "16",  # ~90 steps an epoch: trials long enough to be caught running
            "--dataset",
            "digits",
            "--seed",
            "0",
            "--max-retries",
            "2",
            "--json",
        ]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            search = subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=root,
            )
        store = Store(pg_url)

        # Watch the store; once node 2 has finished a trial, kill it while it runs the next.
        deadline = time.time() + SEARCH_TIMEOUT_S
        busy_at_kill = False
        node2_runs = 0
        while search.poll() is None and time.time() < deadline:
            if node2.killed_at is None:
                if not node2_runs:
                    try:
                        node2_runs = sum(r.node_id == node2_id for r in store.runs(study))
                    except Exception:  # noqa: BLE001 - the tables may not exist yet
                        node2_runs = 0
                if node2_runs and node2.busy():
                    busy_at_kill = True
                    node2.kill()
            time.sleep(0.05 if node2_runs else 0.25)
        if search.poll() is None:
            pytest.fail(
                f"nas search did not finish in {SEARCH_TIMEOUT_S}s\nstderr:\n"
                f"{err_path.read_text(errors='replace')[-4000:]}"
            )
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        assert search.returncode == 0, f"nas search failed ({search.returncode}):\n{stderr[-4000:]}"
        assert node2.killed_at is not None and busy_at_kill, (
            "the search finished before node 2 could be killed while busy; trials too short?\n"
            f"node 2 ({node2_id}) had finished {node2_runs} run(s)"
        )
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["event"] == "summary" and summary["status"] == "finished", summary

        runs = store.runs(study)
        # 1. trials ran on both nodes
        node_ids = {r.node_id for r in runs if r.node_id}
        assert node_ids == {head_id, node2_id}, (
            f"runs came from {node_ids}; expected the head {head_id} and node 2 {node2_id}"
        )

        # 2. the trial lost with node 2 is recorded and retried as a linked trial
        lost = [
            r for r in runs if r.state == "failed" and (r.reason or "").startswith("worker_lost")
        ]
        assert lost, (
            "node 2 was killed while busy, but no run was recorded as worker_lost:\n"
            + "\n".join(
                f"  trial {r.trial_number}: {r.state} {r.reason} node={r.node_id}" for r in runs
            )
        )
        retried_of = {r.retry_of for r in runs if r.retry_of is not None}
        for r in lost:
            assert r.trial_number in retried_of, f"lost trial {r.trial_number} was never retried"
            retry = [x for x in runs if x.retry_of == r.trial_number]
            assert any(x.state in ("complete", "pruned", "failed") for x in retry)

        # 3. every trial accounted for, every result in PostgreSQL
        storage = optuna.storages.RDBStorage(pg_url)
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        states = {t.number: t.state.name for t in trials}
        assert not [n for n, s in states.items() if s in ("RUNNING", "WAITING")], states
        by_trial = {r.trial_number for r in runs}
        recorded = [t for t in trials if not t.user_attrs.get("infeasible")]
        missing = [t.number for t in recorded if t.number not in by_trial]
        assert not missing, f"trials without a run in PostgreSQL: {missing}"
        accounted = [t for t in recorded if not t.user_attrs.get("retried")]
        assert len(accounted) >= TRIALS, (
            f"{len(accounted)} trials accounted for (without the retried ones), wanted {TRIALS}"
        )
        finished_after_kill = [
            r for r in runs if r.node_id and r.finished and r.finished > node2.killed_at + 1
        ]
        assert finished_after_kill, "no trial finished after node 2 was lost"
        assert {r.node_id for r in finished_after_kill} == {head_id}, (
            "after node 2 died only the head should finish trials"
        )
    finally:
        if search is not None:
            _stop_process_group(search)
        for node in reversed(nodes):
            node.stop()
        if store is not None:
            close = getattr(store, "close", None)
            if close:
                close()
        shutil.rmtree(root, ignore_errors=True)
