"""The defaults of a short search: how much a 12-trial `nas search` leaves to analyse.

A new user's first search is short (the README's demo: 12 trials of 8 epochs). Its pruner
decides how many of those trials train to the end, and so how many points the report, the
Pareto front and `nas export --pareto` have. This replays 12-trial searches on the digits
curve table (`bench/data/digits-curves.json.gz`, real training curves of 192 small ResNets)
with 2 trials in flight, as `make demo` runs on two cores, and reports per variant, over
`--repeats` seeds:

- complete: trials trained to the last epoch (mean; the goal is >= 4 of 12);
- best: the table's mean final accuracy of the architecture the search picks (its best
  complete trial), so a pick that saw a lucky seed gains nothing;
- compute: simulated seconds of every trained epoch, as a share of training all 12 fully;
- front (multi-objective, accuracy + params): trained trials on the Pareto front (goal >= 3).

Variants: the pruner's `min_at_rung` (a rung prunes only once that many trials reached it;
1 is plain ASHA), no pruning, and for two objectives the samplers TPE and NSGA-II.

    python -m bench.defaults [--repeats N | --smoke]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

from bench import common

TABLE = common.BENCH_DIR / "data" / "digits-curves.json.gz"
TRIALS, EPOCHS, WORKERS = 12, 8, 2
SINGLE = (("asha, min_at_rung 1 (plain ASHA)", "asha", 1), ("asha, min_at_rung 4", "asha", 4),
          ("asha, min_at_rung 6", "asha", 6), ("no pruning", "none", 1))
MULTI = (("tpe, min_at_rung 1", "tpe", 1, "asha", ""),
         ("tpe, min_at_rung 6", "tpe", 6, "asha", ""),
         ("tpe, no pruning", "tpe", 1, "none", ""),
         ("tpe n_startup_trials=4, min_at_rung 6", "tpe", 6, "asha", "n_startup_trials=4"),
         ("nsga2, min_at_rung 6", "nsga2", 6, "asha", ""),
         ("random, min_at_rung 6", "random", 6, "asha", ""))
LONGER = 30  # trials of the multi-objective search the front needs


def one(seed: int, *, pruner: str, min_at_rung: int, sampler: str = "tpe",
        objectives: str = "accuracy", options: str | None = None,
        trials: int = TRIALS) -> dict[str, Any]:
    import optuna

    from nas.config import build_config
    from nas.pruning import PruningRule
    from nas.search import Search
    from nas.tables import open_table, table_space

    table = open_table(str(TABLE))
    with tempfile.TemporaryDirectory(prefix="resnas-defaults-") as tmp:
        flags = {"study": "d", "storage": f"sqlite:///{tmp}/d.db", "trials": trials,
                 "workers": WORKERS, "seed": seed, "replay": str(TABLE), "pruner": pruner,
                 "sampler": sampler, "objectives": objectives, "sampler_options": options,
                 "space": table_space(str(TABLE)), "train": {"epochs": EPOCHS}}
        search = Search(build_config({}, flags, "flags"),
                        optuna_storage=optuna.storages.InMemoryStorage())
        search.pruning = PruningRule(search.pruning.name, epochs=EPOCHS,
                                     multi_objective=search.config.multi_objective,
                                     min_at_rung=min_at_rung)
        summary = search.run()
        runs = [r for r in search.store.runs("d") if r.cached_from is None]
        complete = [r for r in runs if r.state == "complete"]
        pick = max(complete, key=lambda r: r.val_accuracy or 0.0, default=None)

        def row(run: Any) -> Any:
            return table.row_of(search.store.architecture(run.arch_id) or {})

        best = None if pick is None else statistics.fmean(
            a[EPOCHS - 1] for a in row(pick).accuracies)
        full = sum(statistics.fmean(row(r).epoch_s) * EPOCHS for r in runs)
        compute = sum(r.duration_s or 0.0 for r in runs)
        search.store.close()
    return {"complete": len(complete), "best": best, "compute": compute / full if full else 0,
            "front": len(summary.best) if objectives != "accuracy" else None}


def table_rows(repeats: int, multi_only: bool = False) -> list[str]:
    rows = ["| objectives | variant | complete of 12 | best (table mean) | compute vs. no pruning "
            "| Pareto front (mean, min, share >= 3) |", "|---|---|---|---|---|---|"]

    def add(objectives: str, label: str, results: list[dict[str, Any]]) -> None:
        def mean(key: str) -> float:
            vals = [r[key] for r in results if r[key] is not None]
            return statistics.mean(vals) if vals else float("nan")
        fronts = [r["front"] for r in results if r["front"] is not None]
        front = (f"{mean('front'):.1f}, {min(fronts)}, "
                 f"{sum(f >= 3 for f in fronts) / len(fronts):.0%}") if fronts else "-"
        rows.append(f"| {objectives} | {label} | {mean('complete'):.1f} "
                    f"(min {min(r['complete'] for r in results)}) | {mean('best'):.4f} "
                    f"| {mean('compute'):.2f} | {front} |")

    for label, pruner, k in SINGLE if not multi_only else ():
        add("accuracy", label, [one(s, pruner=pruner, min_at_rung=k) for s in range(repeats)])
    for label, sampler, k, pruner, options in MULTI:
        add("accuracy,params", label,
            [one(s, pruner=pruner, min_at_rung=k, sampler=sampler, options=options or None,
                 objectives="accuracy,params") for s in range(repeats)])
    longer = [one(s, pruner="asha", min_at_rung=6, objectives="accuracy,params", trials=LONGER)
              for s in range(repeats)]
    add("accuracy,params", f"tpe, min_at_rung 6, {LONGER} trials (complete of {LONGER})", longer)
    return rows


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="one seed per row")
    args = parser.parse_args(argv)
    rows = table_rows(1 if args.smoke else args.repeats)
    print("\n".join(rows))
    return rows


if __name__ == "__main__":
    main()
