"""`nas analyze`: a self-contained HTML report of a study, from the store and Optuna (read only).

`collect(store, study)` gathers the numbers behind every figure as plain data (tests check them
against the store); `nas.report_render.render_html` draws them with matplotlib's Agg canvas
(no pyplot state, no display) and embeds each figure as a base64 PNG, so the report opens
offline with no CDN. Where plotly is installed, `nas.report_interactive` also writes an
interactive version beside it (`<report>.interactive.html`: one file, plotly.js inlined, also
offline); without plotly the report says so in one line.

Parameter importance is computed only from `MIN_IMPORTANCE_TRIALS` complete trials on; a
smaller study's report says how many it has instead of drawing a ranking of noise.

Which runs count where:
- history, cost plots and the Pareto front use every `complete` run of the study, including
  trials answered from the cache (each is a trial with a value, as Optuna sees it);
- the residual views (accuracy by depth per skip type, error EDFs) use complete runs that were
  trained here (`cached_from` is null), so a popular re-proposal is not counted twice. This is
  the rule of the `nas_skip_depth` SQL view. An architecture's skip type is the sorted set of
  its stages' skips joined by commas (`identity,projection`), as in `nas_architectures.skip_types`;
  its block type likewise.
Runs still training, pruned or failed are counted but not plotted: the report works on a
study that is still running and never writes to the database.

The family tree (`inheritance`: runs that started from a trained parent's weights, `nas search
--inherit`) is gathered by `nas.family.inheritance`, which says which runs it counts.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas.errors import UserError
from nas.family import inheritance
from nas.report_interactive import render_interactive
from nas.report_render import render_html
from nas.study import best_trials
from search_spaces import ArchitectureSpec

TOP_K = 10

# Optuna's default importance evaluator (PED-ANOVA) compares the top 10% of complete trials
# with all of them; up to 10 trials that "top" is the single best trial, so the ranking only
# says which values that one trial happened to have. From 20 on it holds at least two trials.
# Below this the report prints how many trials the study has instead of a chart.
MIN_IMPORTANCE_TRIALS = 20


# -- data ---------------------------------------------------------------------------------------
def _skip_type(spec: ArchitectureSpec) -> str:
    return ",".join(sorted({s.skip for s in spec.stages}))


def _block_type(spec: ArchitectureSpec) -> str:
    return ",".join(sorted({s.block for s in spec.stages}))


def _edf(errors: list[float]) -> dict[str, list[float]]:
    """Empirical distribution: `fraction[i]` of trials have error <= `error[i]`."""
    xs = sorted(errors)
    n = len(xs)
    return {"error": xs, "fraction": [(i + 1) / n for i in range(n)]}


def _front(points: list[tuple[int, float, float]]) -> list[int]:
    """Trials not dominated on (accuracy up, cost down), best accuracy first."""
    front = []
    for t, acc, cost in points:
        dominated = any(
            (a2 >= acc and c2 <= cost) and (a2 > acc or c2 < cost) for _, a2, c2 in points
        )
        if not dominated:
            front.append((t, acc, cost))
    return [t for t, _, _ in sorted(front, key=lambda p: (-p[1], p[2], p[0]))]


def _optuna_study(store: Store, study: str):
    """The Optuna study on the store's database, opened without creating tables; None if absent."""
    import optuna

    url = store.url
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}  # a running search may hold the write lock
    elif url.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
        return optuna.load_study(study_name=study, storage=storage)
    except Exception:  # noqa: BLE001 - no such study, or no Optuna tables in this database
        return None


def _importance(st: Any, objectives: list[str]) -> dict[str, Any]:
    """Parameter importances for validation accuracy (infeasible trials left out), or a note.

    Returns `values` ({param: importance}, empty when not computed), `note` (why not, or None),
    `trials` (complete feasible trials used or counted) and `min_trials`.
    """
    import optuna

    out: dict[str, Any] = {"values": {}, "note": None, "trials": 0, "min_trials": MIN_IMPORTANCE_TRIALS}
    if st is None:
        out["note"] = "no Optuna study of this name in the database: importance needs its trials"
        return out
    complete = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = [t for t in complete if not t.user_attrs.get("infeasible")]
    out["trials"] = len(trials)
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        left_out = len(complete) - len(trials)
        extra = f" ({left_out} infeasible left out)" if left_out else ""
        out["note"] = (f"parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; "
                       f"this study has {len(trials)}{extra}")
        return out
    index = objectives.index("accuracy") if "accuracy" in objectives else 0
    try:
        # A single-objective copy whose value is the accuracy: every evaluator then ranks the
        # parameters for high accuracy (with a `target`, Optuna's default PED-ANOVA would
        # rank them for *low* target values).
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory"
        try:
            copy = optuna.create_study(direction="maximize")
        finally:
            optuna.logging.set_verbosity(verbosity)
        copy.add_trials([
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.values[index])
            for t in trials
        ])
        values = optuna.importance.get_param_importances(copy)
    except Exception as exc:  # noqa: BLE001 - degenerate trials, odd spaces
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        out["note"] = f"parameter importance unavailable: {first}"
        return out
    if not values:
        out["note"] = "parameter importance unavailable: no parameter varied among complete trials"
        return out
    out["values"] = {k: float(v) for k, v in values.items()}
    return out


