"""Grow, don't restart: the same search with and without `--inherit`, on real training.

Each seed runs two searches of the same space, sampler and recipe, each in a fresh database
(so neither answers the other's candidates) on one local Ray with two workers:
- scratch: `nas search` as it is by default, `trials` candidates from random weights;
- inherit: the same with `--inherit`; a candidate that grows from a trained run starts from
  its weights and trains `--inherit-epochs` epochs. It runs until it has spent the scratch
  search's compute (twice its trials at most), and its history is cut there.

Compute is training work, counted from the store: for every trained run, epochs trained times
its multiply-adds per image (pruned runs count the epochs they trained; answers from the
duplicate cache cost nothing). It does not move with the load of the machine, and it is
what a GPU-hour budget pays for. Runs are taken in the order they finished. Per seed:
- best: the best validation accuracy each search reached within the budget;
- compute to reach: the compute each search had spent when its best first reached the
  scratch search's final best; the ratio inherit / scratch is the figure (goal <= 0.5;
  "never" if the inherit search did not reach it within the budget). The two searches of a
  seed share the sampler's seed, so their first (random) proposals are the same: where the
  scratch search found its best among those, the ratio is 1 whatever inheritance does;
- best within half: whether the inherit search's best after half the budget is at least the
  scratch search's final best (the goal read against the whole budget);
- inherited: the share of trained candidates that had a parent, their epochs against the
  recipe's, how many ended above their parent, and the largest start gap (how exactly the
  child computed its parent's function before training).

    python -m bench.inherit [--smoke | --quick] [--seeds N] [--trials N] [--setups default,grow]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

from bench import common

SPACE = "resnet"  # the default space: 8x8 digits, basic blocks, 3 stages
RECIPE: dict[str, Any] = {"dataset": "digits", "epochs": 8}
# `default`: what a user gets (the default space, recipe, sampler and pruner) with and without
# `--inherit`. `grow`: where growing has room: a deeper space, a short recipe whose networks
# are not trained out, and evolution's `grow` mutation, so children have parents; no pruner
# (pruned trials neither join evolution's population nor keep weights to be parents).
SETUPS: dict[str, dict[str, Any]] = {
    "default": {"space": SPACE, "epochs": 8, "inherit_epochs": None, "sampler": "tpe",
                "sampler_options": None, "pruner": None},
    "grow": {"space": str(common.BENCH_DIR / "data" / "resnet-deep.yaml"), "epochs": 3,
             "inherit_epochs": 1, "sampler": "evolution",
             "sampler_options": "population=8,sample_size=3,mutation=grow", "pruner": "none"},
}
FULL = {"seeds": 5, "trials": 24}
QUICK = {"seeds": 2, "trials": 16}
SMOKE = {"seeds": 1, "trials": 3}
GOAL = 0.5  # share of the scratch search's compute to reach its final best


def _history(url: str, study: str) -> list[dict[str, Any]]:
    """Trained and answered runs of `study` in the order they finished, with their compute."""
    from db import Store

    store = Store(url)
    try:
        out = []
        for run in store.runs(study):
            if run.state not in ("complete", "pruned") or run.finished is None:
                continue
            trained = run.cached_from is None
            epochs = len(store.epochs(run.id)) if trained else 0
            out.append({"trial": run.trial_number, "state": run.state, "finished": run.finished,
                        "accuracy": run.val_accuracy if run.state == "complete" else None,
                        "compute": epochs * (run.flops or 0), "epochs": epochs,
                        "trained": trained, "inherited_from": run.inherited_from,
                        "id": run.id, "extra": run.extra})
        return sorted(out, key=lambda r: r["finished"])
    finally:
        store.close()


def _cut(history: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """The runs that finished before the cumulative compute passed `budget`."""
    out, spent = [], 0.0
    for run in history:
        if spent + run["compute"] > budget * (1 + 1e-9):
            break
        spent += run["compute"]
        out.append(run)
    return out


def _best(history: list[dict[str, Any]]) -> float | None:
    values = [r["accuracy"] for r in history if r["accuracy"] is not None]
    return max(values) if values else None


def _compute_to_reach(history: list[dict[str, Any]], target: float | None) -> float | None:
    """Compute spent when the best accuracy so far first reached `target`; None: never."""
    if target is None:
        return None
    spent = 0.0
    for run in history:
        spent += run["compute"]
        if run["accuracy"] is not None and run["accuracy"] >= target - 1e-12:
            return spent
    return None


def _children(history: list[dict[str, Any]], recipe_epochs: int) -> dict[str, Any]:
    by_id = {r["id"]: r for r in history}
    trained = [r for r in history if r["trained"]]
    kids = [r for r in trained if r["inherited_from"] is not None]
    above = below = tie = 0
    for kid in kids:
        parent = by_id.get(kid["inherited_from"])
        if parent is None or parent["accuracy"] is None or kid["accuracy"] is None:
            continue
        if kid["accuracy"] > parent["accuracy"]:
            above += 1
        elif kid["accuracy"] < parent["accuracy"]:
            below += 1
        else:
            tie += 1
    gaps = [k["extra"].get("inherit", {}).get("start_gap") for k in kids]
    gaps = [g for g in gaps if g is not None]
    return {"trained": len(trained), "with_parent": len(kids),
            "share": len(kids) / len(trained) if trained else 0.0,
            "child_epochs": statistics.median([k["epochs"] for k in kids]) if kids else None,
            "recipe_epochs": recipe_epochs, "above_parent": above, "below_parent": below,
            "tie": tie, "max_start_gap": max(gaps) if gaps else None}


def one_seed(seed: int, trials: int, inherit_epochs: int | None, sampler: str,
             sampler_options: str | None = None, recipe: dict[str, Any] | None = None,
             space: str = SPACE, pruner: str | None = None) -> dict[str, Any]:
    recipe = recipe or RECIPE
    from nas.search import run_search

    results: dict[str, Any] = {}
    for arm in ("scratch", "inherit"):
        with common.fresh_db("sqlite") as url:
            overrides = {"trials": trials, "seed": seed, "sampler": sampler,
                         "sampler_options": sampler_options, "space": space, "pruner": pruner,
                         "train": dict(recipe)}
            if arm == "inherit":
                overrides.update(inherit=True, inherit_epochs=inherit_epochs, trials=2 * trials)
            config = common.search_config(url, f"{arm}-{seed}", **overrides)
            t0 = time.perf_counter()
            run_search(config)
            wall = time.perf_counter() - t0
            results[arm] = {"history": _history(url, config.study), "wall_s": wall}
    scratch, inherit = results["scratch"]["history"], results["inherit"]["history"]
    budget = sum(r["compute"] for r in scratch)
    inherit_cut = _cut(inherit, budget)
    target = _best(scratch)
    reach = _compute_to_reach(inherit_cut, target)
    own = _compute_to_reach(scratch, target)
    half = _cut(inherit, budget * GOAL)
    return {
        "seed": seed, "budget": budget,
        "scratch": {"best": target, "trained": sum(r["trained"] for r in scratch),
                    "compute_to_own_best": own / budget if budget and own is not None else None,
                    "wall_s": results["scratch"]["wall_s"]},
        "inherit": {"best": _best(inherit_cut), "best_at_half": _best(half),
                    "compute_used": sum(r["compute"] for r in inherit_cut) / budget if budget else None,
                    "compute_to_reach": reach / budget if reach is not None and budget else None,
                    "ratio_to_scratch": reach / own if reach is not None and own else None,
                    "trained": sum(r["trained"] for r in inherit_cut),
                    "children": _children(inherit_cut, recipe["epochs"]),
                    "wall_s": results["inherit"]["wall_s"]},
    }


def _median(values: list[float | None], *, none_is: float = math.inf) -> float | None:
    """The median, with `None` (never reached) counted as worse than any value: `none_is`
    is where it sorts (+inf for compute, where less is better; -inf for an accuracy)."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: none_is if v is None else v)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    a, b = ordered[mid - 1], ordered[mid]
    return None if a is None or b is None else (a + b) / 2


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    reach = [s["inherit"]["ratio_to_scratch"] for s in seeds]
    kids = [s["inherit"]["children"] for s in seeds]
    epochs = [k["child_epochs"] for k in kids if k["child_epochs"] is not None]
    return {
        "scratch_best": _median([s["scratch"]["best"] for s in seeds], none_is=-math.inf),
        "inherit_best": _median([s["inherit"]["best"] for s in seeds], none_is=-math.inf),
        "inherit_best_at_half": _median([s["inherit"]["best_at_half"] for s in seeds],
                                        none_is=-math.inf),
        "ratio_median": _median(reach),
        "reached": sum(r is not None for r in reach),
        # The goal read the other way: the scratch search's final best within half its compute.
        "best_within_half": sum(s["inherit"]["best_at_half"] is not None
                                and s["inherit"]["best_at_half"] >= s["scratch"]["best"] - 1e-12
                                for s in seeds),
        "compute_to_reach_median": _median([s["inherit"]["compute_to_reach"] for s in seeds]),
        "share_with_parent": statistics.mean(k["share"] for k in kids),
        "child_epochs_median": statistics.median(epochs) if epochs else None,
        "above_parent": sum(k["above_parent"] for k in kids),
        "below_parent": sum(k["below_parent"] for k in kids),
        "tie": sum(k["tie"] for k in kids),
        "max_start_gap": max((k["max_start_gap"] for k in kids if k["max_start_gap"] is not None),
                             default=None),
    }


