"""Drawing `nas analyze`'s report from `collect`'s data: matplotlib figures, one HTML page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

COST_LABELS = {"params": "parameters", "flops": "multiply-adds per image", "latency": "latency (ms, batch 1)"}


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

