"""The interactive version of `nas analyze`'s report: one HTML file, plotly.js inlined, offline.

Optional: `render_interactive` raises ImportError where plotly is not installed, and
`nas.analyze` then writes only the static report with one line saying so. The charts follow the
static ones and the same rules (`nas.report_render.depth_plan`: bars for a single depth, lines
only between means of several trials); hovering a point shows its trial number and architecture.
The family tree (`--inherit`) draws an arrow from each parent to its child
(`nas.report_family.tree_layout`).
"""

from __future__ import annotations

import html
from typing import Any

from nas.report_family import OUTCOME_COLORS, inheritance_text, tree_layout
from nas.report_figures import MAX_EXPLICIT_TICKS
from nas.report_render import COST_LABELS, DEPTH_LABEL, MIN_TRIALS_PER_MEAN, depth_plan

_HEIGHT = "460px"
_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = (
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;"
    "color:#222;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}"
    ".note{color:#666;font-style:italic}"
)


def _hover(data: dict[str, Any]) -> dict[int, str]:
    """Hover text for each complete trial: number, accuracy, costs, architecture."""
    c = data["cost"]
    out = {}
    for i, t in enumerate(c["trial"]):
        params = f"{c['params'][i]:,}" if c["params"][i] is not None else "-"
        flops = f"{c['flops'][i]:,}" if c["flops"][i] is not None else "-"
        out[t] = (
            f"trial {t}<br>val accuracy {c['val_accuracy'][i]:.4f}<br>params {params}, MACs {flops}"
            f"<br>{html.escape(c['summary'][i])}<br>arch_id {html.escape(c['arch_id'][i])}"
        )
    return out


def _integer_xaxis(fig, values: list[Any], **where: Any) -> None:
    distinct = sorted({int(v) for v in values if v is not None})
    if 0 < len(distinct) <= MAX_EXPLICIT_TICKS:
        fig.update_xaxes(tickmode="array", tickvals=distinct, **where)
    else:
        fig.update_xaxes(tickformat="d", **where)


def _history(go, data: dict[str, Any], hover: dict[int, str]):
    h = data["history"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=h["trial"], y=h["val_accuracy"], mode="markers", name="trial",
                             hovertext=[hover[t] for t in h["trial"]], hoverinfo="text"))
    fig.add_trace(go.Scatter(x=h["trial"], y=h["best_so_far"], mode="lines", line_shape="hv",
                             name="best so far", hoverinfo="y"))
    _integer_xaxis(fig, h["trial"])
    fig.update_layout(xaxis_title="trial", yaxis_title="validation accuracy")
    return fig


def _cost(go, make_subplots, data: dict[str, Any], hover: dict[int, str]):
    c = data["cost"]
    keys = (("params", "parameters"), ("flops", "multiply-adds per image"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"Accuracy vs {label}" for _, label in keys])
    for col, (key, label) in enumerate(keys, start=1):
        pts = [(x, a, t) for x, a, t in zip(c[key], c["val_accuracy"], c["trial"], strict=True) if x]
        fig.add_trace(go.Scatter(x=[x for x, _, _ in pts], y=[a for _, a, _ in pts], mode="markers",
                                 name=label, hovertext=[hover[t] for _, _, t in pts], hoverinfo="text"),
                      row=1, col=col)
        many = len({x for x, _, _ in pts}) > 1
        fig.update_xaxes(type="log" if many else "linear", title_text=label + (" (log)" if many else ""),
                         row=1, col=col)
        fig.update_yaxes(title_text="validation accuracy", row=1, col=col)
    fig.update_layout(showlegend=False)
    return fig


