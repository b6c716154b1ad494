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

from nas.executors.base import Epoch, Executor, Job, Lost, Result

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

    def tick(self, now: float, running: int) -> None:
        """Every turn: heartbeats and the progress display."""

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


def _give_up_hung(executor: Executor, work: Work, running: set[str],
                  deadlines: dict[str, float]) -> None:
    """Cancel (kill) every trial past its deadline and hand it to `work` as lost: the
    driver, not the worker, owns liveness, so a frozen worker cannot stall the search."""
    now = executor.now()
    for key in sorted(k for k, at in deadlines.items() if at <= now and k in running):
        executor.cancel(key)
        running.discard(key)
        del deadlines[key]
        work.on_lost(Lost(key, "deadline: no result by the time limit plus its grace "
                               "(the worker hung or froze)"))


def drive(executor: Executor, work: Work, *, stop: dict[str, Any] | None = None,
          cancel_on_stop: bool = True, poll_s: float = POLL_S) -> None:
    """Run `work` on `executor` until it is finished and nothing runs.

    On a stop signal (or any exception) whatever still runs is cancelled (unless
    `cancel_on_stop` is False: the caller is about to shut the executor's Ray down, which
    kills it anyway) and handed to `work.abandon`; then the exception goes on.
    """
    running: set[str] = set()
    deadlines: dict[str, float] = {}  # key -> when it is given up as hung (its Job.deadline_s)
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
                    if request.deadline_s is not None:
                        deadlines[request.key] = executor.now() + request.deadline_s
            _give_up_hung(executor, work, running, deadlines)
            if not running and work.finished(executor.now()):
                return
            work.tick(executor.now(), len(running))
            for event in executor.events(poll_s):
                if isinstance(event, Epoch):
                    if event.key in running:
                        executor.decide(event.key, event.epoch, work.on_epoch(event))
                elif event.key in running:
                    if isinstance(event, Result):
                        work.on_result(event)
                    else:
                        work.on_lost(event)
                    running.discard(event.key)  # after: one that raises is abandoned
                    deadlines.pop(event.key, None)
            executor.flush()  # the decisions of this batch, while the workers wait
    except BaseException as exc:
        if cancel_on_stop:
            for key in running:
                executor.cancel(key)
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else (
            f"driver_error: {type(exc).__name__}")
        work.abandon(sorted(running), reason)
        raise
