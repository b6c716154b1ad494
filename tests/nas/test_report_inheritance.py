"""`nas analyze` shows the family tree of a study searched with `--inherit`: which trial started
from which parent's weights (in this study or another), how it ended against that parent, and
the epochs it trained; a study where no trial inherited gets one line. Runs are written straight
into a store (no search, no Ray, no Optuna study): each test takes well under a second."""

from __future__ import annotations

import html
import io
import re

import pytest

from db import Store
from nas.analyze import analyze, collect
from nas.family import inherited_labels
from nas.report_family import NO_INHERITANCE, fig_inheritance, inheritance_text
from nas.report_render import render_html
from nas.store_commands import print_trials
from tests.db.helpers import run, spec

STUDY = "fam"
OTHER = "elsewhere"
FULL, SHORT = 8, 2  # epochs of the recipe, and of a child


def _record(store: Store, study: str, number: int, s, acc: float | None, *, state: str = "complete",
            fidelity: int = FULL, parent: int | None = None, extra: dict | None = None) -> int:
    return store.record_run(
        run(study, number, arch_id=s.arch_id, val_accuracy=acc, fidelity=fidelity, state=state,
            inherited_from=parent, extra=extra or {}, params=1000, flops=10_000),
        spec=s, input_size=(32, 32),
    )


@pytest.fixture
def family(tmp_path):
    """Trials 0, 1, 7 trained from scratch; 2 <- 0 (deeper, morph recorded), 3 <- 1 (wider, no
    `extra`), 4 <- trial 3 of another study (ties), 5 <- 2 (a grandchild), 6 <- 0 (pruned)."""
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    outside = _record(store, OTHER, 3, spec(depth=1, width=32), 0.70)
    ids = {}
    ids[0] = _record(store, STUDY, 0, spec(depth=1, width=8), 0.60)
    ids[1] = _record(store, STUDY, 1, spec(depth=1, width=16), 0.65)
    morph = ["stages[0]: 1 -> 2 blocks (new blocks: last BN zeroed)"]
    ids[2] = _record(store, STUDY, 2, spec(depth=2, width=8), 0.68, fidelity=SHORT, parent=ids[0],
                     extra={"inherit": {"parent_trial": 0, "parent_study": STUDY, "morph": morph,
                                        "epochs": SHORT}})
    ids[3] = _record(store, STUDY, 3, spec(depth=1, width=32), 0.62, fidelity=SHORT, parent=ids[1])
    ids[4] = _record(store, STUDY, 4, spec(depth=2, width=32), 0.70, fidelity=SHORT, parent=outside,
                     extra={"inherit": {"parent_study": OTHER}})
    ids[5] = _record(store, STUDY, 5, spec(depth=3, width=8), 0.71, fidelity=3, parent=ids[2])
    ids[6] = _record(store, STUDY, 6, spec(depth=2, width=16), None, state="pruned", fidelity=1,
                     parent=ids[0])
    ids[7] = _record(store, STUDY, 7, spec(depth=3, width=16), 0.50)
    return {"store": store, "ids": ids, "outside": outside}


def _plain(store: Store, study: str) -> Store:
    store.record_run(run(study, 0, arch_id=spec(width=8).arch_id, val_accuracy=0.6), spec=spec(width=8),
                     input_size=(32, 32))
    store.record_run(run(study, 1, arch_id=spec(width=16).arch_id, val_accuracy=0.7), spec=spec(width=16),
                     input_size=(32, 32))
    return store


