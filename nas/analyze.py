"""`nas analyze`: a self-contained HTML report of a study, from the store and Optuna (read only).

`collect(store, study)` gathers the numbers behind every figure as plain data (tests check them
against the store); `render_html` draws them with matplotlib's Agg canvas (no pyplot state, no
display) and embeds each figure as a base64 PNG, so the report opens offline with no CDN.

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
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas.errors import UserError
from search_spaces import ArchitectureSpec

TOP_K = 10
COST_LABELS = {"params": "parameters", "flops": "multiply-adds per image", "latency": "latency (ms, batch 1)"}


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


def _importance(st: Any, objectives: list[str]) -> tuple[dict[str, float], str | None]:
    """Parameter importances for validation accuracy (infeasible trials left out), or a note."""
    import optuna

    if st is None:
        return {}, "no Optuna study of this name in the database: importance needs its trials"
    trials = [
        t for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not t.user_attrs.get("infeasible")
    ]
    if len(trials) < 2:
        return {}, f"parameter importance needs at least 2 complete trials; the study has {len(trials)}"
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
    except Exception as exc:  # noqa: BLE001 - too few or degenerate trials, odd spaces
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {}, f"parameter importance unavailable: {first}"
    if not values:
        return {}, "parameter importance unavailable: no parameter varied among complete trials"
    return {k: float(v) for k, v in values.items()}, None


def collect(store: Store, study: str, *, top: int = TOP_K) -> dict[str, Any]:
    """The numbers behind every figure of the report, as plain JSON-ready data.

    Keys: `study`, `objectives`, `counts` (runs by state, plus `cached`), `best`, `history`
    (`trial`, `val_accuracy`, `best_so_far`), `importance` (`values`, `note`), `pareto` (None
    for a single objective), `cost` (`trial`, `val_accuracy`, `params`, `flops`),
    `depth_by_skip` ({skip type: `depth`, `val_accuracy`, `trial`, `mean_by_depth`}),
    `skip_counts`, `block_counts`, `edf` (`skip` and `block`: {type: `error`, `fraction`}),
    `top` (rows with stage layouts).

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
    values, note = _importance(st, objectives)

    # 3. cost views and the Pareto front
    cost = {
        "trial": [r.trial_number for r in complete],
        "val_accuracy": [r.val_accuracy for r in complete],
        "params": [r.params for r in complete],
        "flops": [r.flops for r in complete],
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
        "importance": {"values": values, "note": note},
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
        from nas.search import best_trials

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


# -- figures ------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colors(keys: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def fig_history(data: dict[str, Any]):
    h = data["history"]
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(h["trial"], h["val_accuracy"], s=18, alpha=0.7, label="trial")
    ax.step(h["trial"], h["best_so_far"], where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history (complete trials)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def fig_importance(data: dict[str, Any]):
    values = data["importance"]["values"]
    names = list(values)[::-1]
    fig = _figure(7.0, max(2.5, 0.35 * len(names) + 1.0))
    ax = fig.add_subplot()
    ax.barh(names, [values[n] for n in names], color="C0")
    ax.set_xlabel("importance for validation accuracy (Optuna's default evaluator; sums to 1)")
    ax.set_title("Parameter importance")
    ax.grid(alpha=0.3, axis="x")
    return fig


def fig_pareto(data: dict[str, Any]):
    p = data["pareto"]
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(p["cost"], p["val_accuracy"], s=18, alpha=0.5, color="C7", label="complete trials")
    order = sorted(range(len(p["front"])), key=lambda i: p["front_cost"][i])
    ax.plot([p["front_cost"][i] for i in order], [p["front_val_accuracy"][i] for i in order],
            "o-", color="C3", label="Pareto front")
    for t, c, a in zip(p["front"], p["front_cost"], p["front_val_accuracy"], strict=True):
        ax.annotate(str(t), (c, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if all(c > 0 for c in p["cost"]):
        ax.set_xscale("log")
    ax.set_xlabel(COST_LABELS.get(p["objective"], p["objective"]))
    ax.set_ylabel("validation accuracy")
    ax.set_title("Pareto front (labels: trial numbers)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def fig_cost(data: dict[str, Any]):
    c = data["cost"]
    fig = _figure(10.0, 4.0)
    for i, (key, label) in enumerate((("params", "parameters"), ("flops", "multiply-adds per image"))):
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [(x, a) for x, a in zip(c[key], c["val_accuracy"], strict=True) if x]
        ax.scatter([x for x, _ in pts], [a for _, a in pts], s=18, alpha=0.7, color=f"C{i}")
        if pts:
            ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"Accuracy vs {label}")
        ax.grid(alpha=0.3, which="both")
    return fig


def fig_depth(data: dict[str, Any]):
    groups = {k: data["depth_by_skip"][k] for k in sorted(data["depth_by_skip"])}
    colors = _colors(list(groups))  # sorted, as in the EDF figure: same colour, same skip type
    fig = _figure()
    ax = fig.add_subplot()
    for skip, g in groups.items():
        ax.scatter(g["depth"], g["val_accuracy"], s=18, alpha=0.5, color=colors[skip])
        means = g["mean_by_depth"]
        ax.plot(list(means), list(means.values()), "-o", color=colors[skip], label=f"{skip} (mean)")
    ax.set_xlabel("total depth (weighted layers on the longest path)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Accuracy by depth per skip type (degradation without residuals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def fig_edf(data: dict[str, Any]):
    fig = _figure(10.0, 4.0)
    for i, (kind, title) in enumerate((("skip", "skip type"), ("block", "block type"))):
        ax = fig.add_subplot(1, 2, i + 1)
        groups = data["edf"][kind]
        colors = _colors(list(groups))
        for name, e in groups.items():
            ax.step([e["error"][0], *e["error"]], [0.0, *e["fraction"]], where="post", color=colors[name],
                    label=f"{name} (n={len(e['error'])})")
        ax.set_xlabel("validation error")
        ax.set_ylabel("fraction of trials with error <= e")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Error EDF per {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def figures(data: dict[str, Any]) -> list[tuple[str, str, Any | None, str | None]]:
    """(name, title, figure or None, note) for each section of the report."""
    out: list[tuple[str, str, Any | None, str | None]] = []
    has = bool(data["history"]["trial"])
    empty = "no complete trial yet"
    out.append(("history", "Optimisation history", fig_history(data) if has else None, None if has else empty))
    imp = data["importance"]
    out.append(("importance", "Parameter importance",
                fig_importance(data) if imp["values"] else None, imp["note"]))
    if data["pareto"] is not None:
        ok = bool(data["pareto"]["trial"])
        out.append(("pareto", "Pareto front", fig_pareto(data) if ok else None, None if ok else empty))
    out.append(("cost", "Accuracy vs parameters and multiply-adds", fig_cost(data) if has else None,
                None if has else empty))
    res = bool(data["depth_by_skip"])
    none_trained = "no complete trial trained in this study (cached answers are left out)"
    out.append(("depth_by_skip", "Accuracy by depth for each skip type",
                fig_depth(data) if res else None, None if res else none_trained))
    out.append(("edf", "Error distribution (EDF) per skip type and block type",
                fig_edf(data) if res else None, None if res else none_trained))
    return out


# -- the report --------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.note{color:#666;font-style:italic}img{max-width:100%;height:auto}code{background:#f4f4f4;padding:0 .2rem}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _fmt(v: Any, spec: str = ",") -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _top_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="note">no complete trial yet</p>'
    head = ("<tr><th>#</th><th>trial</th><th>val acc.</th><th>params</th><th>MACs</th><th>depth</th>"
            "<th>epochs</th><th>stage layout (blocks x width /stride, block, skip)</th><th>arch_id</th></tr>")
    body = []
    for i, r in enumerate(rows, start=1):
        stages = "<br>".join(
            html.escape(
                f"stage{s['stage']}: {s['depth']}x{s['width']}{'/' + str(s['stride']) if s['stride'] != 1 else ''} "
                f"{s['block']} {s['skip']}"
            )
            for s in r["stages"]
        ) or html.escape(r["summary"])
        cached = f" (cached from run {r['cached_from']})" if r.get("cached_from") else ""
        body.append(
            f"<tr><td>{i}</td><td>{r['trial']}{html.escape(cached)}</td>"
            f"<td class=num>{_fmt(r['val_accuracy'], '.4f')}</td><td class=num>{_fmt(r['params'])}</td>"
            f"<td class=num>{_fmt(r['flops'])}</td><td class=num>{_fmt(r['total_depth'])}</td>"
            f"<td class=num>{_fmt(r['fidelity'])}</td><td>{stages}</td><td><code>{html.escape(r['arch_id'])}</code></td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _summary(data: dict[str, Any]) -> str:
    c = data["counts"]
    states = ", ".join(f"{c.get(s, 0)} {s}" for s in ("complete", "pruned", "failed", "running"))
    best = data["best"]
    best_text = (
        f"best: trial {best['trial']}, validation accuracy {best['val_accuracy']:.4f}, "
        f"{_fmt(best['params'])} parameters (arch <code>{html.escape(best['arch_id'])}</code>)"
        if best else "no complete trial yet"
    )
    return (
        f"<p>Runs in the store: {html.escape(states)} ({c.get('cached', 0)} answered from the cache). "
        f"Objectives: {html.escape(', '.join(data['objectives']))}.</p><p>{best_text}.</p>"
        f"<p class=note>Only finished runs are plotted; a running study can be analysed again "
        f"later. Residual views count trained runs only (not cache answers). Skip/block type of an "
        f"architecture = the set of its stages' types.</p>"
    )


def render_html(data: dict[str, Any], *, png_dir: str | Path | None = None) -> str:
    """The report as one HTML string (figures inline as base64 PNG); with `png_dir`, each figure
    is also written there as `<name>.png`."""
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
    sections = []
    for name, title, fig, note in figures(data):
        part = [f'<h2 id="{name}">{html.escape(title)}</h2>']
        if fig is not None:
            png = _png(fig)
            if png_dir is not None:
                (Path(png_dir) / f"{name}.png").write_bytes(png)
            b64 = base64.b64encode(png).decode("ascii")
            part.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">')
        if note:
            part.append(f'<p class="note">{html.escape(note)}</p>')
        sections.append("\n".join(part))
    sections.append(f'<h2 id="top">Top {len(data["top"])} architectures</h2>\n{_top_table(data["top"])}')
    title = f"resnas study {data['study']}"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p class=note>{html.escape(data['storage'])} — generated {html.escape(data['generated'])} by <code>nas analyze</code></p>\n"
        f"{_summary(data)}\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def analyze(store: Store, study: str, out: str | Path, *, png_dir: str | Path | None = None,
            top: int = TOP_K) -> dict[str, Any]:
    """Write the report of `study` to `out` (and PNGs to `png_dir`); returns `collect`'s data."""
    data = collect(store, study, top=top)
    text = render_html(data, png_dir=png_dir)
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return data