def collect(store: Store, study: str, *, top: int = TOP_K) -> dict[str, Any]:
    """The numbers behind every figure of the report, as plain JSON-ready data.

    Keys: `study`, `objectives`, `counts` (runs by state, plus `cached`), `best`, `history`
    (`trial`, `val_accuracy`, `best_so_far`), `importance` (`values`, `note`, `trials`,
    `min_trials`), `pareto` (None for a single objective), `cost` (`trial`, `val_accuracy`,
    `params`, `flops`, `arch_id`, `summary`: one entry per complete trial),
    `depth_by_skip` ({skip type: `depth`, `val_accuracy`, `trial`, `mean_by_depth`}),
    `skip_counts`, `block_counts`, `edf` (`skip` and `block`: {type: `error`, `fraction`}),
    `top` (rows with stage layouts), `inheritance` (the family tree: see
    `nas.family.inheritance`).

    Raises:
        UserError: the study has no runs in the store.
    """
    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.study_names()) or "none"
        raise UserError(f"study `{study}` has no runs in {store.display_url}; studies: {known}")
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[r.state] += 1
        if r.cached_from is not None:
            counts["cached"] += 1
    complete = sorted(
        (r for r in runs if r.state == "complete" and r.val_accuracy is not None
         and math.isfinite(r.val_accuracy)),
        key=lambda r: r.trial_number,
    )
    specs: dict[str, ArchitectureSpec | None] = {}
    for r in complete:
        if r.arch_id not in specs:
            arch = store.architecture(r.arch_id)
            specs[r.arch_id] = ArchitectureSpec.from_dict(arch) if arch else None

    st = _optuna_study(store, study)
    objectives = ["accuracy"]
    if st is not None:
        objectives = list((st.user_attrs.get("resnas") or {}).get("objectives") or objectives)

    # 1. history
    best, best_so_far = -math.inf, []
    for r in complete:
        best = max(best, r.val_accuracy)
        best_so_far.append(best)
    history = {
        "trial": [r.trial_number for r in complete],
        "val_accuracy": [r.val_accuracy for r in complete],
        "best_so_far": best_so_far,
    }
    best_run = max(complete, key=lambda r: (r.val_accuracy, -(r.params or 0), -r.trial_number), default=None)

    # 2. importance
    importance = _importance(st, objectives)

    # 3. cost views and the Pareto front
    cost = {
        "trial": [r.trial_number for r in complete],
        "val_accuracy": [r.val_accuracy for r in complete],
        "params": [r.params for r in complete],
        "flops": [r.flops for r in complete],
        "arch_id": [r.arch_id for r in complete],
        "summary": [specs[r.arch_id].summary() if specs.get(r.arch_id) else r.arch_id for r in complete],
    }
    pareto = _pareto(store, st, complete, objectives)

    # 4. residual views: trained runs only
    trained = [r for r in complete if r.cached_from is None and specs.get(r.arch_id) is not None]
    depth_by_skip: dict[str, dict[str, Any]] = {}
    skip_errors: dict[str, list[float]] = defaultdict(list)
    block_errors: dict[str, list[float]] = defaultdict(list)
    for r in trained:
        spec = specs[r.arch_id]
        skip, block = _skip_type(spec), _block_type(spec)
        entry = depth_by_skip.setdefault(skip, {"depth": [], "val_accuracy": [], "trial": []})
        entry["depth"].append(spec.total_depth)
        entry["val_accuracy"].append(r.val_accuracy)
        entry["trial"].append(r.trial_number)
        skip_errors[skip].append(1.0 - r.val_accuracy)
        block_errors[block].append(1.0 - r.val_accuracy)
    for entry in depth_by_skip.values():
        by_depth: dict[int, list[float]] = defaultdict(list)
        for d, a in zip(entry["depth"], entry["val_accuracy"], strict=True):
            by_depth[d].append(a)
        entry["mean_by_depth"] = {d: sum(v) / len(v) for d, v in sorted(by_depth.items())}

    # 5. top-k distinct architectures with their stage layouts
    top_rows, seen = [], set()
    for r in sorted(complete, key=lambda r: (-r.val_accuracy, r.params or 0, r.trial_number)):
        if r.arch_id in seen:
            continue
        seen.add(r.arch_id)
        spec = specs.get(r.arch_id)
        top_rows.append({
            "trial": r.trial_number,
            "val_accuracy": r.val_accuracy,
            "params": r.params,
            "flops": r.flops,
            "latency_ms": r.latency_ms,
            "fidelity": r.fidelity,
            "arch_id": r.arch_id,
            "cached_from": r.cached_from,
            "summary": spec.summary() if spec else r.arch_id,
            "total_depth": spec.total_depth if spec else None,
            "stages": [
                {"stage": i, "depth": s.depth, "width": s.width, "stride": s.stride,
                 "block": s.block, "skip": s.skip}
                for i, s in enumerate(spec.stages, start=1)
            ] if spec else [],
        })
        if len(top_rows) == top:
            break

    return {
        "study": study,
        "storage": store.display_url,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "objectives": objectives,
        "counts": dict(counts),
        "best": None if best_run is None else {
            "trial": best_run.trial_number, "val_accuracy": best_run.val_accuracy,
            "arch_id": best_run.arch_id, "params": best_run.params, "flops": best_run.flops,
        },
        "history": history,
        "importance": importance,
        "pareto": pareto,
        "cost": cost,
        "depth_by_skip": depth_by_skip,
        "skip_counts": {k: len(v) for k, v in sorted(skip_errors.items())},
        "block_counts": {k: len(v) for k, v in sorted(block_errors.items())},
        "edf": {
            "skip": {k: _edf(v) for k, v in sorted(skip_errors.items())},
            "block": {k: _edf(v) for k, v in sorted(block_errors.items())},
        },
        "top": top_rows,
        "inheritance": inheritance(store, study, runs, specs),
    }


