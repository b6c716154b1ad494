"""The contract between the search loop and whatever runs its trials.

The loop submits `Job`s (plain data: a spec dict, a recipe dict), reads a stream of
events (`Epoch`, `Result`, `Lost`), answers each `Epoch` of a prunable trial with
`decide(key, epoch, stop)`, and cancels what it no longer wants. An executor never sees the
study or the store; the loop never sees Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# A worker stops training at its time limit and reports; one that has not reported by then
# plus this grace (a fresh Ray worker imports torch and Lightning first: 6-9 s here) is hung
# (SIGSTOP, a dead NFS mount, a deadlock) and the loop gives it up.
DEADLINE_GRACE_S = 60.0
DEADLINE_GRACE_SHARE = 0.25
# How long a running trial may stay silent (no epoch, no beat) before the loop gives it up
# as stalled, on an executor whose workers beat (`Executor.beat_s`). Its workers beat every
# few seconds from a thread beside the training, so silence means the process is frozen
# (SIGSTOP, swapped out, a dead node), not that an epoch or a compile is long.
STALL_S = 120.0


@dataclass(frozen=True)
class Job:
    """One trial for an executor: what `workers.run_trial` gets (a `workers.TrialRequest`
    as a dict), plus how the loop follows it."""

    key: str  # unique in the executor; epochs and the result carry it back
    spec: dict[str, Any]
    config: dict[str, Any]
    prunable: bool = True  # the worker waits for a decision after each epoch
    stall_s: float | None = STALL_S  # silence after which it is given up (None: never)
    parent: dict[str, Any] | None = None  # start from these trained weights (`TrialRequest`)

    @property
    def deadline_s(self) -> float | None:
        """Seconds after submission by which the loop gives the trial up as hung: the
        recipe's `time_limit_s` (which the worker enforces itself) plus a grace for
        queueing and start-up. None without a time limit."""
        limit = self.config.get("time_limit_s")
        if not limit:
            return None
        return float(limit) + DEADLINE_GRACE_S + DEADLINE_GRACE_SHARE * float(limit)

    def payload(self) -> dict[str, Any]:
        """The request dict `run_trial` takes."""
        out = {"spec": self.spec, "config": self.config, "key": self.key}
        if self.parent is not None:
            out["parent"] = self.parent
        return out


@dataclass(frozen=True)
class Epoch:
    """A trial finished an epoch; a prunable one waits for `decide`."""

    key: str
    epoch: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """A trial ended on its worker: `run_trial`'s result dict (any state)."""

    key: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Beat:
    """A trial's worker is alive (it beats while an epoch runs)."""

    key: str


@dataclass(frozen=True)
class Lost:
    """A trial's worker died, or the trial could not be delivered; it will never report."""

    key: str
    reason: str


Event = Epoch | Result | Lost | Beat


class Executor(Protocol):
    """Runs trials somewhere. Every method is called from the loop's thread."""

    @property
    def capacity(self) -> int:
        """How many trials it runs at once; the loop never has more outstanding."""

    @property
    def info(self) -> dict[str, Any]:
        """What the progress display says about it (kind, runners, notes)."""

    @property
    def beat_s(self) -> float | None:
        """How often its running trials send a `Beat` (seconds); None if they do not, and
        then the loop never takes silence for a stall."""

    def now(self) -> float:
        """The clock the loop measures deadlines and budgets with (seconds)."""

    def submit(self, request: Job) -> None:
        """Start `request`; with the executor at capacity the loop does not call this."""

    def events(self, timeout: float) -> list[Event]:
        """What happened since the last call, waiting up to `timeout` for something."""

    def decide(self, key: str, epoch: int, stop: bool) -> None:
        """Answer the `Epoch` a prunable trial waits on: stop (prune) or go on."""

    def flush(self) -> None:
        """Deliver the decisions made so far (the loop calls it after each batch)."""

    def cancel(self, key: str) -> None:
        """Stop `key` wherever it is; no event of it follows."""

    def close(self) -> None:
        """Free what the executor holds (cancel nothing that still runs)."""
