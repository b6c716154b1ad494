"""The live status line of `nas search`: counts, workers, best-so-far and what budget is left."""

from __future__ import annotations

import io

from rich.console import Console

from nas.events import TrialEvent
from nas.progress import RichProgress

INFO = {"study": "s", "storage": "sqlite:///x.db", "space": "resnet", "sampler": "tpe",
        "pruner": "asha", "objectives": ["accuracy"], "already": 3, "target": 10, "slots": 2,
        "timeout_s": 600, "compute_budget_s": 3600}


def test_status_line_counts_resumed_trials_and_shows_best_and_budget_left():
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    progress = RichProgress(console)
    progress.start(INFO)
    event = TrialEvent(number=3, state="complete", arch_id="abc", summary="cifar16 | 1x8 basic identity",
                       val_accuracy=0.98, params=1234, duration_s=1.5)
    best = {"val_accuracy": 0.98, "trial": 3, "params": 1234, "summary": "cifar16 | 1x8 basic identity"}
    progress.trial(event, {"complete": 1, "pruned": 0, "failed": 0, "cached": 0, "infeasible": 0}, best)
    progress.tick({"busy": 1, "compute_s": 12.0})
    line = progress._line().plain
    assert line.startswith("4/10 trials")  # 3 already in the study + 1 now
    assert "workers 1/2" in line and "compute 12/3600s" in line and "s left)" in line
    assert "best 0.9800 (trial 3, 1,234 params: cifar16 | 1x8 basic identity)" in line
    printed = console.file.getvalue()
    assert "resuming: 3 of 10 trials" in printed
    assert "trial    3 complete   acc 0.9800" in printed