def _pareto(store: Store, st: Any, complete: list[RunRecord], objectives: list[str]) -> dict[str, Any] | None:
    costs = [o for o in objectives if o != "accuracy"]
    if not costs:
        return None
    objective = costs[0]
    field = {"params": "params", "flops": "flops", "latency": "latency_ms"}[objective]
    points = [
        (r.trial_number, r.val_accuracy, float(getattr(r, field)))
        for r in complete if getattr(r, field) is not None
    ]
    front: list[int] = []
    if st is not None:
        try:
            front = [b["trial"] for b in best_trials(st, store, objectives)]
        except Exception:  # noqa: BLE001 - fall back on the store's own numbers
            front = []
    if not front:
        front = _front(points)
    by_trial = {t: (a, c) for t, a, c in points}
    return {
        "objective": objective,
        "trial": [t for t, _, _ in points],
        "val_accuracy": [a for _, a, _ in points],
        "cost": [c for _, _, c in points],
        "front": [t for t in front if t in by_trial],
        "front_val_accuracy": [by_trial[t][0] for t in front if t in by_trial],
        "front_cost": [by_trial[t][1] for t in front if t in by_trial],
    }


# -- the report file ----------------------------------------------------------------------------
def interactive_path(out: str | Path) -> Path:
    """Where the interactive version of the report `out` goes: `report.html` ->
    `report.interactive.html`, in the same directory."""
    out = Path(out)
    return out.with_name(f"{out.stem}.interactive.html")


def _write_interactive(data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the plotly version beside `out` if plotly imports; {`path`, `note`} either way."""
    try:
        text = render_interactive(data)
    except ImportError:
        return {"path": None, "note": "interactive version not written: plotly is not installed "
                                      "(pip install plotly, or the resnas[report] extra)"}
    path = interactive_path(out)
    path.write_text(text, encoding="utf-8")
    return {"path": str(path), "note": None}


def analyze(store: Store, study: str, out: str | Path, *, png_dir: str | Path | None = None,
            top: int = TOP_K, interactive: bool = True) -> dict[str, Any]:
    """Write the report of `study` to `out` (and PNGs to `png_dir`); returns `collect`'s data
    plus `interactive` ({`path`: the plotly file or None, `note`: why none, or None}).

    Args:
        interactive: also write `interactive_path(out)` (plotly, one offline file) when plotly
            is installed; the report links to it, or says in one line why there is none.
    """
    data = collect(store, study, top=top)
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    data["interactive"] = _write_interactive(data, out) if interactive else {"path": None, "note": None}
    text = render_html(data, png_dir=png_dir)
    out.write_text(text, encoding="utf-8")
    return data
