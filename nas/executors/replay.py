"""An executor that answers each trial from a table of known results (`nas.tables`).

Nothing trains, sleeps or starts Ray: a trial reports the epochs of one seed of its
architecture (the seed fixed per search seed and architecture, `Table.draw`), each after the
table's seconds per epoch on the executor's simulated clock. Pruning decisions, budgets
(`--max-compute-hours`) and compute figures therefore play out as they would have on the
hardware that made the table, in simulated time. An architecture the table lacks fails with
`not_in_table`.
"""

from __future__ import annotations

import math
from typing import Any

from nas.errors import UserError
from nas.executors.base import Event, Job
from nas.executors.local import LocalExecutor, ManualClock, Script
from nas.tables import Table
from workers.data import DatasetInfo


class ReplayExecutor(LocalExecutor):
    """`capacity` trials at once, answered from `table`, seen as a search seeded `seed` sees them."""

    kind = "replay"

    def __init__(self, table: Table, *, seed: int = 0, capacity: int = 1) -> None:
        super().__init__(self._script, capacity=capacity, clock=ManualClock(0.0))
        self.table = table
        self.seed = seed

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "replay": self.table.name}

    def events(self, timeout: float) -> list[Event]:
        # Nothing happens between two simulated events: go straight to the next one rather
        # than stepping the clock `timeout` at a time through hours of a table's training.
        moving = self._ready or any(not r.waiting for r in self.running.values())
        return super().events(math.inf if moving else timeout)

    def _script(self, job: Job) -> Script:
        key = self.table.key_of(job.spec)
        row = None if key is None else self.table.rows.get(key)
        if row is None:
            return Script(epochs=[], epoch_s=0.0, state="failed",
                          reason=f"not_in_table: {self.table.name} has no such architecture")
        index = self.table.draw(key, self.seed)
        epochs = int(job.config.get("epochs") or self.table.epochs)
        curve = row.accuracies[index][:epochs]
        extra: dict[str, Any] = {"host": "replay", "device": self.table.name}
        if "latency_ms" in row.extra:
            extra["latency_ms"] = row.extra["latency_ms"]
        return Script(epochs=[{"val_accuracy": a} for a in curve],
                      epoch_s=row.epoch_s[index], extra=extra)


def replay_recipe(table: Table, train: dict[str, Any]) -> dict[str, Any]:
    """The recipe of a search that replays `table`: the table's own (what trained it), under
    the dataset name `replay:TABLE` so that replayed results never answer a real training.
    `train` (the user's settings) may only shorten the epochs."""
    other = sorted(set(train) - {"epochs"})
    if other:
        raise UserError(
            f"a search that replays {table.name} trains nothing, so the training settings "
            f"{', '.join(other)} would change nothing; drop them (only --epochs, up to the "
            f"table's {table.epochs}, applies)")
    epochs = int(train.get("epochs") or table.epochs)
    if not 1 <= epochs <= table.epochs:
        raise UserError(f"--epochs {epochs}: {table.name} holds {table.epochs} epoch(s) per "
                        f"architecture; allowed: 1 to {table.epochs}")
    recipe = {k: v for k, v in table.recipe.items() if k != "dataset"}
    return {**recipe, "dataset": f"replay:{table.name}", "epochs": epochs}


def replay_data(table: Table, dataset: str) -> DatasetInfo:
    """The shape facts a search needs (`workers.DatasetInfo`), from the table."""
    return DatasetInfo(dataset, table.in_channels, table.num_classes, table.input_size, 0, 0)