def _pareto(go, data: dict[str, Any], hover: dict[int, str]):
    p = data["pareto"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=p["cost"], y=p["val_accuracy"], mode="markers", name="complete trials",
                             marker={"color": "#999"}, hovertext=[hover[t] for t in p["trial"]],
                             hoverinfo="text"))
    order = sorted(range(len(p["front"])), key=lambda i: p["front_cost"][i])
    fig.add_trace(go.Scatter(
        x=[p["front_cost"][i] for i in order], y=[p["front_val_accuracy"][i] for i in order],
        mode="lines+markers" if len(order) >= 2 else "markers", line_shape="hv", name="Pareto front",
        marker={"color": "#d62728", "size": 9}, hovertext=[hover[p["front"][i]] for i in order], hoverinfo="text",
    ))
    if p["cost"] and all(c > 0 for c in p["cost"]) and len(set(p["cost"])) > 1:
        fig.update_xaxes(type="log")
    fig.update_layout(xaxis_title=COST_LABELS.get(p["objective"], p["objective"]),
                      yaxis_title="validation accuracy")
    return fig


def _importance(go, data: dict[str, Any]):
    values = data["importance"]["values"]
    names = list(values)[::-1]
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h"))
    fig.update_layout(xaxis_title="importance for validation accuracy (Optuna's default evaluator; sums to 1)")
    return fig


def _depth(go, data: dict[str, Any], hover: dict[int, str]):
    plan = depth_plan(data)
    fig = go.Figure()
    if plan["kind"] == "bars":
        names = list(plan["groups"])
        fig.add_trace(go.Bar(x=names, y=[plan["groups"][n]["mean"] for n in names], name="mean",
                             opacity=0.6, hovertext=[f"{n}: mean of {plan['groups'][n]['n']}" for n in names]))
        for n in names:
            g = plan["groups"][n]
            fig.add_trace(go.Scatter(x=[n] * g["n"], y=g["val_accuracy"], mode="markers", name=f"{n} (trials)",
                                     marker={"color": "black"}, hovertext=[hover.get(t, str(t)) for t in g["trial"]],
                                     hoverinfo="text"))
        fig.update_layout(xaxis_title=f"skip type (every trained architecture has total depth {plan['depths'][0]})",
                          yaxis_title="validation accuracy")
        return fig
    for skip, g in plan["groups"].items():
        fig.add_trace(go.Scatter(x=g["depth"], y=g["val_accuracy"], mode="markers", name=f"{skip} (trials)",
                                 legendgroup=skip, hovertext=[hover.get(t, str(t)) for t in g["trial"]],
                                 hoverinfo="text"))
        means = [(d, m, n) for d, (m, n) in g["means"].items() if n >= MIN_TRIALS_PER_MEAN]
        if means:
            fig.add_trace(go.Scatter(
                x=[d for d, _, _ in means], y=[m for _, m, _ in means],
                mode="lines+markers" if g["line"] else "markers", marker={"symbol": "diamond", "size": 10},
                name=f"{skip} (mean of >= {MIN_TRIALS_PER_MEAN})", legendgroup=skip,
                hovertext=[f"{skip}, depth {d}: mean of {n}" for d, _, n in means], hoverinfo="text+y",
            ))
    _integer_xaxis(fig, plan["depths"])
    fig.update_layout(xaxis_title=DEPTH_LABEL, yaxis_title="validation accuracy")
    return fig