# -- the data ----------------------------------------------------------------------------------
def test_each_child_is_paired_with_its_parent_in_this_study_or_another(family):
    inh = collect(family["store"], STUDY)["inheritance"]
    pairs = [(e["trial"], e["parent"], e["state"]) for e in inh["edges"]]
    assert pairs == [(2, "#0", "complete"), (3, "#1", "complete"), (4, f"{OTHER}#3", "complete"),
                     (5, "#2", "complete"), (6, "#0", "pruned")]
    by_trial = {e["trial"]: e for e in inh["edges"]}
    assert by_trial[4]["parent_run"] == family["outside"] and not by_trial[4]["same_study"]
    assert (by_trial[4]["parent_study"], by_trial[4]["parent_trial"]) == (OTHER, 3)
    assert by_trial[2]["parent_run"] == family["ids"][0] and by_trial[2]["same_study"]
    assert by_trial[2]["gain"] == pytest.approx(0.08) and by_trial[2]["outcome"] == "above"
    assert by_trial[3]["outcome"] == "below" and by_trial[4]["outcome"] == "tie"
    assert by_trial[5]["outcome"] == "above"  # 0.71 against its parent trial 2's 0.68
    assert by_trial[6]["gain"] is None and by_trial[6]["outcome"] is None
    assert (by_trial[2]["epochs"], by_trial[2]["parent_epochs"]) == (SHORT, FULL)


def test_the_morph_is_what_extra_recorded_else_worked_out_from_both_architectures(family):
    by_trial = {e["trial"]: e for e in collect(family["store"], STUDY)["inheritance"]["edges"]}
    assert by_trial[2]["morph"] == ["stages[0]: 1 -> 2 blocks (new blocks: last BN zeroed)"]
    assert "stages[0]: 16 -> 32 channels" in by_trial[3]["morph"]  # no `extra`: from the specs


def test_the_summary_counts_share_outcomes_gain_and_epochs(family):
    s = collect(family["store"], STUDY)["inheritance"]["summary"]
    # trained complete: 0, 1, 2, 3, 4, 5, 7; of which 2, 3, 4, 5 inherited
    assert (s["trained"], s["inherited"]) == (7, 4)
    assert s["share"] == pytest.approx(4 / 7)
    assert (s["above"], s["below"], s["tie"], s["compared"]) == (2, 1, 1, 4)
    assert s["other_study"] == 1 and s["not_complete"] == 1
    assert s["median_gain"] == pytest.approx(0.015)  # of +0.08, -0.03, 0, +0.03
    assert (s["median_epochs"], s["full_epochs"]) == (SHORT, FULL)


def test_no_trial_inherited_gives_empty_data(tmp_path):
    inh = collect(_plain(Store(f"sqlite:///{tmp_path / 'nas.db'}"), "flat"), "flat")["inheritance"]
    assert inh["edges"] == []
    assert (inh["summary"]["trained"], inh["summary"]["inherited"], inh["summary"]["share"]) == (2, 0, 0.0)


def test_a_parent_gone_from_the_store_is_named_from_extra_or_by_its_run_id(family):
    # Deleting a parent sets `inherited_from` to NULL (foreign key); a dangling id is what a
    # database without that constraint would hold.
    store = family["store"]
    child = store.run_for_trial(STUDY, 4)
    child.inherited_from = 999_999
    child.extra = {"inherit": {"parent_study": OTHER, "parent_trial": 3}}
    assert inherited_labels(store, [child], STUDY) == {child.id: f"{OTHER}#3"}
    child.extra = {"inherit": {"parent_study": OTHER}}  # which trial: not recorded
    assert inherited_labels(store, [child], STUDY) == {child.id: "run 999999"}
    child.extra = {}
    assert inherited_labels(store, [child], STUDY) == {child.id: "run 999999"}


