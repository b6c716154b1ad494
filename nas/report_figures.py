"""Drawing primitives every figure and table of `nas analyze`'s report shares."""

from __future__ import annotations

from typing import Any

# Up to this many distinct values, an integer axis is ticked at exactly the values present.
MAX_EXPLICIT_TICKS = 15

def new_figure(width: float = 7.0, height: float = 4.0):
    """A matplotlib figure on its own Agg canvas: no pyplot state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def integer_axis(axis, values: list[Any]) -> None:
    """Integer ticks on `axis` (an `ax.xaxis`): at the values present when they are few, else
    wherever matplotlib puts them, but on integers."""
    from matplotlib.ticker import MaxNLocator

    distinct = sorted({int(v) for v in values if v is not None})
    if 0 < len(distinct) <= MAX_EXPLICIT_TICKS:
        axis.set_ticks(distinct)
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def fmt_cell(v: Any, spec: str = ",") -> str:
    """A table cell: `v` formatted with `spec`, `-` for None, `str(v)` where `spec` does not apply."""
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)
