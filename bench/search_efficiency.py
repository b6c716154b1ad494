"""Search efficiency: best validation accuracy against summed training compute.

Digits, the `resnet-cifar` space, the bench recipe (`common.RECIPE`), 2 trials at a time and
the same compute budget for every method: summed seconds inside `run_trial` (resnas'
`--max-compute-hours`; for Ray Tune a searcher that stops suggesting at the same sum). Trials
in flight when the budget is reached finish, for every method alike.

- resnas: the default (TPE + ASHA + duplicate answers + constraints);
- random: resnas with `sampler=random, pruner=none`;
- ray_tune: `Tuner` + `OptunaSearch` (define-by-run over the same `SearchSpace.suggest`,
  the same TPE settings as resnas) + `ASHAScheduler` (grace 1, reduction 3, like resnas),
  the trainable calls the same `run_trial`, `tune.report` per epoch.

The curve of a method is the best final accuracy of its completed (not pruned) trials,
against the cumulative compute of all its trials in the order they finished.

    python -m bench.search_efficiency [--quick] [--seeds N] [--budget-s S]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench import common

METHODS = ("resnas", "random", "ray_tune")
FULL = {"seeds": 5, "budget_s": 150.0}
QUICK = {"seeds": 1, "budget_s": 30.0}
SMOKE = {"seeds": 1, "budget_s": 8.0}


def run_resnas(seed: int, budget_s: float, *, random: bool) -> list[dict[str, Any]]:
    from db import Store
    from nas.search import run_search

    overrides: dict[str, Any] = {"sampler": "random", "pruner": "none"} if random else {}
    with common.fresh_db("sqlite") as url:
        config = common.search_config(
            url, "eff", trials=100000, seed=seed, max_compute_hours=budget_s / 3600, **overrides
        )
        run_search(config)
        runs = Store(url).runs("eff")
    return [
        {
            "finished": r.finished,
            "compute_s": r.duration_s or 0.0 if r.cached_from is None else 0.0,
            "state": "cached" if r.cached_from is not None else r.state,
            "val_accuracy": r.val_accuracy,
            "arch_id": r.arch_id,
        }
        for r in runs
    ]


def run_tune(seed: int, budget_s: float) -> list[dict[str, Any]]:
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from bench.tune_common import BudgetSearcher, run_tuner
    from nas.pruning import REDUCTION_FACTOR
    from nas.samplers import make_sampler
    from search_spaces import load_space

    space = load_space(common.SPACE)

    def define_by_run(trial: Any) -> dict[str, Any]:
        return {"spec": space.suggest(trial, in_channels=1, num_classes=10).to_dict()}

    searcher = BudgetSearcher(
        OptunaSearch(space=define_by_run, metric="val_accuracy", mode="max",
                     sampler=make_sampler("tpe", seed=seed)),
        budget_s,
    )
    epochs = common.RECIPE["epochs"]
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                              reduction_factor=REDUCTION_FACTOR)
    trials, _, _, _ = run_tuner(param_space={"recipe": dict(common.RECIPE)}, search_alg=searcher,
                             scheduler=scheduler, num_samples=100000)
    out = []
    for t in trials:
        done = int(t.get("training_iteration") or 0) >= epochs and not t.get("error")
        out.append({
            "finished": t.get("timestamp") or 0.0,
            "compute_s": float(t.get("compute_s") or 0.0),
            "state": "complete" if done else ("failed" if t.get("error") else "pruned"),
            "val_accuracy": t.get("val_accuracy"),
            "arch_id": None,
        })
    return out


def curve(trials: list[dict[str, Any]]) -> list[tuple[float, float | None]]:
    """(cumulative compute, best completed accuracy so far) after each finished trial."""
    spent, best, out = 0.0, None, []
    for t in sorted(trials, key=lambda t: t["finished"] or 0.0):
        spent += t["compute_s"]
        acc = t["val_accuracy"]
        if t["state"] in ("complete", "cached") and acc is not None and math.isfinite(acc):
            best = acc if best is None else max(best, acc)
        out.append((spent, best))
    return out


def compute_to_reach(points: list[tuple[float, float | None]], target: float) -> float | None:
    for spent, best in points:
        if best is not None and best >= target - 1e-12:
            return spent
    return None


def best_at(points: list[tuple[float, float | None]], x: float) -> float | None:
    best = None
    for spent, b in points:
        if spent > x:
            break
        best = b
    return best


def figure(curves: dict[str, list[list]], budget_s: float, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xmax = max([budget_s] + [c[-1][0] for runs in curves.values() for c in runs if c])
    xs = [xmax * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, runs in curves.items():
        ys = []
        for x in xs:
            vals = [b for b in (best_at(c, x) for c in runs) if b is not None]
            ys.append((common.median(vals), min(vals), max(vals)) if vals else (None, None, None))
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y[0] is not None]
        if not pts:
            continue
        ax.step([p[0] for p in pts], [p[1][0] for p in pts], where="post",
                label=f"{method} (median of {len(runs)})")
        ax.fill_between([p[0] for p in pts], [p[1][1] for p in pts], [p[1][2] for p in pts],
                        step="post", alpha=0.2)
    ax.axvline(budget_s, color="grey", linestyle=":", label="budget")
    ax.set_xlabel("summed trial compute (s)")
    ax.set_ylabel("best val accuracy (completed trials)")
    ax.set_title("digits, resnet-cifar: best accuracy vs compute (band: min-max over seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = common.run_id_of(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.search_efficiency",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=str(QUICK))
    ap.add_argument("--smoke", action="store_true", help=str(SMOKE))
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--budget-s", type=float, help="summed trial compute per method and seed")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    common.quiet()
    started = time.time()
    load0 = common.machine()["load_average_1m"]
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    seeds = args.seeds or preset["seeds"]
    budget_s = args.budget_s or preset["budget_s"]
    methods = [m for m in args.methods.split(",") if m]
    common.header(f"search efficiency: {seeds} seed(s), {budget_s:.0f} s of trial compute each, "
                  f"recipe {common.RECIPE}")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in range(seeds):
        for method in methods:
            common.start_ray(2)
            t0 = time.perf_counter()
            try:
                if method == "ray_tune":
                    trials = run_tune(seed, budget_s)
                else:
                    trials = run_resnas(seed, budget_s, random=method == "random")
            finally:
                common.stop_ray()
            pts = curve(trials)
            trained = [t for t in trials if t["state"] != "cached" and t["arch_id"]]
            ids = [t["arch_id"] for t in trained]
            run = {
                "seed": seed,
                "wall_s": time.perf_counter() - t0,
                "trials": len(trials),
                "states": {s: sum(1 for t in trials if t["state"] == s) for s in
                           sorted({t["state"] for t in trials})},
                "compute_s": pts[-1][0] if pts else 0.0,
                "final_best": pts[-1][1] if pts else None,
                "trained_twice": len(ids) - len(set(ids)) if method != "ray_tune" else None,
                "curve": pts,
            }
            runs[method].append(run)
            print(f"   seed {seed} {method:9s} {run['trials']:3d} trials {run['states']} "
                  f"compute {run['compute_s']:.0f} s, best {run['final_best']}", flush=True)
    summary: dict[str, Any] = {}
    for method in methods:
        rs = runs[method]
        finals = [r["final_best"] for r in rs if r["final_best"] is not None]
        entry: dict[str, Any] = {
            "final_best_median": common.median(finals),
            "final_best_min": min(finals) if finals else None,
            "final_best_max": max(finals) if finals else None,
            "compute_s_median": common.median([r["compute_s"] for r in rs]),
        }
        if "random" in runs:
            reach, rand_reach = [], []
            for r, rnd in zip(rs, runs["random"], strict=True):
                target = rnd["final_best"]
                if target is None:
                    continue
                reach.append(compute_to_reach(r["curve"], target))
                rand_reach.append(compute_to_reach(rnd["curve"], target))
            entry["reached_random_best"] = f"{sum(a is not None for a in reach)}/{len(reach)}"
            entry["compute_to_reach_random_best_median"] = common.median(
                [a for a in reach if a is not None])
            # per seed: compute to reach random's final best / random's own compute to reach it;
            # a seed that never reaches it counts as its whole compute / random's.
            fractions = []
            for a, b in zip(reach, rand_reach, strict=True):
                if b:
                    fractions.append((a if a is not None else math.inf) / b)
            entry["fraction_of_random_compute_median"] = (
                common.median(fractions) if fractions else None)
        summary[method] = entry
    goals = {}
    if {"resnas", "random"} <= set(summary):
        f = summary["resnas"]["fraction_of_random_compute_median"]
        goals["resnas_reaches_random_best_with_le_1/3_compute"] = f is not None and f <= 1 / 3
    if {"resnas", "ray_tune"} <= set(summary):
        a, b = summary["resnas"]["final_best_median"], summary["ray_tune"]["final_best_median"]
        goals["resnas_ends_ge_ray_tune"] = a is not None and (b is None or a >= b)
    for m, s in summary.items():
        print(f"   {m:9s} final best median {s['final_best_median']} "
              f"[{s['final_best_min']}, {s['final_best_max']}]; compute to reach random's best: "
              f"median {s.get('compute_to_reach_random_best_median')} s "
              f"({s.get('reached_random_best')} seeds), {s.get('fraction_of_random_compute_median')}"
              f" of random's")
    for goal, met in goals.items():
        print(f"   goal {goal}: {'met' if met else 'NOT met'}")
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fig_path = common.RESULTS_DIR / "search_efficiency.png"
    figure({m: [r["curve"] for r in runs[m]] for m in methods}, budget_s, fig_path)
    data = {
        "mode": mode,
        "seeds": seeds,
        "budget_s": budget_s,
        "recipe": common.RECIPE,
        "space": common.SPACE,
        "workers": 2,
        "runs": runs,
        "summary": summary,
        "goals": goals,
        "figure": fig_path.name,
        "_load_at_start": load0,
    }
    path = common.write_result("search_efficiency", data, started=started, argv=argv)
    print(f"   -> {path}, {fig_path}")
    return data


if __name__ == "__main__":
    main()
