"""`nas analyze`'s report adapts to what the study holds: bars for a single depth, no lines
through single points, integer ticks on discrete axes, importance only from enough trials,
and an optional interactive file that is one offline page. Studies here are written straight
into a store and an Optuna study (no search, no Ray): each test takes well under a second or two."""

from __future__ import annotations

import re
import sys

import pytest

from db import Store
from nas.analyze import MIN_IMPORTANCE_TRIALS, analyze, collect, interactive_path
from nas.report_render import depth_plan, fig_depth, fig_history, render_html
from tests.db.helpers import run, spec

STUDY = "rep"
WIDTHS = (8, 16, 32)


def make_study(url: str, trials: list[tuple[int, str, int]], *, optuna_study: bool = True) -> Store:
    """A store holding one complete trained run per (blocks per stage, skip, width) in `trials`,
    and (with `optuna_study`) the matching Optuna study; accuracy depends on width alone."""
    import optuna

    store = Store(url)
    st = None
    if optuna_study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        st = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
        st.set_user_attr("resnas", {"objectives": ["accuracy"]})
    distributions = {
        "depth": optuna.distributions.IntDistribution(1, 4),
        "skip": optuna.distributions.CategoricalDistribution(("identity", "none")),
        "width": optuna.distributions.CategoricalDistribution(WIDTHS),
    }
    frozen = []
    for number, (depth, skip, width) in enumerate(trials):
        s = spec(depth=depth, skip=skip, width=width)
        acc = 0.5 + 0.1 * WIDTHS.index(width)
        store.record_run(
            run(STUDY, number, arch_id=s.arch_id, val_accuracy=acc, params=1000 * width, flops=10_000 * width),
            spec=s, input_size=(32, 32),
        )
        frozen.append(optuna.trial.create_trial(
            params={"depth": depth, "skip": skip, "width": width}, distributions=distributions, value=acc,
        ))
    if st is not None:
        st.add_trials(frozen)
    return store


