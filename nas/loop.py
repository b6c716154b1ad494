"""The one loop that runs trials on an executor, for `nas search` and `nas retrain` alike.

The loop owns time and the order of things; the `Work` (a search, a retrain) owns what the
trials are and what their outcomes mean; the executor owns where they run. Each turn: hand
the free capacity to the work, then wait for the executor's events and pass them on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from nas.executors.base import DEADLINE_GRACE_S, Beat, Epoch, Executor, Job, Lost, Result

# How long one turn waits for an event when nothing happens (heartbeats, stop signals).
POLL_S = 1.0


class Work(Protocol):
    """What the loop runs: a source of trial requests and the owner of their outcomes."""

    def fill(self, free: int, now: float) -> list[Job]:
        """Up to `free` requests to start now (fewer, or none, when there is nothing to run)."""

    def finished(self, now: float) -> bool:
        """Nothing more will be asked for (with nothing running, the loop ends)."""

    def on_epoch(self, event: Epoch) -> bool:
        """A trial's epoch; returns whether the trial stops here (pruned)."""

    def on_result(self, event: Result) -> None: ...

    def on_lost(self, event: Lost) -> None: ...

    def tick(self, now: float, quiet: dict[str, float]) -> None:
        """Every turn: heartbeats and the progress display. `quiet`: each running trial's
        seconds since its last sign of life (submission, an epoch, a beat)."""

    def abandon(self, keys: list[str], reason: str) -> None:
        """The loop stops with `keys` still running (cancelled unless the caller shuts the
        executor down): close everything not yet finished."""


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM: the loop stops at its next turn."""


@contextmanager
def stop_signals() -> Iterator[dict[str, Any]]:
    """First SIGINT/SIGTERM: stop at the next turn of the loop (never inside a call to Ray
    or the database); a second: interrupt at once. Yields the flag the loop reads."""
    flag: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["signal"] is not None:
            raise StopRequested
        flag["signal"] = signal.Signals(signum).name

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Watch:
    """The driver's view of the liveness of what runs: when each trial must have ended (its
    `Job.deadline_s`) and when it last showed a sign of life. The driver, not the worker,
    owns liveness, so a frozen worker cannot stall the search."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.beats = executor.beat_s is not None
        self.jobs: dict[str, Job] = {}
        self.deadline: dict[str, float] = {}
        self.sign: dict[str, float] = {}  # key -> last sign of life
        self.fresh: set[str] = set()  # no sign since submission: still starting up

    def submitted(self, job: Job, now: float) -> None:
        self.jobs[job.key] = job
        self.sign[job.key] = now
        self.fresh.add(job.key)
        if job.deadline_s is not None:
            self.deadline[job.key] = now + job.deadline_s

    def alive(self, key: str, now: float) -> None:
        if key in self.jobs:
            self.sign[key] = now
            self.fresh.discard(key)

    def ended(self, key: str) -> None:
        for d in (self.jobs, self.deadline, self.sign):
            d.pop(key, None)
        self.fresh.discard(key)

    def quiet(self, now: float) -> dict[str, float]:
        return {key: now - at for key, at in self.sign.items()}

    def overdue(self, now: float) -> list[tuple[str, str]]:
        """(key, reason) of every trial past its deadline or silent for too long."""
        out = []
        for key in sorted(self.jobs):
            stall_s = self.jobs[key].stall_s
            # A worker beats from its start; before that (queueing, a fresh process importing
            # torch) it gets the start-up grace as well.
            limit = None if stall_s is None or not self.beats else (
                stall_s + (DEADLINE_GRACE_S if key in self.fresh else 0.0))
            if key in self.deadline and self.deadline[key] <= now:
                out.append((key, "deadline: no result by the time limit plus its grace "
                                 "(the worker hung or froze)"))
            elif limit is not None and now - self.sign[key] > limit:
                out.append((key, f"stalled: no sign of life for {now - self.sign[key]:.0f} s "
                                 "(the worker froze, or its node is gone)"))
        return out


def _give_up_hung(executor: Executor, work: Work, running: set[str], watch: _Watch) -> None:
    """Cancel (kill) every trial past its deadline or silent too long, and hand it to `work`
    as lost (the work retries it like a lost worker)."""
    for key, reason in watch.overdue(executor.now()):
        executor.cancel(key)
        running.discard(key)
        watch.ended(key)
        work.on_lost(Lost(key, reason))


def drive(executor: Executor, work: Work, *, stop: dict[str, Any] | None = None,
          cancel_on_stop: bool = True, poll_s: float = POLL_S) -> None:
    """Run `work` on `executor` until it is finished and nothing runs.

    On a stop signal (or any exception) whatever still runs is cancelled (unless
    `cancel_on_stop` is False: the caller is about to shut the executor's Ray down, which
    kills it anyway) and handed to `work.abandon`; then the exception goes on.
    """
    running: set[str] = set()
    watch = _Watch(executor)
    try:
        while True:
            if stop is not None and stop["signal"] is not None:
                raise StopRequested
            now = executor.now()
            free = executor.capacity - len(running)
            if free > 0:
                for request in work.fill(free, now):
                    running.add(request.key)  # before: a submit that raises is abandoned too
                    executor.submit(request)
                    watch.submitted(request, executor.now())
            _give_up_hung(executor, work, running, watch)
            if not running and work.finished(executor.now()):
                return
            work.tick(executor.now(), watch.quiet(executor.now()))
            for event in executor.events(poll_s):
                if event.key in running and isinstance(event, Epoch | Beat):
                    watch.alive(event.key, executor.now())
                if isinstance(event, Beat):
                    continue
                if isinstance(event, Epoch):
                    if event.key in running:
                        executor.decide(event.key, event.epoch, work.on_epoch(event))
                elif event.key in running:
                    if isinstance(event, Result):
                        work.on_result(event)
                    else:
                        work.on_lost(event)
                    running.discard(event.key)  # after: one that raises is abandoned
                    watch.ended(event.key)
            executor.flush()  # the decisions of this batch, while the workers wait
    except BaseException as exc:
        if cancel_on_stop:
            for key in running:
                executor.cancel(key)
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else getattr(
            exc, "abandon_reason", f"driver_error: {type(exc).__name__}")
        work.abandon(sorted(running), reason)
        raise
