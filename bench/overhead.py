"""Orchestration overhead: the same short trials through resnas and through Ray Tune.

A fixed list of small, distinct architectures of the `resnet-cifar` space (basic blocks,
<= 150k parameters), trained 2 epochs on digits (1-2 s each), with 2 workers and no pruning.
resnas gets them as enqueued trials (`enqueue=` architecture files); Ray Tune as a grid over
the same spec dicts, FIFO scheduler, `max_concurrent_trials=2`.

Wall time runs from the call of `run_search` / the construction of the `Tuner` to the
return. Ray start-up is OUT for both: a fresh local Ray (2 CPUs) is started before each
tool's timing and shut down after, so neither inherits the other's warm worker processes;
Ray worker start-up and torch/Lightning imports in the workers are IN for both.

A third run trains the same trials on resident runners (`nas pool up`, started and warmed
before the timing, as a deployment keeps them): the workers' imports are then out too. It
runs `--repeats` times (5 in the full mode); the run with the median utilisation is reported.

Worker utilisation = summed trial compute (the trials' own `duration_s`, measured inside
`run_trial`) / (workers x wall).

    python -m bench.overhead [--quick] [--trials N] [--repeats K]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

FULL_TRIALS = 24
QUICK_TRIALS = 8
SMOKE_TRIALS = 4
EPOCHS = 2
WORKERS = 2


def small_specs(n: int, seed: int = 7, max_params: int = 150_000) -> list[Any]:
    """`n` distinct small architectures of the space, always the same for a seed."""
    import optuna

    from search_spaces import complexity, load_space

    space = load_space(common.SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    specs, seen = [], set()
    for _ in range(5000):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=1, num_classes=10)
        study.tell(trial, 0.0)
        if spec.arch_id in seen or any(s.block != "basic" for s in spec.stages):
            continue
        if complexity(spec, (8, 8)).params > max_params:
            continue
        seen.add(spec.arch_id)
        specs.append(spec)
        if len(specs) == n:
            return specs
    raise RuntimeError(f"only {len(specs)} small architectures found")


def run_resnas(specs: list[Any], workers: int = WORKERS, epochs: int = EPOCHS) -> dict[str, Any]:
    from db import Store
    from nas.search import run_search

    with tempfile.TemporaryDirectory(prefix="resnas-bench-arch-") as tmp, common.fresh_db("sqlite") as url:
        paths = []
        for i, spec in enumerate(specs):
            path = Path(tmp) / f"arch{i:02d}.json"
            path.write_text(json.dumps({"spec": spec.to_dict()}))
            paths.append(str(path))
        config = common.search_config(
            url, "overhead", trials=len(specs), workers=workers, sampler="random", pruner="none",
            seed=0, enqueue=paths, train={"epochs": epochs},
        )
        t0, t0_epoch = time.perf_counter(), time.time()
        summary = run_search(config)
        wall = time.perf_counter() - t0
        runs = [r for r in Store(url).runs("overhead") if r.cached_from is None]
    durations = [r.duration_s or 0.0 for r in runs]
    spans = [(float(r.started), float(r.finished)) for r in runs]
    return _figures(wall, durations, workers, t0_epoch, spans, {
        "counts": summary.counts,
        "trained_archs": sorted({r.arch_id for r in runs if r.cached_from is None}),
    })


def run_tune(specs: list[Any], workers: int = WORKERS, epochs: int = EPOCHS) -> dict[str, Any]:
    from ray import tune

    from bench.tune_common import run_tuner

    recipe = {**common.RECIPE, "epochs": epochs}
    trials, records, wall, t0_epoch = run_tuner(
        param_space={"spec": tune.grid_search([s.to_dict() for s in specs]), "recipe": recipe},
        max_concurrent=workers,
    )
    durations = [r["duration_s"] for r in records]
    spans = [(float(r["started"]), float(r["finished"])) for r in records]
    return _figures(wall, durations, workers, t0_epoch, spans, {
        "tune_trials": len(trials),
        "tune_errors": sum(1 for t in trials if t.get("error")),
        "trained_archs": sorted(r["arch_id"] for r in records),
    })


def greedy_makespan(durations: list[float], workers: int) -> float:
    """Wall time of `durations`, in order, each started on the first free worker at once."""
    import heapq

    free = [0.0] * workers
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free) if durations else 0.0


def _figures(
    wall: float, durations: list[float], workers: int, t0_epoch: float,
    spans: list[tuple[float, float]], extra: dict,
) -> dict[str, Any]:
    """Utilisation over the whole call, and over the busy window (first trial's start to the
    last trial's end: what is left once the one-time start-up is taken out)."""
    compute = sum(durations)
    in_order = [d for _, d in sorted(zip([s for s, _ in spans], durations, strict=True))]
    ideal = greedy_makespan(in_order, workers)
    first = min(s for s, _ in spans) if spans else t0_epoch
    last = max(e for _, e in spans) if spans else t0_epoch
    window = last - first
    return {
        "wall_s": wall,
        "trials": len(durations),
        "compute_s": compute,
        "mean_trial_s": compute / len(durations) if durations else None,
        "utilisation": compute / (workers * wall) if wall > 0 else None,
        "overhead_per_trial_s": (workers * wall - compute) / len(durations) if durations else None,
        # The same trial times on a scheduler that costs nothing (each trial, in the order
        # they started, to the first free worker): what is lost to the last trials alone.
        "utilisation_ideal": compute / (workers * ideal) if ideal > 0 else None,
        "startup_s": first - t0_epoch,
        "busy_window_s": window,
        "utilisation_busy_window": compute / (workers * window) if window > 0 else None,
        **extra,
    }


def _options(ap: Any) -> None:
    ap.add_argument("--repeats", type=int, help="runs on the resident runners; the median is "
                    "the figure (default 5 in the full mode, else 1)")
    ap.add_argument("--epochs", type=int, default=EPOCHS,
                    help=f"epochs per trial (default {EPOCHS}: 1-2 s trials; 20: ~10 s)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    run = common.trial_count_run(
        "python -m bench.overhead", __doc__.split("\n")[0], argv,
        full=FULL_TRIALS, quick=QUICK_TRIALS, smoke=SMOKE_TRIALS,
        extra=_options,
    )
    n, epochs = run.trials, run.args.epochs
    repeats = run.args.repeats or (5 if run.mode == "full" else 1)
    common.header(f"orchestration overhead: {n} trials, {WORKERS} workers, {epochs} epochs")
    specs = small_specs(n)
    out: dict[str, Any] = {}
    for tool, fn in (("resnas", run_resnas), ("ray_tune", run_tune)):
        ray_start = common.start_ray(WORKERS)
        try:
            out[tool] = fn(specs, epochs=epochs)
        finally:
            common.stop_ray()
        out[tool]["ray_start_s_excluded"] = ray_start
        r = out[tool]
        print(
            f"   {tool:9s} wall {r['wall_s']:6.1f} s for {r['trials']} trials holding "
            f"{r['compute_s']:5.1f} s of training: utilisation {r['utilisation']:.2f}, "
            f"{r['overhead_per_trial_s']:.2f} s of idle slot per trial; first trial after "
            f"{r['startup_s']:.1f} s, utilisation from then on {r['utilisation_busy_window']:.2f}",
            flush=True,
        )
    # The same search on resident runners (`nas pool up`, not timed: paid once per pool, like
    # Ray's start-up above), so the workers' torch/Lightning imports are out as well.
    # Single runs move by a few hundredths here (the last trials' tail alone by ~0.03), so it
    # runs `repeats` times and the run with the median utilisation is the figure.
    pool_s, address, started = common.start_pool(WORKERS)
    pool_runs = []
    try:
        for _ in range(repeats):
            r = run_resnas(specs, epochs=epochs)
            pool_runs.append(r)
            print(
                f"   resnas on {WORKERS} resident runners (`nas pool up`, {pool_s:.1f} s, not "
                f"timed): wall {r['wall_s']:6.1f} s, utilisation {r['utilisation']:.2f}; first "
                f"trial after {r['startup_s']:.1f} s; a scheduler that costs nothing would reach "
                f"{r['utilisation_ideal']:.2f} with these trial times",
                flush=True,
            )
    finally:
        common.stop_pool(address, started)
    out["resnas_pool"] = {
        **common.median_run(pool_runs, "utilisation"),
        "pool_start_s_excluded": pool_s,
        "repeats": repeats,
        "utilisations": sorted(r["utilisation"] for r in pool_runs),
    }
    mine, tune_ = out["resnas"], out["ray_tune"]
    data = {
        "mode": run.mode,
        "trials": n,
        "epochs": epochs,
        "workers": WORKERS,
        "ray_startup": "excluded for both (fresh local Ray started before each tool's timing)",
        "specs": [s.summary() for s in specs],
        **out,
        "wall_ratio_tune_over_resnas": tune_["wall_s"] / mine["wall_s"],
        "utilisation_ratio_resnas_over_tune": mine["utilisation"] / tune_["utilisation"],
        "goals": {
            "resnas_utilisation_ge_0.95": mine["utilisation"] >= 0.95,
            "resnas_pool_utilisation_ge_0.95": out["resnas_pool"]["utilisation"] >= 0.95,
        },
        "_load_at_start": run.load_at_start,
    }
    goals = data["goals"]
    print(
        f"   Ray Tune wall / resnas wall = {data['wall_ratio_tune_over_resnas']:.2f}x; "
        f"goal utilisation >= 0.95: fresh Ray {'met' if goals['resnas_utilisation_ge_0.95'] else 'NOT met'}, "
        f"resident runners {'met' if goals['resnas_pool_utilisation_ge_0.95'] else 'NOT met'}"
    )
    path = common.write_result("overhead", data, started=run.started, argv=run.argv)
    print(f"   -> {path}")
    return data


if __name__ == "__main__":
    main()