def _grid(n: int, depths: tuple[int, ...]) -> list[tuple[int, str, int]]:
    """`n` trials crossing width (fastest), depth and skip, so that none predicts another."""
    skips = ("identity", "none")
    return [(depths[(i // 3) % len(depths)], skips[(i // (3 * len(depths))) % 2], WIDTHS[i % 3])
            for i in range(n)]


def _json_text(html_text: str) -> str:
    """`html_text` with the `\\uXXXX` escapes of plotly's inline JSON (`<`, `>`, `/`, `&`) undone."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), html_text)


# -- plots adapt to the data ---------------------------------------------------------------------
def test_a_study_with_one_depth_draws_one_bar_per_skip_type_and_no_line(tmp_path):
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", _grid(6, depths=(3,)), optuna_study=False)
    data = collect(store, STUDY)

    plan = depth_plan(data)
    assert plan["kind"] == "bars" and len(plan["depths"]) == 1
    assert set(plan["groups"]) == {"identity", "none"}
    assert all(g["n"] == 3 for g in plan["groups"].values())

    ax = fig_depth(data).axes[0]
    assert len(ax.patches) == 2  # two bars
    assert ax.get_lines() == []  # nothing joins points
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].startswith("identity") and labels[1].startswith("none")
    assert str(plan["depths"][0]) in ax.get_xlabel()


def test_means_are_joined_only_where_each_holds_several_trials_and_depth_ticks_are_integers(tmp_path):
    # blocks per stage 1 and 2 hold two trials per skip type, 4 a single one each
    trials = [(1, "identity", 8), (1, "identity", 16), (2, "identity", 8), (2, "identity", 32),
              (4, "identity", 16), (1, "none", 8), (1, "none", 16), (4, "none", 32)]
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", trials, optuna_study=False)
    data = collect(store, STUDY)
    plan = depth_plan(data)
    assert plan["kind"] == "by_depth" and len(plan["depths"]) == 3

    ident, none = plan["groups"]["identity"], plan["groups"]["none"]
    shallow, middle, deep = plan["depths"]
    assert [d for d, _ in ident["line"]] == [shallow, middle]  # the single-trial depth is left out
    assert none["line"] == []  # one mean of two trials: a point, no line

    ax = fig_depth(data).axes[0]
    lines = ax.get_lines()
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [shallow, middle]
    assert list(ax.get_xticks()) == plan["depths"]


def test_no_line_when_every_depth_has_a_single_trial(tmp_path):
    trials = [(1, "identity", 8), (2, "identity", 16), (3, "identity", 32)]
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", trials, optuna_study=False)
    data = collect(store, STUDY)
    assert depth_plan(data)["groups"]["identity"]["line"] == []
    assert fig_depth(data).axes[0].get_lines() == []


def test_history_ticks_trial_numbers_as_integers(tmp_path):
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", _grid(3, depths=(1,)), optuna_study=False)
    ax = fig_history(collect(store, STUDY)).axes[0]
    assert list(ax.get_xticks()) == [0, 1, 2]


# -- importance ---------------------------------------------------------------------------------
def test_importance_is_left_out_of_a_small_study_with_the_reason(tmp_path):
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", _grid(3, depths=(1, 2)))
    data = collect(store, STUDY)
    imp = data["importance"]
    assert imp["values"] == {} and imp["trials"] == 3
    assert imp["note"] == (f"parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; "
                           "this study has 3")
    text = render_html(data)
    assert imp["note"] in text
    assert 'alt="Parameter importance"' not in text


def test_importance_is_drawn_from_enough_trials_and_ranks_the_parameter_that_matters(tmp_path):
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", _grid(MIN_IMPORTANCE_TRIALS + 4, depths=(1, 2)))
    data = collect(store, STUDY)
    imp = data["importance"]
    assert imp["note"] is None and imp["trials"] == MIN_IMPORTANCE_TRIALS + 4
    assert set(imp["values"]) <= {"depth", "skip", "width"}
    assert max(imp["values"], key=imp["values"].get) == "width"  # accuracy depends on width only
    text = render_html(data)
    assert 'alt="Parameter importance"' in text
    assert f"computed from {MIN_IMPORTANCE_TRIALS + 4} complete feasible trials" in text


# -- the interactive version ----------------------------------------------------------------------
def test_interactive_report_is_one_offline_file_holding_the_trials(tmp_path):
    pytest.importorskip("plotly")
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", _grid(MIN_IMPORTANCE_TRIALS, depths=(3,)))
    out = tmp_path / "out" / "report.html"
    data = analyze(store, STUDY, out)

    page = interactive_path(out)
    assert data["interactive"] == {"path": str(page), "note": None}
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.interactive.html"]
    raw = page.read_text()
    text = _json_text(raw)
    # offline: every script is inline, nothing is linked in
    assert not re.search(r"<script[^>]*\bsrc\s*=", raw, re.I)
    assert not re.search(r"<link\b", raw, re.I)
    assert "Plotly.newPlot" in raw and len(raw) > 1_000_000  # plotly.js itself is in the file
    assert text.count("Plotly.newPlot(") >= 4  # history, importance, cost, depth
    # the trial data, with the architecture in the hover text
    summary = data["cost"]["summary"][7]
    assert "trial 7<br>" in text and summary in text
    for trial in data["history"]["trial"]:
        assert f"trial {trial}<br>" in text
    # the static report stays as it was, and links to the interactive one by a relative name
    report = out.read_text()
    assert 'href="report.interactive.html"' in report and "<script" not in report.lower()


def test_without_plotly_the_report_says_so_in_one_line_and_writes_only_itself(tmp_path, monkeypatch):
    for name in ("plotly", "plotly.io", "plotly.graph_objects", "plotly.subplots"):
        monkeypatch.setitem(sys.modules, name, None)  # `import plotly...` now raises ImportError
    store = make_study(f"sqlite:///{tmp_path / 'nas.db'}", _grid(3, depths=(1,)), optuna_study=False)
    out = tmp_path / "report.html"
    data = analyze(store, STUDY, out)
    assert data["interactive"]["path"] is None
    assert "plotly is not installed" in data["interactive"]["note"]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".html"] == ["report.html"]
    assert data["interactive"]["note"] in out.read_text()
