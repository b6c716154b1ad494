"""Drawing `nas analyze`'s report from `collect`'s data: matplotlib figures, one HTML page.

Each plot adapts to what the study holds: a discrete axis (depth, trial number) gets integer
ticks at the values present; a study with one total depth gets bars per skip type, not a line;
a mean is joined to the next only when both come from two or more trials, so single points are
never drawn as a trend. `depth_plan` is that decision as data (the interactive view and the
tests read it too). The family tree (`--inherit`) is a figure, one summary line and a table of
child -> parent, drawn by `nas.report_family`; a study where no trial inherited gets one line.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nas.report_family import fig_inheritance, inheritance_table, inheritance_text, tree_layout
from nas.report_figures import fmt_cell, integer_axis, new_figure

COST_LABELS = {"params": "parameters", "flops": "multiply-adds per image", "latency": "latency (ms, batch 1)"}
DEPTH_LABEL = "total depth (weighted layers on the longest path)"
# A mean over fewer trials than this is a single trial: drawn as a point, never joined by a line.
MIN_TRIALS_PER_MEAN = 2


# -- what to draw -------------------------------------------------------------------------------
def depth_plan(data: dict[str, Any]) -> dict[str, Any]:
    """What the accuracy-by-depth figure shows, decided from `collect`'s `depth_by_skip`.

    Returns `kind`: `bars` when every trained architecture has the same total depth (one bar
    per skip type: its mean accuracy), else `by_depth` (accuracy against depth); `depths`, the
    distinct depths, sorted; and `groups` ({skip type: `depth`, `val_accuracy`, `trial` of its
    points, `means` ({depth: [mean, trials]}), `line` ([[depth, mean], ...]: the means over at
    least `MIN_TRIALS_PER_MEAN` trials, to be joined; empty when fewer than two)}), sorted by
    skip type. `bars` groups also carry `mean` and `n` over all their points.
    """
    groups: dict[str, dict[str, Any]] = {}
    depths: set[int] = set()
    for skip in sorted(data["depth_by_skip"]):
        g = data["depth_by_skip"][skip]
        by_depth: dict[int, list[float]] = {}
        for d, a in zip(g["depth"], g["val_accuracy"], strict=True):
            by_depth.setdefault(int(d), []).append(a)
        depths.update(by_depth)
        means = {d: [sum(v) / len(v), len(v)] for d, v in sorted(by_depth.items())}
        line = [[d, m] for d, (m, n) in means.items() if n >= MIN_TRIALS_PER_MEAN]
        groups[skip] = {
            "depth": list(g["depth"]), "val_accuracy": list(g["val_accuracy"]), "trial": list(g["trial"]),
            "means": means, "line": line if len(line) >= 2 else [],
        }
    kind = "bars" if len(depths) == 1 else "by_depth"
    if kind == "bars":
        for g in groups.values():
            g["n"] = len(g["val_accuracy"])
            g["mean"] = sum(g["val_accuracy"]) / g["n"]
    return {"kind": kind, "depths": sorted(depths), "groups": groups}


# -- figures ------------------------------------------------------------------------------------

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
    fig = new_figure()
    ax = fig.add_subplot()
    ax.scatter(h["trial"], h["val_accuracy"], s=18, alpha=0.7, label="trial")
    ax.step(h["trial"], h["best_so_far"], where="post", color="C3", label="best so far")
    integer_axis(ax.xaxis, h["trial"])
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history (complete trials)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def fig_importance(data: dict[str, Any]):
    values = data["importance"]["values"]
    names = list(values)[::-1]
    fig = new_figure(7.0, max(2.5, 0.35 * len(names) + 1.0))
    ax = fig.add_subplot()
    ax.barh(names, [values[n] for n in names], color="C0")
    ax.set_xlabel("importance for validation accuracy (Optuna's default evaluator; sums to 1)")
    ax.set_title("Parameter importance")
    ax.grid(alpha=0.3, axis="x")
    return fig


def fig_pareto(data: dict[str, Any]):
    p = data["pareto"]
    fig = new_figure()
    ax = fig.add_subplot()
    ax.scatter(p["cost"], p["val_accuracy"], s=18, alpha=0.5, color="C7", label="complete trials")
    order = sorted(range(len(p["front"])), key=lambda i: p["front_cost"][i])
    xs, ys = [p["front_cost"][i] for i in order], [p["front_val_accuracy"][i] for i in order]
    # A staircase: the best accuracy reached at a cost up to x. Straight segments would claim
    # accuracies between two front points that no trial has.
    if len(xs) >= 2:
        ax.step(xs, ys, where="post", color="C3", alpha=0.7)
    ax.scatter(xs, ys, s=30, color="C3", zorder=3, label="Pareto front")
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
    fig = new_figure(10.0, 4.0)
    for i, (key, label) in enumerate((("params", "parameters"), ("flops", "multiply-adds per image"))):
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [(x, a) for x, a in zip(c[key], c["val_accuracy"], strict=True) if x]
        ax.scatter([x for x, _ in pts], [a for _, a in pts], s=18, alpha=0.7, color=f"C{i}")
        distinct = sorted({x for x, _ in pts})
        if len(distinct) > 1:
            ax.set_xscale("log")
            ax.set_xlabel(f"{label} (log)")
        else:  # one size: a log axis would tick decades around a single point
            ax.set_xticks(distinct, [f"{x:,}" for x in distinct])
            ax.set_xlabel(f"{label} (one value in this study)" if distinct else label)
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"Accuracy vs {label}")
        ax.grid(alpha=0.3, which="both")
    return fig


def fig_depth(data: dict[str, Any]):
    plan = depth_plan(data)
    groups = plan["groups"]
    colors = _colors(list(groups))  # sorted, as in the EDF figure: same colour, same skip type
    fig = new_figure()
    ax = fig.add_subplot()
    if plan["kind"] == "bars":
        # One depth in the study: nothing to plot against depth; compare skip types there.
        names = list(groups)
        ax.bar(range(len(names)), [groups[n]["mean"] for n in names], width=0.6, alpha=0.6,
               color=[colors[n] for n in names], label="mean")
        for i, n in enumerate(names):
            ax.scatter([i] * groups[n]["n"], groups[n]["val_accuracy"], s=18, color="k", alpha=0.6, zorder=3)
        ax.set_xticks(range(len(names)), [f"{n}\n(n={groups[n]['n']})" for n in names])
        ax.set_xlabel(f"skip type (every trained architecture has total depth {plan['depths'][0]})")
        ax.set_ylabel("validation accuracy")
        ax.set_title("Accuracy per skip type (bars: mean; dots: trials)")
        ax.grid(alpha=0.3, axis="y")
        return fig
    for skip, g in groups.items():
        ax.scatter(g["depth"], g["val_accuracy"], s=18, alpha=0.5, color=colors[skip], label=f"{skip} (trials)")
        means = [(d, m) for d, (m, n) in g["means"].items() if n >= MIN_TRIALS_PER_MEAN]
        if means:
            ax.scatter([d for d, _ in means], [m for _, m in means], marker="D", s=36, color=colors[skip],
                       edgecolors="k", zorder=3, label=f"{skip} (mean of >= {MIN_TRIALS_PER_MEAN})")
        if g["line"]:
            ax.plot([d for d, _ in g["line"]], [m for _, m in g["line"]], "-", color=colors[skip])
    integer_axis(ax.xaxis, plan["depths"])
    ax.set_xlabel(DEPTH_LABEL)
    ax.set_ylabel("validation accuracy")
    ax.set_title("Accuracy by depth per skip type (lines join means of >= 2 trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def fig_edf(data: dict[str, Any]):
    fig = new_figure(10.0, 4.0)
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
    if imp["values"]:
        imp_note = f"computed from {imp['trials']} complete feasible trials (at least {imp['min_trials']} needed)"
    else:
        imp_note = imp["note"]
    out.append(("importance", "Parameter importance",
                fig_importance(data) if imp["values"] else None, imp_note))
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
    if "inheritance" in data:
        tree = bool(tree_layout(data)["arrows"])
        out.append(("inheritance", "Family tree (inherited weights)",
                    fig_inheritance(data) if tree else None, inheritance_text(data)))
    return out


# -- the report --------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.note{color:#666;font-style:italic}img{max-width:100%;height:auto}code{background:#f4f4f4;padding:0 .2rem}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""


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
            f"<td class=num>{fmt_cell(r['val_accuracy'], '.4f')}</td><td class=num>{fmt_cell(r['params'])}</td>"
            f"<td class=num>{fmt_cell(r['flops'])}</td><td class=num>{fmt_cell(r['total_depth'])}</td>"
            f"<td class=num>{fmt_cell(r['fidelity'])}</td><td>{stages}</td><td><code>{html.escape(r['arch_id'])}</code></td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _summary(data: dict[str, Any]) -> str:
    c = data["counts"]
    states = ", ".join(f"{c.get(s, 0)} {s}" for s in ("complete", "pruned", "failed", "running"))
    best = data["best"]
    best_text = (
        f"best: trial {best['trial']}, validation accuracy {best['val_accuracy']:.4f}, "
        f"{fmt_cell(best['params'])} parameters (arch <code>{html.escape(best['arch_id'])}</code>)"
        if best else "no complete trial yet"
    )
    return (
        f"<p>Runs in the store: {html.escape(states)} ({c.get('cached', 0)} answered from the cache). "
        f"Objectives: {html.escape(', '.join(data['objectives']))}.</p><p>{best_text}.</p>"
        f"<p class=note>Only finished runs are plotted; a running study can be analysed again "
        f"later. Residual views count trained runs only (not cache answers). Skip/block type of an "
        f"architecture = the set of its stages' types.</p>"
    )


def _interactive_line(data: dict[str, Any]) -> str:
    """A link to the interactive version (same directory), or the one line saying why none."""
    info = data.get("interactive") or {}
    if info.get("path"):
        name = Path(info["path"]).name
        return (f'<p>Interactive version (zoom, hover for each trial\'s architecture): '
                f'<a href="{html.escape(quote(name))}">{html.escape(name)}</a></p>\n')
    if info.get("note"):
        return f'<p class="note">{html.escape(info["note"])}</p>\n'
    return ""


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
        if name == "inheritance" and data["inheritance"]["edges"]:  # the section's content
            part.append(f"<p>{html.escape(note)}</p>")
            part.append(inheritance_table(data))
        elif note:
            part.append(f'<p class="note">{html.escape(note)}</p>')
        sections.append("\n".join(p for p in part if p))
    sections.append(f'<h2 id="top">Top {len(data["top"])} architectures</h2>\n{_top_table(data["top"])}')
    title = f"resnas study {data['study']}"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p class=note>{html.escape(data['storage'])} — generated {html.escape(data['generated'])} by <code>nas analyze</code></p>\n"
        f"{_summary(data)}\n{_interactive_line(data)}" + "\n".join(sections) + "\n</body></html>\n"
    )

