"""Duplicates: how often a proposal repeats an architecture that was already trained.

Both sides see the same made-up objective (`common.fake_accuracy`: a fixed value per
architecture, so the count does not depend on training noise) and the same TPE settings
(`nas.samplers.make_sampler("tpe")`), 2 proposals in flight:

- raw Optuna: ask/tell on the `resnet-cifar` space; every repeated `arch_id` would be
  trained again by a plain loop (also shown for Optuna's default `TPESampler`);
- resnas: `run_search` with instant trials (as in bench.controller); counted are runs
  trained twice (`cached_from is None` sharing an `arch_id`). The goal is zero.

    python -m bench.duplicates [--quick] [--trials N]
"""

from __future__ import annotations

from typing import Any

from bench import common

FULL_TRIALS = 300
QUICK_TRIALS = 100
SMOKE_TRIALS = 30


def raw_optuna(n: int, seed: int, *, resnas_tpe: bool) -> dict[str, Any]:
    import optuna

    from nas.samplers import make_sampler
    from search_spaces import load_space

    space = load_space(common.SPACE)
    sampler = make_sampler("tpe", seed=seed) if resnas_tpe else optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    ids: list[str] = []
    for _ in range(n):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=1, num_classes=10)
        study.tell(trial, common.fake_accuracy(spec.to_dict()))
        ids.append(spec.arch_id)
    return {"trials": n, "repeats": len(ids) - len(set(ids)), "distinct": len(set(ids))}


def resnas(n: int, seed: int) -> dict[str, Any]:
    from bench.controller import instant_trials
    from db import Store
    from nas.search import run_search

    with common.fresh_db("sqlite") as url:
        config = common.search_config(url, "dups", trials=n, seed=seed, pruner="none",
                                      train={"epochs": 1})
        with instant_trials():
            run_search(config)
        runs = Store(url).runs("dups")
    trained = [r.arch_id for r in runs if r.cached_from is None]
    return {
        "trials": len(runs),
        "trained": len(trained),
        "answered_from_store": sum(1 for r in runs if r.cached_from is not None),
        "trained_twice": len(trained) - len(set(trained)),
        "distinct": len({r.arch_id for r in runs}),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    run = common.trial_count_run(
        "python -m bench.duplicates", __doc__.split("\n")[0], argv,
        full=FULL_TRIALS, quick=QUICK_TRIALS, smoke=SMOKE_TRIALS,
        extra=lambda ap: ap.add_argument("--seed", type=int, default=0),
    )
    args = run.args
    n = run.trials
    common.header(f"duplicates: {n} proposals, made-up objective, TPE")
    raw = raw_optuna(n, args.seed, resnas_tpe=True)
    raw_default = raw_optuna(n, args.seed, resnas_tpe=False)
    common.start_ray(2)
    try:
        mine = resnas(n, args.seed)
    finally:
        common.stop_ray()
    print(f"   raw Optuna (resnas TPE settings): {raw['repeats']} of {n} proposals repeat a trained "
          f"architecture ({raw['repeats'] / n:.0%})")
    print(f"   raw Optuna (default TPESampler):  {raw_default['repeats']} of {n} "
          f"({raw_default['repeats'] / n:.0%})")
    print(f"   resnas: {mine['answered_from_store']} answered from the store, "
          f"{mine['trained_twice']} trained twice")
    data = {
        "mode": run.mode,
        "trials": n,
        "raw_optuna": raw,
        "raw_optuna_default_tpe": raw_default,
        "resnas": mine,
        "goals": {"resnas_trains_no_architecture_twice": mine["trained_twice"] == 0},
        "_load_at_start": run.load_at_start,
    }
    print(f"   goal resnas trains no architecture twice: "
          f"{'met' if data['goals']['resnas_trains_no_architecture_twice'] else 'NOT met'}")
    path = common.write_result("duplicates", data, started=run.started, argv=run.argv)
    print(f"   -> {path}")
    return data


if __name__ == "__main__":
    main()