def run_setup(name: str, setup: dict[str, Any], n_seeds: int, trials: int) -> dict[str, Any]:
    """Every seed of one setup, printed as it goes, with its summary and goal."""
    recipe = {**RECIPE, "epochs": setup["epochs"]}
    common.header(f"inherit / {name}: {n_seeds} seeds x {trials} trials, space {setup['space']}, "
                  f"{recipe['epochs']} epochs (children {setup['inherit_epochs'] or 'default'}), "
                  f"sampler {setup['sampler']} {setup['sampler_options'] or ''}, pruner "
                  f"{setup['pruner'] or 'default'}")
    seeds = []
    for seed in range(n_seeds):
        s = one_seed(seed, trials, setup["inherit_epochs"], setup["sampler"],
                     setup["sampler_options"], recipe, setup["space"], setup["pruner"])
        seeds.append(s)
        i, k = s["inherit"], s["inherit"]["children"]
        reach = "never" if i["ratio_to_scratch"] is None else f"{i['ratio_to_scratch']:.2f}x"
        print(f"   seed {seed}: scratch best {_num(s['scratch']['best'])} (reached at "
              f"{_num(s['scratch']['compute_to_own_best'], 2)} of the budget) | inherit best "
              f"{_num(i['best'])} (at half the budget {_num(i['best_at_half'])}), reached "
              f"the scratch best with {reach} the scratch search's compute | "
              f"{k['with_parent']}/{k['trained']} with a parent, {k['child_epochs']} epochs "
              f"vs {k['recipe_epochs']}", flush=True)
    summary = summarise(seeds)
    reach = summary["ratio_median"]
    met = reach is not None and reach <= GOAL
    print(f"   median compute to reach the scratch best, inherit / scratch: "
          f"{'never' if reach is None else f'{reach:.2f}'} (goal <= {GOAL}: "
          f"{'met' if met else 'NOT met'}); {summary['reached']}/{n_seeds} seeds reached it")
    return {**setup, "recipe": recipe, "per_seed": seeds, "summary": summary,
            "goal_met": met}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = common.run_id_of(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.inherit", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--trials", type=int)
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"from {', '.join(SETUPS)}")
    ap.add_argument("--epochs", type=int, help="every setup's recipe epochs (smoke runs)")
    args = ap.parse_args(argv)
    common.quiet()
    size = SMOKE if args.smoke else QUICK if args.quick else FULL
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    n_seeds, trials = args.seeds or size["seeds"], args.trials or size["trials"]
    names = [n.strip() for n in args.setups.split(",") if n.strip()]
    bad = [n for n in names if n not in SETUPS]
    if bad:
        ap.error(f"unknown setup(s) {bad}; allowed: {', '.join(SETUPS)}")
    started = time.time()
    common.start_ray(2)
    try:
        setups = {}
        for name in names:
            setup = dict(SETUPS[name])
            if args.epochs:
                setup.update(epochs=args.epochs, inherit_epochs=None)
            setups[name] = run_setup(name, setup, n_seeds, trials)
    finally:
        common.stop_ray()
    data = {"mode": mode, "seeds": n_seeds, "trials": trials, "setups": setups,
            "goals": {f"{name}_same_best_with_half_the_compute": s["goal_met"]
                      for name, s in setups.items()}}
    path = common.write_result("inherit", data, started=started, argv=argv)
    print(f"   -> {path}")
    return data


if __name__ == "__main__":
    main()
