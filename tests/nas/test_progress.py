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
    progress.launched(4, "cifar16 | 2x8 basic identity")
    progress.tick({"busy": 1, "compute_s": 12.0})
    line = progress._line().plain
    assert line.startswith("4/10 trials")  # 3 already in the study + 1 now
    assert "workers 1/2" in line and "compute 12/3600s" in line and "s left)" in line
    assert "best 0.9800 (trial 3, 1,234 params: cifar16 | 1x8 basic identity)" in line
    printed = console.file.getvalue()
    assert "the study holds 3 trial(s) of 10: running 7 more" in printed
    assert "trial    3 complete   acc 0.9800" in printed


def test_on_a_terminal_a_bar_with_eta_and_a_line_per_running_trial():
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    progress = RichProgress(console)
    progress.start({**INFO, "already": 0, "target": 4, "epochs": 8, "timeout_s": None,
                    "compute_budget_s": None})
    try:
        assert progress.live is not None  # redrawn by rich's own thread
        progress.launched(0, "cifar16 | 1x8 basic identity")
        progress.launched(1, "cifar16 | 2x8 basic identity")
        progress.epoch(1, 3, {"val_accuracy": 0.75})
        lines = [t.plain for t in progress.running_lines()]
        assert lines[0].split()[:4] == ["trial", "0", "starting", "0:00"]
        assert "trial    1 epoch 3/8" in lines[1] and "acc 0.7500" in lines[1]
        assert progress.eta_s() is None  # nothing has finished: no rate to go by
        event = TrialEvent(number=0, state="complete", arch_id="a", summary="cifar16 | 1x8 basic identity",
                           val_accuracy=0.9, params=10, duration_s=1.0)
        progress.started -= 30  # one trial in 30 s; three to go
        progress.trial(event, {"complete": 1}, None)
        assert [t.plain.split()[1] for t in progress.running_lines()] == ["1"]
        assert 85 <= progress.eta_s() <= 95
        rendered = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
        rendered.print(progress)
        text = rendered.file.getvalue()
        assert "1/4 trials" in text and "ETA 1:3" in text and "━" in text
    finally:
        progress.stop()


def test_off_a_terminal_one_plain_line_per_trial_and_no_live_area():
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    progress = RichProgress(console)
    progress.start(INFO)
    assert progress.live is None
    progress.launched(3, "x")
    progress.trial(TrialEvent(number=3, state="cached", arch_id="a", summary="x", params=5,
                              cached_from=7, cached_from_trial=2), {"cached": 1}, None)
    progress.stop()
    out = console.file.getvalue().splitlines()
    assert out[-1].startswith("trial    3 cached") and out[-1].endswith("(answered by trial 2)")
    assert not any("\x1b" in line for line in out)


def test_a_child_s_line_says_why_it_failed_before_what_it_grew_from():
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    progress = RichProgress(console)
    progress.start(INFO)
    for number, state, reason in ((4, "failed", "inherit_gap: 0.3 away"), (5, "complete", None)):
        progress.launched(number, "x")
        progress.trial(TrialEvent(number=number, state=state, arch_id="a", summary="x", params=5,
                                  reason=reason, inherited_from="trial 2"), {state: 1}, None)
    progress.stop()
    failed, complete = console.file.getvalue().splitlines()[-2:]
    assert failed.endswith("(inherit_gap: 0.3 away; grown from trial 2)")
    assert complete.endswith("x (grown from trial 2)")
