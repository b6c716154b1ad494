"""What `nas search` shows while it runs: a live progress display, quiet mode, or JSON lines."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from nas.events import Progress, TrialEvent

# Below this many trials a multi-objective search gets a hint (`python -m bench.defaults`).
SHORT_FRONT_TRIALS = 30

STATE_STYLE = {
    "complete": "green",
    "pruned": "yellow",
    "failed": "red",
    "cached": "cyan",
    "infeasible": "magenta",
}


def _fmt_best(best: dict[str, Any] | None) -> str:
    if not best:
        return "best: -"
    return (f"best {best['val_accuracy']:.4f} (trial {best['trial']}, "
            f"{best.get('params') or 0:,} params: {best['summary']})")


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RichProgress(Progress):
    """One line per finished trial; on a terminal, below them a live bar for the study (done
    of target, elapsed, ETA from this run's trial rate, best so far) and one line per running
    trial (its epoch and accuracy), redrawn four times a second."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.live: Live | None = None
        self.info: dict[str, Any] = {}
        self.started = time.time()
        self.status: dict[str, Any] = {}
        self.running: dict[int, dict[str, Any]] = {}  # trial number -> summary, epoch, acc
        self._lock = threading.Lock()

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        self.started = time.time()
        self.console.print(
            f"[bold]pruner[/] {info['pruner']}  [bold]objectives[/] {','.join(info['objectives'])}"
            f"  [bold]{info['slots']}[/] trial(s) in flight at a time", highlight=False)
        already, target = info["already"], info["target"]
        if already:
            more = max(0, target - already)
            self.console.print(
                f"the study holds {already} trial(s) of {target}: running {more} more"
                + ("" if more else " (raise --trials to search further)"), highlight=False)
        if len(info["objectives"]) > 1 and target < SHORT_FRONT_TRIALS:
            self.console.print(
                f"[yellow]note:[/] a Pareto front needs trials: on the digits curves 12 trials "
                f"gave about 3 front points, {SHORT_FRONT_TRIALS} gave 6 (bench/README.md)",
                highlight=False)
        if info.get("runners"):
            self.console.print(f"training on {info['runners']} resident runner(s) (`nas pool up`)")
        elif info.get("runners_note"):
            self.console.print(f"[yellow]not using the resident runners:[/] {info['runners_note']}")
        if self.console.is_terminal:
            self.live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    # -- what the live area shows ---------------------------------------------------------
    def done(self) -> int:
        counts = self.status.get("counts", {})
        return self.info.get("already", 0) + sum(v for k, v in counts.items() if k != "infeasible")

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds to the target at the rate trials finished in this run (None before one)."""
        finished = self.done() - self.info.get("already", 0)
        if finished <= 0:
            return None
        elapsed = (time.time() if now is None else now) - self.started
        left = max(0, self.info.get("target", 0) - self.done())
        return left * elapsed / finished

    def _line(self) -> Text:
        counts = self.status.get("counts", {})
        elapsed = time.time() - self.started
        eta = self.eta_s()
        budget = f"{_clock(elapsed)} elapsed, ETA {'-' if eta is None else _clock(eta)}"
        if self.info.get("timeout_s"):
            budget += f" ({max(0.0, self.info['timeout_s'] - elapsed):.0f}s left)"
        if self.info.get("compute_budget_s"):
            budget += (
                f" | compute {self.status.get('compute_s', 0.0):.0f}"
                f"/{self.info['compute_budget_s']:.0f}s"
            )
        text = (
            f"{self.done()}/{self.info.get('target', '?')} trials "
            f"| done {counts.get('complete', 0)} pruned {counts.get('pruned', 0)} "
            f"failed {counts.get('failed', 0)} cached {counts.get('cached', 0)} "
            f"infeasible {counts.get('infeasible', 0)} "
            f"| workers {len(self.running)}/{self.info.get('slots', '?')} "
            f"| {budget} | {_fmt_best(self.status.get('best'))}"
        )
        return Text(text, overflow="ellipsis", no_wrap=True)

    def running_lines(self) -> list[Text]:
        now = time.time()
        with self._lock:  # copies: rich's refresh thread renders while trials report
            items = sorted((n, dict(r)) for n, r in self.running.items())
        lines = []
        for number, r in items:
            epoch = f"epoch {r['epoch']}/{self.info.get('epochs', '?')}" if r["epoch"] else "starting"
            acc = f"acc {r['acc']:.4f}" if r.get("acc") is not None else ""
            lines.append(Text(f"  trial {number:>4} {epoch:<12} {acc:<11} {_clock(now - r['t0'])}  "
                              f"{r['summary']}", style="dim", overflow="ellipsis", no_wrap=True))
        return lines

    def __rich__(self) -> Group:
        target = self.info.get("target") or 1
        bar = Table.grid(padding=(0, 1))
        bar.add_column(no_wrap=True)
        bar.add_column(ratio=1, no_wrap=True)
        bar.add_row(ProgressBar(total=target, completed=min(self.done(), target), width=24),
                    self._line())
        return Group(bar, *self.running_lines())

    # -- hooks --------------------------------------------------------------------------------
    def launched(self, number: int, summary: str) -> None:
        with self._lock:
            self.running[number] = {"summary": summary, "epoch": 0, "acc": None, "t0": time.time()}

    def epoch(self, number: int, epoch: int, metrics: dict[str, Any]) -> None:
        with self._lock:
            if number in self.running:
                self.running[number].update(epoch=epoch, acc=metrics.get("val_accuracy"))

    def trial(self, event: TrialEvent, counts: dict[str, int], best: dict[str, Any] | None) -> None:
        self.status["counts"] = counts
        self.status["best"] = best
        with self._lock:
            self.running.pop(event.number, None)
        style = STATE_STYLE.get(event.state, "white")
        acc = f"{event.val_accuracy:.4f}" if event.val_accuracy is not None else "   -  "
        notes = [event.reason] if event.reason else []  # why it failed or stopped, first
        if event.cached_from:
            notes = [f"answered by {event.answered_by()}"]
        elif event.inherited_from:
            notes.append(f"grown from {event.inherited_from}")
        extra = f" ({'; '.join(notes)})" if notes else ""
        dur = f"{event.duration_s:5.1f}s" if event.duration_s else "      "
        self.console.print(
            f"trial {event.number:>4} [{style}]{event.state:<10}[/] acc {acc} {dur} "
            f"{event.params or 0:>9,} params  {event.summary}{extra}",
            highlight=False,
            soft_wrap=True,
        )

    def tick(self, status: dict[str, Any]) -> None:
        self.status.update(status)

    def stop(self) -> None:
        if self.live:
            self.live.stop()
            self.live = None


class JsonProgress(Progress):
    """One JSON object per finished trial on stdout, for scripts and logs."""

    def trial(self, event: TrialEvent, counts: dict[str, int], best: dict[str, Any] | None) -> None:
        sys.stdout.write(json.dumps({"event": "trial", **event.to_dict()}) + "\n")
        sys.stdout.flush()


class QuietProgress(Progress):
    """Nothing while it runs."""