def _inheritance(go, data: dict[str, Any], hover: dict[int, str]):
    plan = tree_layout(data)
    nodes = plan["nodes"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=nodes["trial"], y=nodes["val_accuracy"], mode="markers", name="trained trial",
                             marker={"color": "#999"}, hovertext=[hover.get(t, f"trial {t}") for t in nodes["trial"]],
                             hoverinfo="text"))
    for outcome, color in OUTCOME_COLORS.items():
        arrows = [a for a in plan["arrows"] if a["outcome"] == outcome]
        if not arrows:
            continue
        texts = []
        for a in arrows:
            e = a["edge"]
            morph = "<br>".join(html.escape(m) for m in e["morph"])
            texts.append(f"trial {e['trial']} from {html.escape(e['parent'])}: {e['parent_val_accuracy']:.4f} -> "
                         f"{e['val_accuracy']:.4f} ({e['gain']:+.4f}), {e['epochs'] if e['epochs'] is not None else '-'} epochs"
                         + (f"<br>{morph}" if morph else ""))
        fig.add_trace(go.Scatter(x=[a["child_xy"][0] for a in arrows], y=[a["child_xy"][1] for a in arrows],
                                 mode="markers", name=f"{outcome} parent" if outcome != "tie" else "tie with parent",
                                 marker={"color": color, "size": 9, "line": {"width": 1, "color": "black"}},
                                 hovertext=texts, hoverinfo="text"))
        for a in arrows:
            fig.add_annotation(x=a["child_xy"][0], y=a["child_xy"][1], ax=a["parent_xy"][0], ay=a["parent_xy"][1],
                               xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=2,
                               arrowwidth=1.5, arrowcolor=color, standoff=4, startstandoff=4, text="")
    if plan["external"]:
        labels = list(plan["external"])
        fig.add_trace(go.Scatter(x=[plan["external"][k][0] for k in labels], y=[plan["external"][k][1] for k in labels],
                                 mode="markers+text", text=labels, textposition="top left",
                                 name="parent in another study", marker={"color": "white", "size": 9,
                                                                          "line": {"width": 1, "color": "black"}},
                                 hovertext=labels, hoverinfo="text+y"))
    xs = list(nodes["trial"]) + [a["child_xy"][0] for a in plan["arrows"]]
    _integer_xaxis(fig, xs)
    fig.update_layout(xaxis_title="trial (other studies' parents: left of the first trial)",
                      yaxis_title="validation accuracy (children: after their fewer epochs)")
    return fig


def charts(data: dict[str, Any]) -> list[tuple[str, str, Any | None, str | None]]:
    """(name, title, plotly figure or None, note) for each section; raises ImportError
    without plotly."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    hover = _hover(data)
    has = bool(data["history"]["trial"])
    empty = "no complete trial yet"
    out: list[tuple[str, str, Any | None, str | None]] = []
    out.append(("history", "Optimisation history", _history(go, data, hover) if has else None,
                None if has else empty))
    imp = data["importance"]
    out.append(("importance", "Parameter importance", _importance(go, data) if imp["values"] else None,
                f"computed from {imp['trials']} complete feasible trials" if imp["values"] else imp["note"]))
    if data["pareto"] is not None:
        ok = bool(data["pareto"]["trial"])
        out.append(("pareto", "Pareto front", _pareto(go, data, hover) if ok else None, None if ok else empty))
    out.append(("cost", "Accuracy vs parameters and multiply-adds",
                _cost(go, make_subplots, data, hover) if has else None, None if has else empty))
    res = bool(data["depth_by_skip"])
    out.append(("depth_by_skip", "Accuracy by depth for each skip type", _depth(go, data, hover) if res else None,
                None if res else "no complete trial trained in this study (cached answers are left out)"))
    if "inheritance" in data:
        tree = bool(tree_layout(data)["arrows"])
        out.append(("inheritance", "Family tree (inherited weights)", _inheritance(go, data, hover) if tree else None,
                    inheritance_text(data)))
    return out


def render_interactive(data: dict[str, Any]) -> str:
    """The interactive report as one HTML string: plotly.js inlined once (in the first chart),
    so it opens offline. Raises ImportError where plotly is not installed."""
    import plotly.io as pio

    sections, js_included = [], False
    for name, title, fig, note in charts(data):
        part = [f'<h2 id="{name}">{html.escape(title)}</h2>']
        if fig is not None:
            fig.update_layout(margin={"t": 40, "b": 50}, template="plotly_white")
            part.append(pio.to_html(fig, include_plotlyjs=not js_included, full_html=False, config=_CONFIG,
                                    default_height=_HEIGHT, div_id=f"chart-{name}"))
            js_included = True
        if note:
            part.append(f'<p class="note">{html.escape(note)}</p>')
        sections.append("\n".join(part))
    c = data["counts"]
    states = ", ".join(f"{c.get(s, 0)} {s}" for s in ("complete", "pruned", "failed", "running"))
    title = f"resnas study {data['study']} (interactive)"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p class=note>{html.escape(data['storage'])} — generated {html.escape(data['generated'])} by "
        f"<code>nas analyze</code>; runs: {html.escape(states)}. Hover a point for its trial and architecture.</p>\n"
        + "\n".join(sections) + "\n</body></html>\n"
    )
