"""The family-tree section of `nas analyze`'s report (`nas search --inherit`), drawn from
`collect`'s `inheritance` data: a figure (an arrow from each parent to its child, coloured by how
the child ended against it), one summary line and a table of child -> parent. A study where no
trial inherited gets `NO_INHERITANCE` instead.
"""

from __future__ import annotations

import html
from typing import Any

from nas.report_figures import fmt_cell, integer_axis, new_figure

NO_INHERITANCE = "no trial of this study started from a parent's weights (nas search --inherit)"
# Arrow colours of the family tree, by how the child ended against its parent.
OUTCOME_COLORS = {"above": "#2ca02c", "below": "#d62728", "tie": "#7f7f7f"}


# -- the family tree ----------------------------------------------------------------------------
def _signed(v: float) -> str:
    return f"{v:+.4f}"


def _epochs(v: float | None) -> str:
    return "-" if v is None else (f"{v:g}")


def inheritance_text(data: dict[str, Any]) -> str:
    """The family tree in one line: how many trained trials had a parent, how they ended
    against it, and the epochs they trained; `NO_INHERITANCE` when none did."""
    inh = data["inheritance"]
    s = inh["summary"]
    if not inh["edges"]:
        return NO_INHERITANCE
    parts = []
    share = f" ({s['share']:.0%})" if s["share"] is not None else ""
    other = f", {s['other_study']} of them from another study" if s["other_study"] else ""
    parts.append(f"{s['inherited']} of {s['trained']} trained trials{share} started from a "
                 f"parent's weights{other}")
    if s["compared"]:
        ties = f", {s['tie']} tied" if s["tie"] else ""
        parts.append(f"{s['above']} ended above their parent, {s['below']} below{ties}; "
                     f"median gain {_signed(s['median_gain'])}")
    elif s["inherited"]:
        parts.append("none can be compared: their parents have no validation accuracy")
    if s["median_epochs"] is not None:
        full = (f" vs {_epochs(s['full_epochs'])} for trials without a parent"
                if s["full_epochs"] is not None else "")
        parts.append(f"children trained a median of {_epochs(s['median_epochs'])} epochs{full}")
    if s["not_complete"]:
        parts.append(f"{s['not_complete']} more inherited but did not complete (pruned, failed "
                     "or running)")
    return "; ".join(parts) + "."


def tree_layout(data: dict[str, Any]) -> dict[str, Any]:
    """Where the family-tree figure puts things: `nodes` (the study's trained trials),
    `arrows` ([{`parent_xy`, `child_xy`, `outcome`, `edge`}], every child compared with its
    parent) and `external` ({label: (x, accuracy)}: parents in other studies, drawn in one
    column left of the study's first trial). Empty `arrows`: no figure."""
    inh = data["inheritance"]
    nodes = inh["nodes"]
    drawn = [e for e in inh["edges"] if e["gain"] is not None]
    xs = [*nodes["trial"], *(e["trial"] for e in drawn)]
    first, last = min(xs, default=0), max(xs, default=0)
    outside = first - max(1, round(0.06 * (last - first)))  # a column apart from trial ticks
    external: dict[str, tuple[float, float]] = {}
    arrows = []
    for e in drawn:
        if e["same_study"] and e["parent_trial"] is not None:
            start = (e["parent_trial"], e["parent_val_accuracy"])
        else:
            start = (outside, e["parent_val_accuracy"])
            external[e["parent"]] = start
        arrows.append({"parent_xy": start, "child_xy": (e["trial"], e["val_accuracy"]),
                       "outcome": e["outcome"], "edge": e})
    return {"nodes": nodes, "arrows": arrows, "external": external, "outside_x": outside}


def fig_inheritance(data: dict[str, Any]):
    from matplotlib.lines import Line2D

    plan = tree_layout(data)
    fig = new_figure(9.0, 4.0)
    ax = fig.add_subplot()
    nodes = plan["nodes"]
    ax.scatter(nodes["trial"], nodes["val_accuracy"], s=16, color="#999999", alpha=0.7, zorder=2)
    for a in plan["arrows"]:
        color = OUTCOME_COLORS[a["outcome"]]
        ax.annotate("", xy=a["child_xy"], xytext=a["parent_xy"], zorder=3,
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.3, "alpha": 0.85,
                                "shrinkA": 3, "shrinkB": 3, "mutation_scale": 10})
        ax.scatter(*a["child_xy"], s=28, color=color, edgecolors="k", linewidths=0.5, zorder=4)
    for label, (x, y) in plan["external"].items():
        ax.scatter([x], [y], s=36, facecolors="white", edgecolors="k", zorder=4)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    xs = list(nodes["trial"]) + [a["child_xy"][0] for a in plan["arrows"]]
    integer_axis(ax.xaxis, xs)
    if plan["external"]:
        gap = min(xs) - plan["outside_x"]
        ticks = [t for t in ax.get_xticks() if t >= min(xs) - gap / 2]
        ax.set_xticks([plan["outside_x"], *ticks],
                      ["other\nstudy", *(f"{t:g}" for t in ticks)])
        ax.set_xlim(plan["outside_x"] - gap, max(xs) + gap)
    counts = data["inheritance"]["summary"]
    handles = [Line2D([], [], color="#999999", marker="o", ls="", label="trained trial")]
    words = {"above": "child above parent", "below": "child below parent", "tie": "tie with parent"}
    handles += [Line2D([], [], color=OUTCOME_COLORS[k], marker=">", label=f"{words[k]} ({counts[k]})")
                for k in words if counts[k]]
    if plan["external"]:
        handles.append(Line2D([], [], color="k", marker="o", mfc="white", ls="", label="parent in another study"))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Family tree: parent -> child (children trained fewer epochs)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the nodes
    return fig


def inheritance_table(data: dict[str, Any]) -> str:
    """child trial -> parent, the morph, both accuracies, the difference and the epochs."""
    edges = data["inheritance"]["edges"]
    if not edges:
        return ""
    head = ("<tr><th>child trial</th><th>parent</th><th>morph</th><th>parent val acc.</th>"
            "<th>child val acc.</th><th>difference</th><th>child epochs (parent's)</th></tr>")
    body = []
    for e in edges:
        state = "" if e["state"] == "complete" else f" ({e['state']})"
        morph = "<br>".join(html.escape(m) for m in e["morph"]) or "-"
        gain = "-" if e["gain"] is None else "0 (tie)" if e["outcome"] == "tie" else _signed(e["gain"])
        cls = f' style="color:{OUTCOME_COLORS[e["outcome"]]}"' if e["outcome"] else ""
        parent_epochs = "" if e["parent_epochs"] is None else f" ({e['parent_epochs']})"
        body.append(
            f"<tr><td>{e['trial']}{html.escape(state)}</td><td>{html.escape(e['parent'])}</td>"
            f"<td>{morph}</td><td class=num>{fmt_cell(e['parent_val_accuracy'], '.4f')}</td>"
            f"<td class=num>{fmt_cell(e['val_accuracy'], '.4f')}</td><td class=num{cls}>{gain}</td>"
            f"<td class=num>{fmt_cell(e['epochs'])}{parent_epochs}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"
