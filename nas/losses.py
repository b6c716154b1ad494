"""Lost trials: those that never reported (their worker, node or driver was lost, or the
search stopped around them). What counts as one, and when so many in a row mean the cluster
is broken and the search must stop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nas.errors import UserError

# Reasons of a trial that never reported: such a FAIL says nothing about the architecture.
LOSS_REASONS = ("worker_lost", "deadline", "stalled", "driver_lost", "driver_error",
                "interrupted", "stopped", "workers_failing")
# Trials lost in a row with none finishing in between, per slot of the executor, after which
# the search stops instead of feeding the next trial to a broken cluster (lost trials whose
# retries ran out do not count toward --trials, so it would never end); at least the minimum.
LOST_IN_A_ROW_PER_SLOT = 3
MIN_LOST_IN_A_ROW = 10


def is_loss(reason: str | None) -> bool:
    """Whether a failed run's `reason` says it was lost rather than trained and failed."""
    return bool(reason) and str(reason).startswith(LOSS_REASONS)


def lost_trials(runs: Iterable[Any]) -> set[int]:
    """Trial numbers of the runs (`db.RunRecord`s) that were lost, not trained."""
    return {r.trial_number for r in runs if r.state == "failed" and is_loss(r.reason)}


class WorkersFailing(UserError):
    """The workers keep dying: the search stops, what runs is closed and queued for retry."""

    abandon_reason = "workers_failing"


class LostStreak:
    """The trials lost since the last one that finished."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def finished(self) -> None:
        self.reasons = []

    def lost(self, reason: str, *, slots: int) -> None:
        """One more lost; raises `WorkersFailing` once too many are lost in a row."""
        self.reasons.append(reason)
        if len(self.reasons) >= max(MIN_LOST_IN_A_ROW, LOST_IN_A_ROW_PER_SLOT * slots):
            raise WorkersFailing(
                f"the workers keep dying: the last {len(self.reasons)} trials were lost with "
                f"none finishing in between (the last: {reason}); stopping. Nothing finished is "
                "lost and the lost trials are queued for retry: check the cluster (`ray status`,"
                " the workers' logs), then run the same command again.")
