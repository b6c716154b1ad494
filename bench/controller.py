"""Controller cost at scale: what the orchestrator itself spends per trial.

Training is replaced by an instant result: `workers.ray_task.submit_trial` is swapped for a
function that returns `ray.put(result)` with a made-up accuracy (the same architecture always
gets the same value). Everything else is the real `run_search`: ask, `SearchSpace.suggest`,
cost from the spec, user attrs and the dashboard note, the architecture row, the duplicate
lookup, `ray.wait`/`ray.get` on the result, the run row, `tell`. What is measured is the
driver's time per trial from the first proposal to the last outcome (Ray start-up, store
migration and study creation are outside; they are paid once per search).

The baseline is a bare Optuna ask/tell loop on the same storage (a fresh database of the
same backend), with the same sampler, the same `SearchSpace.suggest` and the same made-up
objective. Both use the random sampler so that the sampler's own cost (TPE grows with the
history) does not hide the controller's.

    python -m bench.controller [--quick] [--sizes 100,1000,10000] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bench import common

FULL_SIZES = (100, 1000, 10000)
QUICK_SIZES = (100, 300)
SMOKE_SIZES = (20, 40)
REPEAT_UP_TO = 1000  # sizes above run once per side


@contextlib.contextmanager
def instant_trials() -> Iterator[None]:
    """Swap `submit_trial` for one that answers at once (a `ray.put` of the result dict)."""
    import ray

    import workers.ray_task as ray_task

    def fake_submit(request: dict[str, Any], *, broker: Any = None, num_cpus: float = 1,
                    num_gpus: float = 0) -> Any:
        acc = common.fake_accuracy(request["spec"])
        now = time.time()
        return ray.put(
            {
                "state": "complete",
                "val_accuracy": acc,
                "best_val_accuracy": acc,
                "val_loss": 1.0 - acc,
                "epochs": [{"epoch": 1, "val_accuracy": acc, "val_loss": 1.0 - acc}],
                "duration_s": 0.0,
                "started": now,
                "finished": now,
                "host": "bench",
                "device": "none",
                "key": request.get("key", ""),
            }
        )

    saved = ray_task.submit_trial
    ray_task.submit_trial = fake_submit
    try:
        yield
    finally:
        ray_task.submit_trial = saved


class Timing:
    """A `Progress` that timestamps every told trial."""

    def __init__(self) -> None:
        from nas.events import Progress

        class _P(Progress):
            def __init__(inner) -> None:  # noqa: N805
                inner.t_start = None
                inner.stamps: list[float] = []
                inner.states: dict[str, int] = {}

            def start(inner, info: dict[str, Any]) -> None:  # noqa: N805
                inner.t_start = time.perf_counter()

            def trial(inner, event: Any, counts: Any, best: Any) -> None:  # noqa: N805
                inner.stamps.append(time.perf_counter())
                inner.states[event.state] = inner.states.get(event.state, 0) + 1

        self.progress = _P()


def run_resnas(url: str, n: int, seed: int = 0) -> dict[str, Any]:
    from nas.search import run_search

    timing = Timing().progress
    config = common.search_config(
        url, f"ctl{n}", trials=n, sampler="random", pruner="none", seed=seed, heartbeat_s=10.0,
        train={"epochs": 1},
    )
    t0 = time.perf_counter()
    with instant_trials():
        summary = run_search(config, progress=timing)
    total = time.perf_counter() - t0
    loop_s = timing.stamps[-1] - timing.t_start
    intervals = _intervals(timing.t_start, timing.stamps)
    return {
        "trials": len(timing.stamps),  # every told trial, infeasible ones included
        "counted": sum(summary.counts.values()),
        "states": timing.states,
        "loop_s": loop_s,
        "call_s": total,
        "per_trial_ms": 1000 * loop_s / len(timing.stamps),
        "p50_ms": 1000 * common.pct(intervals, 0.5),
        "p90_ms": 1000 * common.pct(intervals, 0.9),
        "trials_per_s": len(timing.stamps) / loop_s,
    }


def run_bare(url: str, n: int, seed: int = 0, *, tuned: bool = False) -> dict[str, Any]:
    """`ask` -> `SearchSpace.suggest` -> `tell`, the loop anyone would write first.

    `tuned`: on the storage exactly as resnas sets it up (the store's tables beside Optuna's,
    SQLite in WAL mode with `synchronous = NORMAL`, `nas.study.open_storage`); otherwise on
    Optuna's own set-up of the URL (a fresh SQLite file in its default journal mode)."""
    import optuna

    from db import Store
    from nas.study import open_storage, real_url
    from search_spaces import load_space

    space = load_space(common.SPACE)
    if tuned:
        Store(url).close()
    study = optuna.create_study(  # Optuna's own storage set-up: the URL with the same driver
        study_name=f"bare{n}", storage=open_storage(url) if tuned else real_url(url),
        sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize",
    )
    stamps = []
    t0 = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=1, num_classes=10)
        study.tell(trial, common.fake_accuracy(spec.to_dict()))
        stamps.append(time.perf_counter())
    loop_s = stamps[-1] - t0
    intervals = _intervals(t0, stamps)
    return {
        "trials": n,
        "loop_s": loop_s,
        "per_trial_ms": 1000 * loop_s / n,
        "p50_ms": 1000 * common.pct(intervals, 0.5),
        "p90_ms": 1000 * common.pct(intervals, 0.9),
        "trials_per_s": n / loop_s,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median per-trial time (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["per_trial_ms"])[(len(runs) - 1) // 2]


def _intervals(t0: float, stamps: list[float]) -> list[float]:
    out, last = [], t0
    for s in stamps:
        out.append(s - last)
        last = s
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = common.run_id_of(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.controller", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    ap.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES} (tests)")
    ap.add_argument("--sizes", help="comma-separated trial counts")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--baselines", default="optuna,same_setup",
                    help="bare loops to compare with: optuna (Optuna's own storage set-up), "
                    "same_setup (resnas's storage set-up)")
    ap.add_argument("--repeats", type=int, default=3,
                    help=f"interleaved runs of each side per size up to {REPEAT_UP_TO} trials")
    args = ap.parse_args(argv)
    common.quiet()
    started = time.time()
    load0 = common.machine()["load_average_1m"]
    sizes = (
        tuple(int(s) for s in args.sizes.split(",")) if args.sizes
        else SMOKE_SIZES if args.smoke else QUICK_SIZES if args.quick else FULL_SIZES
    )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    baselines = {b.strip() for b in args.baselines.split(",") if b.strip()}
    common.header("controller cost at scale (instant trials; random sampler; 2 slots)")
    skipped = {}
    if "postgresql" in backends and (why := common.pg_available()):
        skipped["postgresql"] = why
        backends.remove("postgresql")
    common.start_ray(2)
    rows = []
    try:
        # Warm-up: first-call imports and Ray's object store, outside every timing.
        with common.fresh_db("sqlite") as url:
            run_resnas(url, 5)
            run_bare(url, 5)
        for backend in backends:
            for n in sizes:
                # Interleaved repeats (this machine's timings drift by +-20% between runs);
                # each side's median run stands for it.
                bares, tuneds, mines = [], [], []
                for _ in range(1 if args.smoke or n > REPEAT_UP_TO else args.repeats):
                    if "optuna" in baselines:
                        with common.fresh_db(backend) as url:
                            bares.append(run_bare(url, n))
                    if "same_setup" in baselines:
                        with common.fresh_db(backend) as url:
                            tuneds.append(run_bare(url, n, tuned=True))
                    with common.fresh_db(backend) as url:
                        mines.append(run_resnas(url, n))
                mine = _median_run(mines)
                row = {"backend": backend, "trials": n, "repeats": len(mines), "resnas": mine,
                       "per_trial_ms_all": {"resnas": [r["per_trial_ms"] for r in mines]}}
                line = (f"   {backend:10s} n={n:6d}  resnas {mine['per_trial_ms']:7.2f} ms/trial "
                        f"(p50 {mine['p50_ms']:.2f}, {mine['trials_per_s']:.0f}/s)")
                for name, runs, label in (("", bares, "bare optuna"),
                                          ("_same_setup", tuneds, "on resnas's storage set-up")):
                    if runs:
                        base = _median_run(runs)
                        row[f"bare_optuna{name}"] = base
                        row[f"overhead_ratio{name}"] = mine["per_trial_ms"] / base["per_trial_ms"]
                        row["per_trial_ms_all"][f"bare_optuna{name}"] = [r["per_trial_ms"] for r in runs]
                        line += (f"; {label} {base['per_trial_ms']:7.2f} ms/trial, ratio "
                                 f"{row[f'overhead_ratio{name}']:.2f}x")
                rows.append(row)
                print(line, flush=True)
    finally:
        common.stop_ray()
    summary: dict[str, Any] = {}
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        if not mine:
            continue
        small, large = mine[0], mine[-1]
        s = summary[backend] = {
            "largest": large["trials"],
            "smallest": small["trials"],
            "p50_growth": large["resnas"]["p50_ms"] / small["resnas"]["p50_ms"],
            "trials_per_s_at_largest": large["resnas"]["trials_per_s"],
        }
        for name in ("", "_same_setup"):
            ratios = [r[f"overhead_ratio{name}"] for r in mine if f"overhead_ratio{name}" in r]
            if ratios:
                s[f"overhead_ratio{name}_max"] = max(ratios)
                if f"overhead_ratio{name}" in large:
                    s[f"overhead_ratio{name}_at_largest"] = large[f"overhead_ratio{name}"]
        if "bare_optuna" in large and "bare_optuna" in small:
            s["bare_p50_growth"] = large["bare_optuna"]["p50_ms"] / small["bare_optuna"]["p50_ms"]
    goals = {}
    for name, goal in (("", "within_1.1x_of_bare_optuna"),
                       ("_same_setup", "within_1.1x_of_bare_optuna_same_setup")):
        have = [s[f"overhead_ratio{name}_max"] for s in summary.values()
                if f"overhead_ratio{name}_max" in s]
        if have:
            goals[goal] = all(r <= 1.1 for r in have)
    if summary:
        goals["p50_largest_le_3x_smallest"] = all(s["p50_growth"] <= 3.0 for s in summary.values())
    if "postgresql" in summary:
        goals["ge_25_trials_per_s_on_postgresql"] = summary["postgresql"]["trials_per_s_at_largest"] >= 25
    for backend, s in summary.items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in s.items() if k.startswith("overhead_ratio"))
        print(f"   {backend}: {ratios}; p50 at {s['largest']} / p50 at {s['smallest']} = "
              f"{s['p50_growth']:.2f}x; {s['trials_per_s_at_largest']:.1f} trials/s")
    for goal, met in goals.items():
        print(f"   goal {goal}: {'met' if met else 'NOT met'}")
    data = {
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "what": "instant trials through run_search (Ray in, start-up out) vs bare Optuna ask/tell",
        "sizes": list(sizes),
        "skipped": skipped,
        "rows": rows,
        "summary": summary,
        "goals": goals,
        "_load_at_start": load0,
    }
    path = common.write_result("controller", data, started=started, argv=argv)
    print(f"   -> {path}")
    return data


if __name__ == "__main__":
    main()
