"""An in-process executor of scripted trials on a clock it owns: what the loop's tests run on.

Each submitted request is turned into a `Script` by the trainer function the test gives
(per-epoch metrics, seconds per epoch, the final state, or a worker that dies). Nothing
sleeps: `events` moves the clock to the next thing that happens, so budgets, deadlines,
pruning and retries play out in exact, repeatable order. `log` records what the loop did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nas.executors.base import Beat, Epoch, Event, Job, Lost, Result


@dataclass
class Script:
    """How one trial goes."""

    epochs: list[dict[str, Any]]  # metrics reported after each epoch (val_accuracy, ...)
    epoch_s: float = 1.0  # simulated seconds per epoch
    state: str = "complete"  # the result's state after the last epoch: complete | failed
    reason: str | None = None
    lost_after_s: float | None = None  # the worker dies this long after the start
    hangs_after_epochs: int | None = None  # then it never reports again (a SIGSTOPped worker)
    extra: dict[str, Any] = field(default_factory=dict)  # more result fields


@dataclass
class _Running:
    request: Job
    script: Script
    started: float
    next_at: float  # when its next event happens
    done_epochs: int = 0
    waiting: bool = False  # reported an epoch, waits for `decide`
    history: list[dict[str, Any]] = field(default_factory=list)


class ManualClock:
    """Time that moves only when told."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class LocalExecutor:
    """Runs `trainer(request) -> Script` trials, `capacity` at once, on `clock`."""

    kind = "local"

    def __init__(self, trainer: Callable[[Job], Script], *, capacity: int = 2,
                 clock: ManualClock | None = None, beat_s: float | None = None) -> None:
        """`beat_s`: its trials beat (a `Beat` of every live one each time the clock moves),
        as Ray workers do; a hung one stops beating."""
        self.trainer = trainer
        self._capacity = capacity
        self._beat_s = beat_s
        self.clock = clock or ManualClock()
        self.running: dict[str, _Running] = {}
        self._ready: list[Event] = []  # events due now (decided prunes)
        self.log: list[tuple[str, str]] = []  # (what, key): submit, epoch, result, lost, cancel
        self.max_running = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def info(self) -> dict[str, Any]:
        return {"executor": self.kind, "slots": self._capacity, "runners": 0}

    @property
    def beat_s(self) -> float | None:
        return self._beat_s

    def now(self) -> float:
        return self.clock()

    def submit(self, request: Job) -> None:
        if len(self.running) >= self._capacity:
            raise RuntimeError(f"submit beyond capacity {self._capacity}: {request.key}")
        script = self.trainer(request)
        now = self.clock()
        run = self.running[request.key] = _Running(request, script, now, now)
        self._schedule(run, now + script.epoch_s)
        self.max_running = max(self.max_running, len(self.running))
        self.log.append(("submit", request.key))

    def decide(self, key: str, epoch: int, stop: bool) -> None:
        run = self.running.get(key)
        if run is None or not run.waiting:
            return
        run.waiting = False
        if stop:
            self._finish(run, "pruned")
        elif run.done_epochs >= len(run.script.epochs):
            self._finish(run, run.script.state)
        else:
            self._schedule(run, self.clock() + run.script.epoch_s)

    def _schedule(self, run: _Running, at: float) -> None:
        """The next event: the next epoch at `at`, or the worker's death if sooner."""
        lost = run.script.lost_after_s
        run.next_at = at if lost is None else min(at, run.started + lost)
        if self._hung(run):
            run.next_at = math.inf

    def flush(self) -> None:
        pass  # decisions take effect in `decide`

    def cancel(self, key: str) -> None:
        if self.running.pop(key, None) is not None:
            self.log.append(("cancel", key))
        self._ready = [e for e in self._ready if e.key != key]

    def close(self) -> None:
        pass

    def events(self, timeout: float) -> list[Event]:
        if self._ready:
            out, self._ready = self._ready, []
            return out
        moving = [r for r in self.running.values() if not r.waiting]
        at = min((r.next_at for r in moving), default=math.inf)
        if at > self.clock() + timeout:
            self.clock.t += timeout
            return self._beats()
        self.clock.t = max(self.clock.t, at)
        for run in [r for r in moving if r.next_at == at]:
            self._step(run)
        out, self._ready = [*self._beats(), *self._ready], []
        return out

    def _beats(self) -> list[Event]:
        if self._beat_s is None:
            return []
        return [Beat(key) for key, run in self.running.items() if not self._hung(run)]

    @staticmethod
    def _hung(run: _Running) -> bool:
        n = run.script.hangs_after_epochs
        return n is not None and run.done_epochs >= n

    def _step(self, run: _Running) -> None:
        script, key = run.script, run.request.key
        lost_at = None if script.lost_after_s is None else run.started + script.lost_after_s
        if lost_at is not None and lost_at <= self.clock():
            del self.running[key]
            self.log.append(("lost", key))
            self._ready.append(Lost(key, "worker_lost: LocalExecutor"))
            return
        if not script.epochs:  # fails before its first epoch
            self._finish(run, script.state)
            return
        metrics = {"epoch": run.done_epochs + 1, **script.epochs[run.done_epochs]}
        run.done_epochs += 1
        run.history.append(metrics)
        self.log.append(("epoch", key))
        self._ready.append(Epoch(key, run.done_epochs, metrics))
        if run.request.prunable:
            run.waiting = True
        elif run.done_epochs >= len(script.epochs):
            self._finish(run, script.state)
        else:
            self._schedule(run, self.clock() + script.epoch_s)

    def _finish(self, run: _Running, state: str) -> None:
        key = run.request.key
        self.running.pop(key, None)
        accs = [m["val_accuracy"] for m in run.history if m.get("val_accuracy") is not None]
        now = self.clock()
        result = {
            "state": state,
            "reason": run.script.reason if state == "failed" else None,
            "val_accuracy": accs[-1] if accs else None,
            "best_val_accuracy": max(accs) if accs else None,
            "val_loss": run.history[-1].get("val_loss") if run.history else None,
            "epochs": list(run.history),
            "duration_s": now - run.started,
            "started": run.started,
            "finished": now,
            "host": "local",
            "device": "cpu",
            **run.script.extra,
        }
        self.log.append(("result", key))
        self._ready.append(Result(key, result))
