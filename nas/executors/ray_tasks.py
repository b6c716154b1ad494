"""Trials as Ray tasks (the default executor), and the event stream every Ray executor shares.

Each trial is one task holding its CPU/GPU share; Ray's own retries are off, the loop
decides retries. Epoch reports travel through a `ReportBroker` actor: the search's own on a
Ray it started or joined, the pool's (shared, one channel per search) on resident runners.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from nas.executors.base import Beat, Epoch, Event, Job, Lost, Result

# How long `events` waits on the broker per round trip; a trial's result wakes it sooner.
REPORT_WAIT_S = 0.5


class RayExecutor:
    """What the Ray executors share: the broker channel, result refs, decisions, events."""

    kind = "ray"

    def __init__(self, *, broker: Any = None) -> None:
        import ray

        self._ray = ray
        self.channel = secrets.token_hex(8)  # this search's keys on a shared broker
        self.broker, self._own_broker = self._open_broker(broker)
        self._refs: dict[str, Any] = {}  # key -> result ref
        self._decisions: list[tuple[str, int, bool]] = []
        self._prunable: set[str] = set()  # keys whose workers wait for each decision
        self._reports: Any = None  # the outstanding `next_reports` call
        from workers.ray_task import BEAT_S

        self.beat_s: float | None = BEAT_S

    # -- the broker ---------------------------------------------------------------------------
    def _open_broker(self, shared: Any) -> tuple[Any, bool]:
        """The pool's broker when it answers and runs this code, else one of our own."""
        from workers.ray_task import ReportBroker, code_version, on_this_node

        ray = self._ray
        if shared is not None:
            try:  # one round trip: opens the channel and says which code the broker runs
                if ray.get(shared.open.remote(self.channel), timeout=10) == code_version():
                    return shared, False
                shared.close.remote(self.channel)  # older code (`nas pool up` renews it)
            except Exception:  # noqa: BLE001 - gone since the pool was found
                pass
        own = ReportBroker.options(scheduling_strategy=on_this_node()).remote(self.channel)
        return own, True

    def _wire(self, key: str) -> str:
        """The key workers and the broker see: the channel first (a shared broker serves
        several searches)."""
        return f"{self.channel}:{key}"

    # -- the protocol -------------------------------------------------------------------------
    def now(self) -> float:
        return time.time()

    def submit(self, request: Job) -> None:
        self._refs[request.key] = self._start(request)
        if request.prunable:
            self._prunable.add(request.key)

    def _start(self, request: Job) -> Any:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _payload(self, request: Job) -> dict[str, Any]:
        return {**request.payload(), "key": self._wire(request.key), "prunable": request.prunable}

    def decide(self, key: str, epoch: int, stop: bool) -> None:
        if key in self._prunable:  # the others posted their epoch and trained on
            self._decisions.append((self._wire(key), epoch, stop))

    def flush(self) -> None:
        if self._decisions:  # one call for the batch: the workers wait on it
            self.broker.decide.remote(self._decisions)
            self._decisions = []

    def events(self, timeout: float) -> list[Event]:
        ray = self._ray
        self.flush()
        if self._reports is None:
            self._reports = self.broker.next_reports.remote(self.channel, min(timeout, REPORT_WAIT_S))
        by_ref = {ref: key for key, ref in self._refs.items()}
        ready, _ = ray.wait([*by_ref, self._reports], num_returns=1, timeout=timeout)
        out: list[Event] = []
        if self._reports in ready:
            try:
                reports, beats = ray.get(self._reports)
            except Exception as exc:  # noqa: BLE001 - the broker died (a pool's, killed with its runners)
                self._reports = None
                return self._broker_lost(exc)
            for wire, epoch, metrics in reports:
                key = wire.split(":", 1)[1]
                if key in self._refs:
                    out.append(Epoch(key, epoch, metrics))
                else:  # cancelled meanwhile: let its worker go
                    self._decisions.append((wire, epoch, True))
            out.extend(Beat(key) for wire in beats if (key := wire.split(":", 1)[1]) in self._refs)
            self._reports = None
        if ready and by_ref:
            done, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
            for ref in done:
                key = by_ref[ref]
                del self._refs[key]
                try:
                    out.append(Result(key, ray.get(ref)))
                except Exception as exc:  # noqa: BLE001 - a worker or node died
                    self._worker_lost(key)
                    out.append(Lost(key, f"worker_lost: {type(exc).__name__}"))
                self._released(key)
        return out

    def _broker_lost(self, exc: Exception) -> list[Event]:
        """The broker is gone, and with it every running trial's way to report: each is
        stopped and lost (the loop retries it), and later trials report to a new broker of
        this search's own."""
        out: list[Event] = []
        for key in list(self._refs):
            self.cancel(key)
            out.append(Lost(key, f"worker_lost: the report broker died ({type(exc).__name__})"))
        self._decisions = []
        self.broker, self._own_broker = self._open_broker(None)
        return out

    def _worker_lost(self, key: str) -> None:
        """The worker of `key` died (a task's process is not reused: nothing to do)."""

    def _released(self, key: str) -> None:
        """`key` no longer occupies its worker."""
        self._prunable.discard(key)

    def cancel(self, key: str) -> None:
        ref = self._refs.pop(key, None)
        if ref is not None:
            self._stop(key, ref)
            self._released(key)

    def _stop(self, key: str, ref: Any) -> None:
        try:
            self._ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - finished or gone already
            pass

    def close(self) -> None:
        """On a Ray that outlives the search its own broker would stay, an idle process per
        search; the pool's forgets this search's channel."""
        try:
            if self._own_broker:
                self._ray.kill(self.broker, no_restart=True)
            else:
                self._ray.get(self.broker.close.remote(self.channel), timeout=10)
        except Exception:  # noqa: BLE001 - already gone: nothing left to free
            pass


class RayTaskExecutor(RayExecutor):
    """One Ray task per trial, with `cpus`/`gpus` each; `slots` trials at once."""

    kind = "ray tasks"

    def __init__(self, *, slots: int, cpus: float, gpus: float, broker: Any = None) -> None:
        super().__init__(broker=broker)
        self.slots, self.cpus, self.gpus = slots, cpus, gpus

    @property
    def capacity(self) -> int:
        return self.slots

    @property
    def info(self) -> dict[str, Any]:
        return {"executor": self.kind, "slots": self.slots, "runners": 0}

    def _start(self, request: Job) -> Any:
        from workers import ray_task  # looked up at call time (bench.controller swaps it)

        return ray_task.submit_trial(
            self._payload(request), broker=self.broker, num_cpus=self.cpus, num_gpus=self.gpus
        )
