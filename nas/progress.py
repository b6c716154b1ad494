"""What `nas search` shows while it runs: a live rich line, quiet mode, or JSON lines."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from nas.events import Progress, TrialEvent

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
    return f"best {best['val_accuracy']:.4f} (trial {best['trial']}, {best['params']:,} params: {best['summary']})"


class RichProgress(Progress):
    """One line per finished trial, and a live status line below them."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.live: Live | None = None
        self.info: dict[str, Any] = {}
        self.started = time.time()
        self.status: dict[str, Any] = {}

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        self.started = time.time()
        self.console.print(
            f"[bold]study[/] {info['study']}  [bold]storage[/] {info['storage']}  "
            f"[bold]space[/] {info['space']}  [bold]sampler[/] {info['sampler']}  "
            f"[bold]pruner[/] {info['pruner']}  [bold]objectives[/] {','.join(info['objectives'])}"
        )
        if info["already"]:
            self.console.print(
                f"resuming: {info['already']} of {info['target']} trials already in the study"
            )
        self.console.print(f"{info['slots']} trial(s) in flight at a time")
        if info.get("runners"):
            self.console.print(f"training on {info['runners']} resident runner(s) (`nas pool up`)")
        elif info.get("runners_note"):
            self.console.print(f"[yellow]not using the resident runners:[/] {info['runners_note']}")
        if self.console.is_terminal:
            self.live = Live(self._line(), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def _line(self) -> Text:
        counts = self.status.get("counts", {})
        elapsed = time.time() - self.started
        done = self.info.get("already", 0) + sum(v for k, v in counts.items() if k != "infeasible")
        budget = f"{elapsed:.0f}s"
        if self.info.get("timeout_s"):
            budget += f" ({max(0.0, self.info['timeout_s'] - elapsed):.0f}s left)"
        if self.info.get("compute_budget_s"):
            budget += (
                f" | compute {self.status.get('compute_s', 0.0):.0f}"
                f"/{self.info['compute_budget_s']:.0f}s"
            )
        text = (
            f"{done}/{self.info.get('target', '?')} trials "
            f"| done {counts.get('complete', 0)} pruned {counts.get('pruned', 0)} "
            f"failed {counts.get('failed', 0)} cached {counts.get('cached', 0)} "
            f"infeasible {counts.get('infeasible', 0)} "
            f"| workers {self.status.get('busy', 0)}/{self.info.get('slots', '?')} "
            f"| {budget} | {_fmt_best(self.status.get('best'))}"
        )
        return Text(text, overflow="ellipsis", no_wrap=True)

    def trial(self, event: TrialEvent, counts: dict[str, int], best: dict[str, Any] | None) -> None:
        self.status["counts"] = counts
        self.status["best"] = best
        style = STATE_STYLE.get(event.state, "white")
        acc = f"{event.val_accuracy:.4f}" if event.val_accuracy is not None else "   -  "
        extra = ""
        if event.cached_from:
            extra = f" (from run {event.cached_from})"
        elif event.reason:
            extra = f" ({event.reason})"
        dur = f"{event.duration_s:5.1f}s" if event.duration_s else "      "
        self.console.print(
            f"trial {event.number:>4} [{style}]{event.state:<10}[/] acc {acc} {dur} "
            f"{event.params:>9,} params  {event.summary}{extra}",
            highlight=False,
            soft_wrap=True,
        )
        if self.live:
            self.live.update(self._line())

    def tick(self, status: dict[str, Any]) -> None:
        self.status.update(status)
        if self.live:
            self.live.update(self._line())

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
