"""What `nas trials` and `nas status` print: plain functions over a `db.Store`, no Typer here."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from rich.markup import escape
from rich.table import Table

from db import RunRecord, SearchRecord, Store, StoreError
from db.store import record_fields
from nas.consoles import console_for
from nas.family import inherited_labels  # `#12` / `other-study#3`; no optuna, no torch

FORMATS = ("table", "csv", "json")


def _require_study(store: Store, study: str) -> None:
    known = store.study_names()
    if study not in known:
        listed = ", ".join(repr(s) for s in known) if known else "none yet"
        raise StoreError(
            f"`study` got {study!r}: no such study in {store.display_url}; known studies: {listed}"
        )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def _json_ready(run: RunRecord) -> dict[str, Any]:
    return asdict(run)


def print_trials(
    store: Store,
    study: str,
    fmt: str = "table",
    states: Sequence[str] | None = None,
    top: int | None = None,
    *,
    file: TextIO | None = None,
) -> None:
    """Print the runs of `study` as a rich table, CSV or JSON (the latter two to stdout).

    Args:
        fmt: `table` | `csv` | `json`. CSV has one column per `RunRecord` field (`extra` as
            JSON text); JSON is a list of objects with the same keys.
        states: only runs in these states (complete | pruned | failed | running).
        top: only the `top` best by validation accuracy, best first.
        file: where to write (default stdout).

    Raises:
        StoreError: unknown study (the message lists the known ones).
        ValueError: unknown `fmt` or state.
    """
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` got {fmt!r}; allowed: {' | '.join(FORMATS)}")
    _require_study(store, study)
    runs = store.runs(study, states=states, top=top)
    out = file if file is not None else sys.stdout
    if fmt == "json":
        json.dump([_json_ready(r) for r in runs], out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        names = record_fields()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for run in runs:
            row = asdict(run)
            row["extra"] = json.dumps(row["extra"], sort_keys=True)
            writer.writerow(["" if row[n] is None else row[n] for n in names])
        return
    sources = {i: store.get_run(i) for i in {r.cached_from for r in runs} - {None}}
    origins = inherited_labels(store, runs, study)  # the column only where some trial inherited
    table = Table(title=escape(f"study {study} ({len(runs)} runs)"))
    for name, justify in (
        ("trial", "right"),
        *((("from", "left"),) if origins else ()),
        ("state", "left"),
        ("val acc", "right"),
        ("best acc", "right"),
        ("params", "right"),
        ("MACs", "right"),
        ("fidelity", "right"),
        ("time", "right"),
        ("arch", "left"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for run in runs:
        note = run.reason or ""
        if run.cached_from is not None:
            source = sources.get(run.cached_from)
            note = (f"cached from run {run.cached_from}" if source is None else
                    f"cached from trial {source.trial_number}"
                    + ("" if source.study == study else f" of study {source.study}"))
        elif run.retry_of is not None:
            note = f"retry of trial {run.retry_of}" + (f"; {note}" if note else "")
        table.add_row(
            str(run.trial_number),
            *((escape(origins.get(run.id, "")),) if origins else ()),
            run.state,
            _fmt(run.val_accuracy),
            _fmt(run.best_val_accuracy),
            _count(run.params),
            _count(run.flops),
            "-" if run.fidelity is None else str(run.fidelity),
            "-" if run.duration_s is None else f"{run.duration_s:.1f}s",
            escape(run.arch_id),
            escape(note),
        )
    console_for(out).print(table)


# A running trial silent this long (its worker beats every 5 s) is shown as stalled; the
# driver gives it up at the search's `stall_s` (default 120 s).
SHOWN_STALLED_S = 30.0


def _stalled(search: SearchRecord, now: float) -> list[str]:
    """Lines for the trials of a running search that have been silent for a while, as of
    now (the silence its driver recorded at its last heartbeat, plus the time since)."""
    since = 0.0 if search.heartbeat is None else max(0.0, now - search.heartbeat)
    quiet = {int(n): float(s) + since for n, s in search.live.items()}
    return [f"trial {n}: stalled, no sign of life for {_age(s).removesuffix(' ago')}"
            for n, s in sorted(quiet.items()) if s >= SHOWN_STALLED_S]


def print_status(store: Store, *, file: TextIO | None = None, now: float | None = None,
                 queue: dict[str, dict[str, int]] | None = None) -> None:
    """One row per study: runs by state, retried, cached, best accuracy, running searches'
    heartbeats; with `queue` (Optuna's side: {study: {"infeasible": n, "waiting": n}}) also
    the candidates skipped over a budget and the trials waiting to run."""
    now = time.time() if now is None else now
    queue = queue or {}
    console = console_for(file)
    studies = store.studies()
    if not studies:
        console.print(escape(f"no studies in {store.display_url}"))
        return
    table = Table(title=escape(f"studies in {store.display_url}"))
    for name in (
        "study",
        "complete",
        "pruned",
        "failed",
        "retried",
        "running",
        "waiting",
        "infeasible",
        "cached",
        "best acc",
        "last activity",
        "running searches",
    ):
        table.add_column(name, justify="left" if name in ("study", "running searches") else "right")
    for item in studies:
        searches = []
        for search in store.searches(item["name"]) if item["running_searches"] else []:
            if search.status == "running":
                age = None if search.heartbeat is None else now - search.heartbeat
                searches.append(
                    escape(f"#{search.id} {search.host or '?'}:{search.pid or '?'} ")
                    + f"heartbeat {_age(age)}"
                    + (" (stopping: `nas stop`)" if search.stopping else "")
                    + "".join(f"\n  [yellow]{escape(line)}[/]" for line in _stalled(search, now))
                )
        last = item["last_activity"]
        table.add_row(
            escape(item["name"]),
            str(item["runs"]["complete"]),
            str(item["runs"]["pruned"]),
            str(item["runs"]["failed"]),
            str(item["retried"]),
            str(item["runs"]["running"]),
            str(queue.get(item["name"], {}).get("waiting", "-")),
            str(queue.get(item["name"], {}).get("infeasible", "-")),
            str(item["cached"]),
            _fmt(item["best_val_accuracy"]),
            _age(None if last is None else now - last),
            "\n".join(searches) or "-",
        )
    console.print(table)
