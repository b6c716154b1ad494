"""Scaling: trials per hour with 1 and 2 workers, and how big a cluster one controller feeds.

The same fixed list of short trials as bench.overhead (distinct small architectures,
2 epochs, no pruning) through `run_search` with `workers=1`, then `workers=2`, each on a
fresh local Ray (start-up excluded), then on 1 and 2 resident runners (`nas pool up`,
warmed before the timing). Trials/hour = trials / wall.

Speed-ups on this machine move by +-10% between runs (other jobs share the cores), so the
plain processes and the resident runners run `--repeats` interleaved 1-then-2 pairs (5 in
the full mode) and each speed-up is the median over the pairs.

What the machine itself allows: the same trials through `run_trial` in 1, then 2 plain
processes that pull them from a queue (no Ray, no database, no sampler; the processes have
imported the trainer and loaded the data before the timing). Their speed-up is the ceiling
of any orchestrator on these cores; resnas's speed-up over it is what the orchestration
keeps of it.

The controller limit comes from bench.controller (read from `results/controller.json`):
one driver tells at most R trials/s, so with trials of L seconds it keeps at most
R x L workers busy (Little's law: trials in flight = arrival rate x time in system).

    python -m bench.scaling [--quick] [--trials N] [--repeats K]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from typing import Any

from bench import common
from bench.overhead import EPOCHS, run_resnas, small_specs

FULL_TRIALS = 16
QUICK_TRIALS = 6
SMOKE_TRIALS = 2
TRIAL_LENGTHS_S = (10, 60, 600)


def controller_rate() -> tuple[str | None, float | None]:
    path = common.RESULTS_DIR / "controller.json"
    if not path.is_file():
        return None, None
    data = json.loads(path.read_text())
    summary = data.get("summary") or {}
    for backend in ("postgresql", "sqlite"):
        if backend in summary:
            return backend, summary[backend]["trials_per_s_at_largest"]
    return None, None


def _rates(r: dict[str, Any], label: str) -> dict[str, Any]:
    r["trials_per_hour"] = 3600 * r["trials"] / r["wall_s"]
    r["trials_per_hour_busy_window"] = 3600 * r["trials"] / r["busy_window_s"]
    print(f"   {label}: {r['trials']} trials in {r['wall_s']:.1f} s = "
          f"{r['trials_per_hour']:.0f} trials/h (utilisation {r['utilisation']:.2f}); after the "
          f"{r['startup_s']:.1f} s start-up: {r['trials_per_hour_busy_window']:.0f} trials/h",
          flush=True)
    return r


def _bare_worker(tasks: Any, results: Any, ready: Any, warm: dict[str, Any]) -> None:
    import torch

    from workers import run_trial

    torch.set_num_threads(1)
    run_trial(warm)  # imports, the data cache and the first-call costs, before the timing
    ready.put(os.getpid())
    while (request := tasks.get()) is not None:
        result = run_trial(request)
        results.put((result.state, result.duration_s))


def run_bare(specs: list[Any], workers: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """The trials in `workers` plain processes pulling from one queue: the machine's own
    throughput, with nothing of resnas, Ray or a database around `run_trial`."""
    ctx = mp.get_context("spawn")
    tasks, results, ready = ctx.Queue(), ctx.Queue(), ctx.Queue()
    recipe = {**common.RECIPE, "epochs": epochs}
    warm = {"spec": specs[0].to_dict(), "config": {**recipe, "epochs": 1}}
    procs = [ctx.Process(target=_bare_worker, args=(tasks, results, ready, warm), daemon=True)
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=600)
        t0 = time.perf_counter()
        for spec in specs:
            tasks.put({"spec": spec.to_dict(), "config": recipe})
        for _ in procs:
            tasks.put(None)
        done = [results.get(timeout=600) for _ in specs]
        wall = time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    compute = sum(d for _, d in done)
    return {"wall_s": wall, "trials": len(done), "compute_s": compute,
            "states": sorted({st for st, _ in done}),
            "utilisation": compute / (workers * wall),
            "trials_per_hour": 3600 * len(done) / wall}


def _pairs(runs: dict[int, list[dict[str, Any]]], out: dict[str, Any], prefix: str) -> float:
    """Median over the repeats of (1-worker wall / 2-worker wall); the run of each worker
    count whose wall is the median goes into `out` as `<prefix>_<workers>`."""
    speedups = sorted(a["wall_s"] / b["wall_s"] for a, b in zip(runs[1], runs[2], strict=True))
    for workers, rs in runs.items():
        out[f"{prefix}_{workers}"] = common.median_run(rs, "wall_s")
    out[f"{prefix}_speedups"] = speedups
    return common.median(speedups)


def _options(ap: Any) -> None:
    ap.add_argument("--repeats", type=int, help="1-then-2 pairs for plain processes and "
                    "runners (default 5 in the full mode, else 1)")
    ap.add_argument("--epochs", type=int, default=EPOCHS,
                    help=f"epochs per trial (default {EPOCHS}: 1-2 s trials; 20: ~10 s)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    run = common.trial_count_run(
        "python -m bench.scaling", __doc__.split("\n")[0], argv,
        full=FULL_TRIALS, quick=QUICK_TRIALS, smoke=SMOKE_TRIALS,
        extra=_options,
    )
    n, epochs = run.trials, run.args.epochs
    repeats = run.args.repeats or (5 if run.mode == "full" else 1)
    common.header(f"scaling: {n} trials of {epochs} epochs with 1 and 2 workers")
    specs = small_specs(n, seed=11)
    out: dict[str, Any] = {"repeats": repeats}
    bare: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            r = run_bare(specs, workers, epochs)
            bare[workers].append(r)
            print(f"   {workers} plain process(es), no orchestration: {r['trials']} trials in "
                  f"{r['wall_s']:.1f} s = {r['trials_per_hour']:.0f} trials/h", flush=True)
    speedup_bare = _pairs(bare, out, "bare_workers")
    for workers in (1, 2):
        common.start_ray(2)
        try:
            r = run_resnas(specs, workers=workers, epochs=epochs)
        finally:
            common.stop_ray()
        out[f"workers_{workers}"] = _rates(r, f"{workers} worker(s), fresh Ray")
    # The same on resident runners (`nas pool up`, not timed): 1 of them, then 2.
    pool_s, address, started = common.start_pool(2)
    pool: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        for _ in range(repeats):
            for workers in (1, 2):
                r = run_resnas(specs, workers=workers, epochs=epochs)
                pool[workers].append(_rates(r, f"{workers} resident runner(s)"))
    finally:
        common.stop_pool(address, started)
    speedup_pool = _pairs(pool, out, "pool_workers")
    speedup = out["workers_2"]["trials_per_hour"] / out["workers_1"]["trials_per_hour"]
    speedup_busy = (out["workers_2"]["trials_per_hour_busy_window"]
                    / out["workers_1"]["trials_per_hour_busy_window"])
    backend, rate = controller_rate()
    cluster = (
        {str(L): {"trial_s": L, "max_busy_workers": int(rate * L)} for L in TRIAL_LENGTHS_S}
        if rate else {}
    )
    print(f"   2 workers / 1 worker = {speedup:.2f}x (goal >= 1.9: {'met' if speedup >= 1.9 else 'NOT met'}); "
          f"after start-up {speedup_busy:.2f}x; on resident runners {speedup_pool:.2f}x "
          f"({'met' if speedup_pool >= 1.9 else 'NOT met'}; pool start {pool_s:.1f} s, not timed)")
    print(f"   the machine itself (plain processes): 2 / 1 = {speedup_bare:.2f}x; resnas keeps "
          f"{speedup / speedup_bare:.2f} of it on a fresh Ray, {speedup_pool / speedup_bare:.2f} "
          f"on resident runners")
    if rate:
        for L, c in cluster.items():
            print(f"   controller {rate:.1f} trials/s ({backend}) x {L} s trials = "
                  f"{c['max_busy_workers']} workers kept busy at most")
    data = {
        "mode": run.mode,
        "trials": n,
        "epochs": epochs,
        **out,
        "speedup_2_over_1": speedup,
        "speedup_busy_window": speedup_busy,
        "speedup_resident_runners": speedup_pool,
        "speedup_bare_processes": speedup_bare,
        "speedup_over_bare": speedup / speedup_bare,
        "speedup_resident_runners_over_bare": speedup_pool / speedup_bare,
        "pool_start_s_excluded": pool_s,
        "controller_backend": backend,
        "controller_trials_per_s": rate,
        "max_cluster": cluster,
        "goals": {"speedup_ge_1.9": speedup >= 1.9,
                  "speedup_resident_runners_ge_1.9": speedup_pool >= 1.9},
        "_load_at_start": run.load_at_start,
    }
    path = common.write_result("scaling", data, started=run.started, argv=run.argv)
    print(f"   -> {path}")
    return data


if __name__ == "__main__":
    main()