def test_a_child_whose_parent_s_study_was_deleted_stays_in_the_family_tree(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    outside = _record(store, OTHER, 3, spec(depth=1, width=32), 0.70)
    _record(store, STUDY, 0, spec(depth=1, width=8), 0.60)
    _record(store, STUDY, 1, spec(depth=2, width=32), 0.74, fidelity=SHORT, parent=outside,
            extra={"inherit": {"parent_run": outside, "parent_study": OTHER, "parent_trial": 3,
                               "parent_val_accuracy": 0.70}})
    store.delete_study(OTHER, force=True)
    assert store.run_for_trial(STUDY, 1).inherited_from is None  # the link went with the row
    inh = collect(store, STUDY)["inheritance"]
    [edge] = inh["edges"]
    assert (edge["trial"], edge["parent"], edge["parent_run"]) == (1, f"{OTHER}#3", None)
    assert edge["gain"] == pytest.approx(0.04) and edge["outcome"] == "above"
    assert inh["summary"]["inherited"] == 1


# -- the report --------------------------------------------------------------------------------
def test_the_report_has_the_family_tree_section_with_figure_summary_and_table(family, tmp_path):
    out = tmp_path / "report.html"
    data = analyze(family["store"], STUDY, out, png_dir=tmp_path / "png", interactive=False)
    text = out.read_text()
    assert '<h2 id="inheritance">Family tree (inherited weights)</h2>' in text
    assert 'alt="Family tree (inherited weights)"' in text
    assert (tmp_path / "png" / "inheritance.png").is_file()
    line = inheritance_text(data)
    assert line.startswith("4 of 7 trained trials (57%) started from a parent's weights, 1 of them "
                           "from another study; 2 ended above their parent, 1 below, 1 tied; "
                           "median gain +0.0150")
    assert f"median of {SHORT} epochs vs {FULL} for trials without a parent" in line
    assert html.escape(line) in text
    rows = re.findall(r"<tr><td>(\d+)[^<]*</td><td>([^<]+)</td>", text.split('id="inheritance"')[1])
    assert rows[:5] == [("2", "#0"), ("3", "#1"), ("4", f"{OTHER}#3"), ("5", "#2"), ("6", "#0")]
    assert "6 (pruned)" in text and "+0.0800" in text and "-0.0300" in text


def test_the_family_tree_figure_draws_one_arrow_per_compared_child(family):
    data = collect(family["store"], STUDY)
    ax = fig_inheritance(data).axes[0]
    arrows = [c for c in ax.texts if getattr(c, "arrow_patch", None) is not None]
    assert len(arrows) == 4  # the pruned child has no accuracy: no arrow
    assert any(t.get_text() == f"{OTHER}#3" for t in ax.texts)  # the outside parent is labelled
    assert "other\nstudy" in [t.get_text() for t in ax.get_xticklabels()]


def test_a_study_where_no_trial_inherited_says_so_in_one_line_without_a_figure(tmp_path):
    store = _plain(Store(f"sqlite:///{tmp_path / 'nas.db'}"), "flat")
    data = collect(store, "flat")
    assert inheritance_text(data) == NO_INHERITANCE
    text = render_html(data)
    section = text.split('<h2 id="inheritance">')[1].split("<h2")[0]
    assert section.count(html.escape(NO_INHERITANCE)) == 1
    assert "<img" not in section and "<table" not in section


def test_the_interactive_report_draws_the_family_tree(family, tmp_path):
    pytest.importorskip("plotly")
    from nas.report_interactive import charts

    data = collect(family["store"], STUDY)
    by_name = {name: (fig, note) for name, _, fig, note in charts(data)}
    fig, note = by_name["inheritance"]
    assert note == inheritance_text(data)
    assert len([a for a in fig.layout.annotations if a.showarrow]) == 4


# -- nas trials ---------------------------------------------------------------------------------
def test_inherited_labels_name_the_parent_as_nas_trials_shows_it(family):
    store, ids = family["store"], family["ids"]
    labels = inherited_labels(store, store.runs(STUDY), STUDY)
    assert labels == {ids[2]: "#0", ids[3]: "#1", ids[4]: f"{OTHER}#3", ids[5]: "#2", ids[6]: "#0"}
    assert inherited_labels(store, store.runs(OTHER), OTHER) == {}


def _trials_table(store: Store, study: str) -> list[str]:
    out = io.StringIO()
    print_trials(store, study, file=out)
    return out.getvalue().splitlines()


def test_nas_trials_shows_where_an_inherited_trial_came_from_only_when_one_did(family, tmp_path):
    lines = _trials_table(family["store"], STUDY)
    header = next(line for line in lines if "trial" in line and "state" in line)
    assert re.search(r"\bfrom\b", header)
    row4 = next(line for line in lines if re.match(r"^\W*4\s", line))
    assert f"{OTHER}#3" in row4
    row2 = next(line for line in lines if re.match(r"^\W*2\s", line))
    assert "#0" in row2

    flat = _trials_table(_plain(Store(f"sqlite:///{tmp_path / 'flat.db'}"), "flat"), "flat")
    header = next(line for line in flat if "trial" in line and "state" in line)
    assert not re.search(r"\bfrom\b", header)
