"""Search efficiency on tables of known results: how good an architecture each method picks,
after how many evaluations and how much (simulated) compute.

Tables (`nas.tables`): NAS-Bench-201 on cifar10, cifar100 and imagenet16-120 (15,625 cells,
final validation accuracy per seed, the table's training time as the cost), and the digits
curve table (`bench/data/digits-curves.json.gz`: 192 small ResNets x 3 seeds x 12 epochs,
built by `bench.curve_table`). Every evaluation sees one seed's result; the score of a
method after k evaluations is the table's mean over seeds of the final accuracy of the
architecture it would pick then (its best observed complete trial), not the noisy draw it saw.

Methods, one trial at a time:
- resnas: `nas search --replay` defaults (TPE, the pruner of the fidelity: none on
  NAS-Bench-201's single epoch, ASHA on the curves; duplicates answered without training);
- random: resnas with `--sampler random --pruner none`;
- evolution: resnas with `--sampler evolution` (regularized evolution);
- optuna_tpe: the loop a user would write: `optuna.create_study(sampler=TPESampler(seed))`,
  ask, look the architecture up, tell; a duplicate is evaluated (and paid for) again;
- ray_tune (curve table): `Tuner` + `OptunaSearch` + `ASHAScheduler` (grace 1, reduction 3),
  a trainable that reports the table's epochs.

An evaluation is a trained trial (an answer from the duplicate cache costs nothing and is not
counted); compute is the summed simulated seconds of all trained epochs.

    python -m bench.search_efficiency [--smoke | --quick] [--repeats N] [--tables ...]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import common

TABLES = ("nasbench201:cifar10", "nasbench201:cifar100", "nasbench201:imagenet16-120",
          "digits")
DIGITS = common.BENCH_DIR / "data" / "digits-curves.json.gz"
RESNAS = ("resnas", "random", "evolution")
METHODS = (*RESNAS, "optuna_tpe", "ray_tune")
CHECKPOINTS = (25, 50, 100, 200)
# Ray Tune's actor per trial costs about a second of wall time: fewer of its repeats.
FULL = {"repeats": 100, "evaluations": 200, "tune_repeats": 3}
QUICK = {"repeats": 10, "evaluations": 100, "tune_repeats": 1}
SMOKE = {"repeats": 2, "evaluations": 25, "tune_repeats": 1}
# NAS-Bench-201's own validation figures for its baselines (Dong & Yang, ICLR 2020, Table 5:
# mean +- std over 500 runs, a 12,000 s simulated budget on cifar10, its 12-epoch proxy).
PAPER = {
    "nasbench201:cifar10": {"optimum": 91.61, "REA": (91.19, 0.31), "RS": (90.93, 0.36),
                            "REINFORCE": (91.09, 0.37), "BOHB": (90.82, 0.53)},
    "nasbench201:cifar100": {"optimum": 73.49, "REA": (71.81, 1.12), "RS": (70.93, 1.09),
                             "REINFORCE": (71.61, 1.12), "BOHB": (70.74, 1.29)},
    "nasbench201:imagenet16-120": {"optimum": 46.77, "REA": (45.15, 0.89),
                                   "RS": (44.45, 1.10), "REINFORCE": (45.24, 1.18),
                                   "BOHB": (44.26, 1.36)},
}


def table_ref(name: str) -> str:
    return str(DIGITS) if name == "digits" else name


def open_table(name: str) -> Any:
    from nas.tables import open_table as _open

    return _open(table_ref(name))


# -- the methods --------------------------------------------------------------------------------
def _until_evaluations() -> type:
    from nas.search import Search

    class UntilEvaluations(Search):
        """A search that stops proposing after `n` trained trials (answers from the duplicate
        cache are free and do not count; `--trials` counts them)."""

        def __init__(self, config: Any, n: int, **kw: Any) -> None:
            super().__init__(config, **kw)
            self.n_evaluations = n

        def _left(self) -> int:
            c = self.recorder.counts
            trained = c["complete"] + c["pruned"] + c["failed"] + len(self.pending)
            return min(super()._left(), self.n_evaluations - trained)

    return UntilEvaluations


def run_resnas(name: str, method: str, seed: int, n: int) -> list[dict[str, Any]]:
    """One replayed `nas search` of `n` trials; its trained evaluations in order."""
    import optuna

    from nas.config import build_config
    from nas.tables import table_space

    _UntilEvaluations = _until_evaluations()  # noqa: N806 - a class
    table = open_table(name)
    # `method:key=value+key=value` tries sampler options (how the defaults were chosen).
    base, _, options = method.partition(":")
    overrides: dict[str, Any] = {
        "random": {"sampler": "random", "pruner": "none"},
        "evolution": {"sampler": "evolution"},
    }.get(base, {})
    if options:
        overrides["sampler_options"] = options.replace("+", ",")
    with tempfile.TemporaryDirectory(prefix="resnas-eff-", dir=_fast_tmp()) as tmp:
        # Answers from the duplicate cache are free: up to 3n trials for n evaluations.
        flags = {"study": "eff", "storage": f"sqlite:///{tmp}/eff.db", "trials": 3 * n,
                 "seed": seed, "replay": table_ref(name),
                 "space": table_space(table_ref(name)), **overrides}
        search = _UntilEvaluations(build_config({}, flags, "flags"), n,
                                   optuna_storage=optuna.storages.InMemoryStorage())
        search.run()
        runs = search.store.runs("eff")
        keys = {a: table.key_of(search.store.architecture(a) or {})
                for a in {r.arch_id for r in runs}}
        search.store.close()
    return [{"cost_s": r.duration_s or 0.0, "state": r.state, "observed": r.val_accuracy,
             "key": keys[r.arch_id]} for r in runs if r.cached_from is None][:n]


def run_optuna(name: str, seed: int, n: int) -> list[dict[str, Any]]:
    """The bare Optuna loop: default TPE, one draw per evaluation, duplicates paid again."""
    import random

    import optuna

    from nas.tables import table_space
    from search_spaces import load_space

    table = open_table(name)
    space = load_space(table_space(table_ref(name)))
    rng = random.Random(seed)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=table.in_channels,
                             num_classes=table.num_classes).to_dict()
        key = table.key_of(spec)
        row = table.rows[key]
        j = rng.randrange(len(row.accuracies))
        acc = row.accuracies[j][-1]
        study.tell(trial, acc)
        out.append({"cost_s": row.epoch_s[j] * len(row.accuracies[j]), "state": "complete",
                    "observed": acc, "key": key})
    return out


def _tune_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    from nas.tables import curve_table

    table = curve_table(config["table"])
    key = table.key_of(config["spec"])
    row = table.rows[key]
    j = config["draw"] % len(row.accuracies)
    for e, acc in enumerate(row.accuracies[j]):
        tune.report({"val_accuracy": acc, "compute_s": (e + 1) * row.epoch_s[j], "key": key,
                     "epochs_done": e + 1})


class _DefineByRun:
    """OptunaSearch's space: the same `SearchSpace.suggest` (a class: Tune pickles it)."""

    def __init__(self, space: str, in_channels: int, num_classes: int, seed: int) -> None:
        self.space, self.shape, self.seed = space, (in_channels, num_classes), seed

    def __call__(self, trial: Any) -> dict[str, Any]:
        from search_spaces import load_space

        spec = load_space(self.space).suggest(trial, in_channels=self.shape[0],
                                              num_classes=self.shape[1])
        return {"spec": spec.to_dict(), "draw": trial.number * 7919 + self.seed}


