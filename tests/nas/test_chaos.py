"""Chaos: a 30-trial search on real Ray and a real PostgreSQL while its workers are killed,
one is frozen, and the database goes away for a while. Every trial must be accounted for.

The database "restart" is a TCP proxy in front of the shared PostgreSQL that drops every
connection and refuses new ones for a few seconds (tests/faultproxy.py): what a restart does
to its clients, without stopping a server other tests use.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter

import optuna
import pytest

from db import Store
from nas.config import build_config
from nas.events import Progress
from nas.search import run_search
from tests.faultproxy import FaultProxy

TRIALS = 30
KILLS = 5


class Chaos(Progress):
    """From a thread: every few seconds SIGKILL a training worker (one that has reported an
    epoch: it is past its start-up), SIGSTOP one once, cut the database once."""

    def __init__(self, proxy: FaultProxy, seed: int) -> None:
        self.proxy = proxy
        self.rng = random.Random(seed)
        self.training: dict[int, int] = {}  # trial number -> pid of its worker
        self.killed: list[int] = []
        self.frozen: list[int] = []
        self.cut = False
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, info: dict) -> None:
        self.thread.start()

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        with self.lock:
            self.training[number] = metrics["pid"]

    def trial(self, event, counts, best) -> None:
        with self.lock:
            self.training.pop(event.number, None)

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=30)

    def _victim(self) -> int | None:
        with self.lock:
            pids = sorted(set(self.training.values()) - set(self.frozen))
        return self.rng.choice(pids) if pids else None

    def _run(self) -> None:
        step = 0
        while not self.stop_flag.wait(4.0):
            step += 1
            if step == 3 and not self.cut:
                self.proxy.restart(3.0)
                self.cut = True
                continue
            pid = self._victim()
            if pid is None:
                continue
            try:
                if not self.frozen and step >= 2:
                    os.kill(pid, signal.SIGSTOP)
                    self.frozen.append(pid)
                elif len(self.killed) < KILLS:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_search_survives_killed_and_frozen_workers_and_a_database_restart(pg_url):
    from sqlalchemy.engine import make_url

    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        url = make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)
        cfg = build_config({}, {
            "study": "chaos", "storage": url, "space": "resnet", "trials": TRIALS,
            "workers": 2, "seed": 5, "sampler": "random", "pruner": "none", "stall_s": 15,
            "max_retries": 3, "train": {"epochs": 2},
        }, "flags")
        chaos = Chaos(proxy, seed=5)
        try:
            summary = run_search(cfg, progress=chaos)
        finally:
            for pid in chaos.frozen:  # never leave a stopped process behind
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
    assert chaos.killed and chaos.frozen and chaos.cut, (chaos.killed, chaos.frozen, chaos.cut)

    store = Store(pg_url)
    runs = {r.trial_number: r for r in store.runs("chaos")}
    trials = optuna.load_study(study_name="chaos", storage=pg_url).get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    # Every trial is accounted for: finished in Optuna, a run row each, a reason for each
    # failure, and a retry for each loss (while it had retries left).
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    assert sorted(runs) == [t.number for t in trials]
    failed = [r for r in runs.values() if r.state == "failed"]
    assert all(r.reason for r in failed)
    lost = [r for r in failed if r.reason.startswith(("worker_lost", "stalled", "deadline"))]
    assert len(lost) >= 2  # the frozen one and at least one killed
    assert any(r.reason.startswith("stalled") for r in lost)
    assert all(r.trial_number in retried for r in lost
               if trials[r.trial_number].user_attrs.get("attempt", 0) < 3)
    # Nothing trained twice: one complete trained run per architecture (duplicates answered).
    trained = Counter(r.arch_id for r in runs.values() if r.state == "complete"
                      and r.cached_from is None)
    assert max(trained.values()) == 1
    # The search row says what happened, and the target was met.
    assert summary.status == "finished" and summary.counted == TRIALS
    assert store.searches("chaos")[-1].status == "finished"
