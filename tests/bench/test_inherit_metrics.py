"""The pure figures of `bench.inherit` on hand-built histories: no Ray, no training, no database.

Every history is a list of dicts in the shape `bench.inherit._history` returns (in the order
the runs finished); every seed dict is in the shape `bench.inherit.one_seed` returns.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import inherit


def _run(id: int, compute: float, accuracy: float | None = None, *, epochs: int = 8,
         trained: bool = True, inherited_from: int | None = None,
         start_gap: float | None = None, state: str | None = None) -> dict[str, Any]:
    """One row of `_history`."""
    extra: dict[str, Any] = {}
    if inherited_from is not None:
        extra["inherit"] = {"parent": inherited_from}
        if start_gap is not None:
            extra["inherit"]["start_gap"] = start_gap
    return {"trial": id, "state": state or ("complete" if accuracy is not None else "pruned"),
            "finished": float(id), "accuracy": accuracy, "compute": compute,
            "epochs": epochs if trained else 0, "trained": trained,
            "inherited_from": inherited_from, "id": id, "extra": extra}


def _ids(history: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in history]


# -- _cut ----------------------------------------------------------------------------------
def test_cut_stops_at_the_run_that_passes_the_budget():
    history = [_run(1, 10, 0.5), _run(2, 20, 0.6), _run(3, 30, 0.7), _run(4, 1, 0.9)]
    # 10 + 20 = 30 <= 35, + 30 = 60 > 35: run 3 is out, and so is run 4 although it would fit
    # (the budget was passed, later runs finished after it).
    assert _ids(inherit._cut(history, 35)) == [1, 2]
    # Exactly the budget is within it (and a hair over, by float error, too).
    assert _ids(inherit._cut(history, 60)) == [1, 2, 3]
    assert _ids(inherit._cut(history, 60 - 1e-12)) == [1, 2, 3]
    assert _ids(inherit._cut(history, 59)) == [1, 2]
    assert _ids(inherit._cut(history, 1000)) == [1, 2, 3, 4]
    # A budget smaller than the first run keeps nothing.
    assert inherit._cut(history, 9) == []


def test_cut_of_free_runs_and_of_an_empty_history():
    assert inherit._cut([], 100) == []
    # Answers from the duplicate cache cost nothing: they stay while the budget is not passed,
    # even a zero budget.
    history = [_run(1, 0, 0.4, trained=False), _run(2, 0, 0.5, trained=False), _run(3, 5, 0.6),
               _run(4, 0, 0.7, trained=False)]
    assert _ids(inherit._cut(history, 0)) == [1, 2]
    assert _ids(inherit._cut(history, 5)) == [1, 2, 3, 4]


# -- _best ---------------------------------------------------------------------------------
def test_best_skips_pruned_runs_and_is_none_without_an_accuracy():
    assert inherit._best([_run(1, 1, 0.61), _run(2, 1, None), _run(3, 1, 0.83),
                          _run(4, 1, 0.72)]) == 0.83
    assert inherit._best([_run(1, 1, None), _run(2, 1, None)]) is None
    assert inherit._best([]) is None
    # 0.0 is an accuracy, not a missing one.
    assert inherit._best([_run(1, 1, 0.0), _run(2, 1, None)]) == 0.0


# -- _compute_to_reach ---------------------------------------------------------------------
def test_compute_to_reach_counts_the_compute_up_to_and_including_the_run_that_reached():
    history = [_run(1, 10, 0.5), _run(2, 20, None), _run(3, 30, 0.8), _run(4, 40, 0.9)]
    # The pruned run 2 has no accuracy but its compute is spent.
    assert inherit._compute_to_reach(history, 0.8) == 60
    assert inherit._compute_to_reach(history, 0.75) == 60
    assert inherit._compute_to_reach(history, 0.5) == 10
    assert inherit._compute_to_reach(history, 0.9) == 100
    # Reaching is "at least", with a float tolerance.
    assert inherit._compute_to_reach(history, 0.8 + 1e-13) == 60
    assert inherit._compute_to_reach(history, 0.8 + 1e-6) == 100


def test_compute_to_reach_never():
    history = [_run(1, 10, 0.5), _run(2, 20, None), _run(3, 30, 0.8)]
    assert inherit._compute_to_reach(history, 0.81) is None  # never reached: None, not 60
    assert inherit._compute_to_reach(history, None) is None  # no target (scratch found nothing)
    assert inherit._compute_to_reach([], 0.5) is None
    assert inherit._compute_to_reach([_run(1, 10, None)], 0.0) is None


def test_figures_of_one_seed_composed_as_one_seed_does():
    """The arithmetic of `one_seed`, on its helpers: budget, cut, target, reach, half."""
    scratch = [_run(1, 10, 0.50), _run(2, 10, 0.70), _run(3, 10, 0.60), _run(4, 10, 0.90)]
    inh = [_run(11, 10, 0.50), _run(12, 4, 0.80, epochs=1, inherited_from=11),
           _run(13, 4, 0.92, epochs=1, inherited_from=12), _run(14, 30, 0.95)]
    budget = sum(r["compute"] for r in scratch)
    assert budget == 40
    cut = inherit._cut(inh, budget)
    assert _ids(cut) == [11, 12, 13]  # 18 spent; run 14 would take it to 48
    target = inherit._best(scratch)
    assert target == 0.90
    reach, own = inherit._compute_to_reach(cut, target), inherit._compute_to_reach(scratch, target)
    assert (reach, own) == (18, 40)
    assert reach / own == pytest.approx(0.45)  # within the goal of 0.5
    half = inherit._cut(inh, budget * inherit.GOAL)
    assert _ids(half) == [11, 12, 13] and inherit._best(half) == 0.92
    assert inherit._best(inherit._cut(inh, 10)) == 0.50


# -- _children -----------------------------------------------------------------------------
def test_children_counts_parents_epochs_above_below_tie_and_gaps():
    history = [
        _run(1, 8, 0.70),                                            # root
        _run(2, 8, 0.60),                                            # root
        _run(3, 2, None, epochs=1),                                  # pruned root
        _run(4, 2, 0.75, epochs=2, inherited_from=1, start_gap=1e-6),  # above its parent
        _run(5, 2, 0.55, epochs=2, inherited_from=2, start_gap=3e-5),  # below
        _run(6, 2, 0.70, epochs=2, inherited_from=1),                # tie, no gap recorded
        _run(7, 1, 0.90, epochs=1, inherited_from=3, start_gap=0.0),   # parent pruned: uncounted
        _run(8, 1, None, epochs=1, inherited_from=4, start_gap=2e-6),  # child pruned: uncounted
        _run(9, 0, 0.75, trained=False),                             # a cache answer
    ]
    k = inherit._children(history, recipe_epochs=3)
    assert k["trained"] == 8  # the cache answer is not trained
    assert k["with_parent"] == 5
    assert k["share"] == pytest.approx(5 / 8)
    assert k["child_epochs"] == 2  # median of [2, 2, 2, 1, 1]
    assert k["recipe_epochs"] == 3
    assert (k["above_parent"], k["below_parent"], k["tie"]) == (1, 1, 1)
    assert k["max_start_gap"] == pytest.approx(3e-5)


def test_children_median_epochs_of_an_even_count_and_a_parent_outside_the_history():
    history = [_run(1, 8, 0.70),
               _run(2, 1, 0.80, epochs=1, inherited_from=1),
               _run(3, 4, 0.60, epochs=4, inherited_from=99)]  # parent not in this history
    k = inherit._children(history, recipe_epochs=8)
    assert k["with_parent"] == 2 and k["trained"] == 3
    assert k["child_epochs"] == 2.5  # median of [1, 4]
    assert (k["above_parent"], k["below_parent"], k["tie"]) == (1, 0, 0)
    assert k["max_start_gap"] is None  # no child recorded a gap


def test_children_without_children_and_of_an_empty_history():
    k = inherit._children([_run(1, 8, 0.7), _run(2, 8, 0.8)], recipe_epochs=8)
    assert k == {"trained": 2, "with_parent": 0, "share": 0.0, "child_epochs": None,
                 "recipe_epochs": 8, "above_parent": 0, "below_parent": 0, "tie": 0,
                 "max_start_gap": None}
    k = inherit._children([], recipe_epochs=3)
    assert k["trained"] == 0 and k["share"] == 0.0 and k["child_epochs"] is None


# -- _median -------------------------------------------------------------------------------
def test_median_of_values():
    assert inherit._median([]) is None
    assert inherit._median([0.7]) == 0.7
    assert inherit._median([0.3, 0.1, 0.2]) == 0.2
    assert inherit._median([0.4, 0.1, 0.3, 0.2]) == pytest.approx(0.25)


def test_median_counts_never_as_worse_than_any_value():
    """For a ratio or a compute (lower is better) None, "never", sorts above every value."""
    assert inherit._median([None]) is None
    assert inherit._median([0.2, None, 0.4]) == 0.4  # ordered [0.2, 0.4, never]
    assert inherit._median([None, 5.0, 0.1]) == 5.0
    assert inherit._median([0.2, None, None]) is None  # most seeds never reached it
    assert inherit._median([0.1, 0.3, 0.2, None]) == pytest.approx(0.25)  # [.1, .2 | .3, never]
    assert inherit._median([0.1, 0.2, None, None]) is None  # the middle pair has a never
    assert inherit._median([0.3, None]) is None


# -- summarise -----------------------------------------------------------------------------
def _seed(seed: int, scratch_best: float, best: float, at_half: float | None,
          ratio: float | None, to_reach: float | None, children: dict[str, Any]) -> dict[str, Any]:
    """A seed in the shape `one_seed` returns."""
    return {"seed": seed, "budget": 100.0,
            "scratch": {"best": scratch_best, "trained": 10, "compute_to_own_best": 0.8,
                        "wall_s": 1.0},
            "inherit": {"best": best, "best_at_half": at_half, "compute_used": 1.0,
                        "compute_to_reach": to_reach, "ratio_to_scratch": ratio, "trained": 12,
                        "children": children, "wall_s": 1.0}}


def _kids(share: float, child_epochs: float | None, above: int, below: int, tie: int,
          gap: float | None) -> dict[str, Any]:
    return {"trained": 10, "with_parent": round(share * 10), "share": share,
            "child_epochs": child_epochs, "recipe_epochs": 3, "above_parent": above,
            "below_parent": below, "tie": tie, "max_start_gap": gap}


def test_summarise_three_seeds():
    seeds = [
        _seed(0, 0.90, 0.92, 0.90, 0.40, 0.30, _kids(0.5, 1, 2, 1, 0, 1e-6)),
        _seed(1, 0.80, 0.85, 0.79, None, None, _kids(0.2, 2, 0, 3, 1, None)),
        _seed(2, 0.70, 0.60, 0.71, 0.80, 0.70, _kids(0.0, None, 0, 0, 0, None)),
    ]
    s = inherit.summarise(seeds)
    assert s["scratch_best"] == 0.80
    assert s["inherit_best"] == 0.85
    assert s["inherit_best_at_half"] == 0.79  # median of [0.90, 0.79, 0.71]
    assert s["ratio_median"] == 0.80  # [0.40, 0.80, never]
    assert s["reached"] == 2
    # At half the budget: seed 0 has 0.90 >= 0.90 (a tie counts), seed 1 0.79 < 0.80,
    # seed 2 0.71 >= 0.70.
    assert s["best_within_half"] == 2
    assert s["compute_to_reach_median"] == 0.70  # [0.30, 0.70, never]
    assert s["share_with_parent"] == pytest.approx(0.7 / 3)
    assert s["child_epochs_median"] == 1.5  # seed 2 had no children: median of [1, 2]
    assert (s["above_parent"], s["below_parent"], s["tie"]) == (2, 4, 1)
    assert s["max_start_gap"] == 1e-6


def test_summarise_two_seeds_never_reached_and_nothing_at_half():
    seeds = [
        _seed(0, 0.90, 0.88, None, None, None, _kids(0.0, None, 0, 0, 0, None)),
        _seed(1, 0.70, 0.95, 0.95, 0.25, 0.20, _kids(0.4, 3, 1, 0, 2, 4e-5)),
    ]
    s = inherit.summarise(seeds)
    assert s["scratch_best"] == pytest.approx(0.80)
    assert s["inherit_best"] == pytest.approx(0.915)
    assert s["ratio_median"] is None and s["compute_to_reach_median"] is None
    assert s["reached"] == 1
    assert s["best_within_half"] == 1  # seed 0 had no accuracy at half: not within
    assert s["inherit_best_at_half"] is None  # [nothing, 0.95]: the middle pair has a nothing
    assert s["share_with_parent"] == pytest.approx(0.2)
    assert s["child_epochs_median"] == 3
    assert (s["above_parent"], s["below_parent"], s["tie"]) == (1, 0, 2)
    assert s["max_start_gap"] == 4e-5


def test_summarise_best_at_half_counts_nothing_at_half_as_the_worst():
    kids = _kids(0.0, None, 0, 0, 0, None)
    seeds = [_seed(0, 0.9, 0.9, 0.50, 1.0, 1.0, kids),
             _seed(1, 0.9, 0.9, 0.90, 1.0, 1.0, kids),
             _seed(2, 0.9, 0.9, None, 1.0, 1.0, kids)]
    # An accuracy: nothing at half the budget is the worst, so [nothing, 0.50, 0.90] -> 0.50.
    assert inherit.summarise(seeds)["inherit_best_at_half"] == 0.50


def test_summarise_a_seed_without_any_best_is_the_worst_and_does_not_crash():
    kids = _kids(0.0, None, 0, 0, 0, None)
    seeds = [_seed(0, 0.9, None, None, None, None, kids),
             _seed(1, 0.8, 0.95, 0.9, 1.0, 1.0, kids),
             _seed(2, 0.7, 0.85, 0.8, 1.0, 1.0, kids)]
    s = inherit.summarise(seeds)
    assert s["scratch_best"] == 0.8 and s["inherit_best"] == 0.85