def run_tune(name: str, seed: int, n: int) -> list[dict[str, Any]]:
    """Ray Tune's OptunaSearch + ASHA on the curve table (Ray must be up)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from nas.pruning import REDUCTION_FACTOR
    from nas.tables import table_space

    table = open_table(name)
    define_by_run = _DefineByRun(table_space(table_ref(name)), table.in_channels,
                                 table.num_classes, seed)
    storage = tempfile.mkdtemp(prefix="resnas-bench-tune-")
    tuner = tune.Tuner(
        tune.with_resources(_tune_trainable, {"cpu": 1}),
        param_space={"table": str(DIGITS)},
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max", num_samples=n, max_concurrent_trials=1,
            search_alg=OptunaSearch(space=define_by_run, metric="val_accuracy", mode="max",
                                    seed=seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=table.epochs,
                                    grace_period=1, reduction_factor=REDUCTION_FACTOR)),
        run_config=tune.RunConfig(name=f"eff-{seed}", storage_path=storage, verbose=0),
    )
    out = []
    for result in tuner.fit():
        m = dict(result.metrics or {})
        done = int(m.get("epochs_done") or 0)
        out.append({"cost_s": float(m.get("compute_s") or 0.0),
                    "state": "complete" if done >= table.epochs else "pruned",
                    "observed": m.get("val_accuracy"), "key": m.get("key"),
                    "_at": m.get("timestamp") or 0})
    out.sort(key=lambda e: e.pop("_at"))
    return out


def _job(args: tuple[str, str, int, int]) -> tuple[str, str, int, list[dict[str, Any]], float]:
    name, method, seed, n = args
    common.quiet()
    t0 = time.perf_counter()
    if method == "optuna_tpe":
        evals = run_optuna(name, seed, n)
    else:
        evals = run_resnas(name, method, seed, n)
    return name, method, seed, evals, time.perf_counter() - t0


def _fast_tmp() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# -- scoring ----------------------------------------------------------------------------------
def trajectory(evals: list[dict[str, Any]], table: Any, *,
               oracle: bool = False) -> list[tuple[float, float]]:
    """After each evaluation: (compute so far, score of the architecture picked so far).

    With `oracle`, the pick is the evaluated architecture with the best true (mean) score:
    what the search found, without the noise of the one seed it saw.
    """
    spent, best, score, out = 0.0, -math.inf, math.nan, []
    for e in evals:
        spent += e["cost_s"]
        obs = e["observed"]
        if e["state"] == "complete" and obs is not None and e["key"] in table.rows:
            value = table.rows[e["key"]].mean_final if oracle else obs
            if value > best:
                best, score = value, table.rows[e["key"]].mean_final
        out.append((spent, score))
    return out


def score_at(traj: list[tuple[float, float]], k: int) -> float:
    """The score after k evaluations (a search that stopped sooner keeps its last pick)."""
    if not traj:
        return math.nan
    return traj[min(k, len(traj)) - 1][1]


def score_at_compute(traj: list[tuple[float, float]], c: float) -> float:
    score = math.nan
    for spent, s in traj:
        if spent > c:
            break
        score = s
    return score


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.fmean(vals) if vals else None


def _std(values: list[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.stdev(vals) if len(vals) > 1 else None


def summarize(name: str, trajs: dict[str, list[list[tuple[float, float]]]], n: int,
              table: Any) -> dict[str, Any]:
    scale = 100.0 if name.startswith("nasbench201") else 1.0  # the literature's percent
    _, optimum = table.optimum()
    out: dict[str, Any] = {"optimum": optimum * scale, "methods": {}}
    checkpoints = [k for k in CHECKPOINTS if k <= n] or [n]
    for method, runs in trajs.items():
        entry: dict[str, Any] = {"repeats": len(runs)}
        for k in checkpoints:
            vals = [score_at(t, k) * scale for t in runs]
            entry[f"mean@{k}"], entry[f"std@{k}"] = _mean(vals), _std(vals)
        entry["compute_s_mean"] = _mean([t[-1][0] for t in runs if t])
        entry["evaluations_mean"] = _mean([float(len(t)) for t in runs])
        out["methods"][method] = entry
    rnd = trajs.get("random")
    if rnd:
        target = _mean([score_at(t, n) * scale for t in rnd])
        rnd_compute = _mean([t[-1][0] for t in rnd if t])
        out["random_final"] = target
        for method, runs in trajs.items():
            entry = out["methods"][method]
            entry["evaluations_to_random_final"] = next(
                (k for k in range(1, n + 1)
                 if (_mean([score_at(t, k) * scale for t in runs]) or -1) >= target - 1e-9), None)
            grid = [rnd_compute * i / 200 for i in range(1, 401)]
            reached = next((c for c in grid if (_mean(
                [score_at_compute(t, c) * scale for t in runs]) or -1) >= target - 1e-9), None)
            entry["compute_to_random_final"] = None if reached is None else reached / rnd_compute
    return out


def goals(name: str, summary: dict[str, Any], n: int) -> dict[str, bool]:
    m = summary["methods"]
    out: dict[str, bool] = {}
    floors = {"nasbench201:cifar10": 91.45, "nasbench201:cifar100": 73.0,
              "nasbench201:imagenet16-120": 46.45}
    k = 100 if n >= 100 else n
    if name in floors and "resnas" in m:
        out[f"resnas_mean@{k}_ge_{floors[name]}"] = (m["resnas"].get(f"mean@{k}") or 0) >= floors[name]
        others = [v.get(f"mean@{k}") or 0 for key, v in m.items() if key != "resnas"]
        out[f"resnas_ahead_of_all@{k}"] = all((m["resnas"][f"mean@{k}"] or 0) > o for o in others)
        e = m["resnas"].get("evaluations_to_random_final")
        if "random" in m:
            out["resnas_reaches_random_final_with_le_1/3_evaluations"] = e is not None and e <= n / 3
    if name == "digits" and "random" in m and "resnas" in m:
        c = m["resnas"].get("compute_to_random_final")
        out["resnas_reaches_random_final_with_le_1/3_compute"] = c is not None and c <= 1 / 3
    return out


def figure(name: str, trajs: dict[str, list], n: int, table: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if name.startswith("nasbench201") else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ks = list(range(1, n + 1))
    for method, runs in trajs.items():
        means = [_mean([score_at(t, k) * scale for t in runs]) for k in ks]
        stds = [_std([score_at(t, k) * scale for t in runs]) or 0.0 for k in ks]
        pts = [(k, m, s) for k, m, s in zip(ks, means, stds, strict=True) if m is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{method} ({len(runs)} runs)")
        ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts],
                        [p[1] + p[2] for p in pts], alpha=0.12)
    ax.axhline(table.optimum()[1] * scale, color="grey", linestyle=":", label="table optimum")
    ax.set_xscale("log")
    ax.set_xlabel("evaluations (trained trials)")
    ax.set_ylabel("mean-over-seeds accuracy of the pick" + (" (%)" if scale > 1 else ""))
    ax.set_title(f"{name}: the picked architecture's true accuracy (mean +- std over runs)")
    lows = [table.optimum()[1] * scale - (5 if scale > 1 else 0.05)]
    ax.set_ylim(bottom=lows[0], top=table.optimum()[1] * scale + (0.5 if scale > 1 else 0.005))
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
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--evaluations", type=int, help="trials per search")
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    common.quiet()
    started = time.time()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    repeats = args.repeats or preset["repeats"]
    n = args.evaluations or preset["evaluations"]
    tables = [t for t in args.tables.split(",") if t]
    methods = [m for m in args.methods.split(";" if ";" in args.methods else ",") if m]
    common.header(f"search efficiency on tables: {repeats} repeats x {n} trials, {tables}")
    jobs = [(t, m, s, n) for t in tables for m in methods if m != "ray_tune"
            for s in range(repeats)]
    evals: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    wall: dict[tuple[str, str], float] = {}
    with ProcessPoolExecutor(max_workers=args.processes) as pool:
        for name, method, _seed, ev, w in pool.map(_job, jobs):
            evals.setdefault((name, method), []).append(ev)
            wall[(name, method)] = wall.get((name, method), 0.0) + w
    if "ray_tune" in methods and "digits" in tables:
        common.start_ray(2)
        try:
            for s in range(args.repeats and min(args.repeats, preset["tune_repeats"])
                           or preset["tune_repeats"]):
                t0 = time.perf_counter()
                evals.setdefault(("digits", "ray_tune"), []).append(run_tune("digits", s, n))
                wall[("digits", "ray_tune")] = (wall.get(("digits", "ray_tune"), 0.0)
                                                + time.perf_counter() - t0)
        finally:
            common.stop_ray()
    results: dict[str, Any] = {}
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for name in tables:
        table = open_table(name)
        trajs = {m: [trajectory(e, table) for e in evals[(name, m)]]
                 for m in methods if (name, m) in evals}
        summary = summarize(name, trajs, n, table)
        scale = 100.0 if name.startswith("nasbench201") else 1.0
        for m in trajs:  # how much of the gap to the optimum is the noise of the pick
            oracle = [trajectory(e, table, oracle=True) for e in evals[(name, m)]]
            for k in [k for k in CHECKPOINTS if k <= n]:
                summary["methods"][m][f"found@{k}"] = _mean([score_at(t, k) * scale
                                                             for t in oracle])
        for m in trajs:
            summary["methods"][m]["wall_s"] = round(wall[(name, m)], 1)
        summary["goals"] = goals(name, summary, n)
        if name in PAPER:
            summary["paper"] = PAPER[name]
        fig = common.RESULTS_DIR / f"search_efficiency_{name.replace(':', '_')}.png"
        figure(name, trajs, n, table, fig)
        summary["figure"] = fig.name
        results[name] = summary
        print(f"   {name}: optimum {summary['optimum']:.3f}, random's final "
              f"{summary.get('random_final')}")
        for m, v in summary["methods"].items():
            cells = ", ".join(f"@{k} {v[f'mean@{k}']:.3f}+-{(v[f'std@{k}'] or 0):.3f}"
                              for k in CHECKPOINTS if v.get(f"mean@{k}") is not None)
            print(f"     {m:10s} ({v['repeats']} runs) {cells}; to random's final: "
                  f"{v.get('evaluations_to_random_final')} evaluations, "
                  f"{v.get('compute_to_random_final')} of its compute")
        for goal, met in summary["goals"].items():
            print(f"     goal {goal}: {'met' if met else 'NOT met'}")
    data = {"mode": mode, "repeats": repeats, "evaluations": n, "tables": results,
            "goals": {f"{name}: {g}": met for name, t in results.items()
                      for g, met in t["goals"].items()}}
    path = common.write_result("search_efficiency", data, started=started, argv=argv)
    print(f"   -> {path}")
    return data


if __name__ == "__main__":
    main()
