"""Run the benchmark suite and write the summary table into bench/README.md.

    python -m bench.run [--quick | --smoke] [--only search_efficiency,duplicates,overhead,controller,scaling]

Each benchmark writes `bench/results/<name>.json` (and PNG figures); this script then
rewrites the block between the `bench:summary` markers of `bench/README.md`, leaving the
rest of the file (other sections, e.g. "Training throughput") untouched. The training
throughput rows come from `results/throughput.json` (`python -m bench.throughput`) when it
is there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

from bench import common

ORDER = ("controller", "duplicates", "overhead", "scaling", "search_efficiency", "inherit")
README = common.BENCH_DIR / "README.md"
START, END = "<!-- bench:summary:start -->", "<!-- bench:summary:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = common.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _goal(met: Any) -> str:
    return "-" if met is None else ("met" if met else "**not met**")


U = "{:.3f}"  # utilisation: its goal (0.95) sits within a rounding step of the figures


def summary_rows() -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, goal, met) rows from whatever results exist."""
    rows = []
    if d := _load("search_efficiency"):
        for name, t in d["tables"].items():
            where = f"search efficiency, {name} ({d['mode']}, {d['repeats']} repeats)"
            k = 100 if d["evaluations"] >= 100 else d["evaluations"]
            for m, v in t["methods"].items():
                rows.append((where, f"{m}: {_f(v.get(f'mean@{k}'), '{:.3f}')} +- "
                             f"{_f(v.get(f'std@{k}'), '{:.3f}')} after {k} evaluations "
                             f"(optimum {t['optimum']:.3f})", "", ""))
            for goal, met in t["goals"].items():
                rows.append((where, goal.replace("_", " "), "", _goal(met)))
    if d := _load("duplicates"):
        n = d["trials"]
        rows.append((f"duplicates ({n} proposals)", f"raw Optuna TPE repeats {d['raw_optuna']['repeats']} "
                     f"(default TPESampler {d['raw_optuna_default_tpe']['repeats']}); resnas answers "
                     f"{d['resnas']['answered_from_store']} from the store, trains "
                     f"{d['resnas']['trained_twice']} twice", "0 trained twice",
                     _goal(d["goals"]["resnas_trains_no_architecture_twice"])))
    if d := _load("overhead"):
        r, t = d["resnas"], d["ray_tune"]
        rows.append((f"overhead ({d['trials']} trials x {d['epochs']} epochs, 2 workers, Ray start-up out)",
                     f"utilisation resnas {_f(r['utilisation'], U)} vs Ray Tune {_f(t['utilisation'], U)}; "
                     f"wall Tune/resnas {_f(d['wall_ratio_tune_over_resnas'])}x",
                     "resnas >= 0.95", _goal(d["goals"]["resnas_utilisation_ge_0.95"])))
        if "utilisation_busy_window" in r:
            rows.append(("overhead: after start-up", f"first trial after {_f(r['startup_s'], '{:.1f}')} s "
                         f"(Tune {_f(t['startup_s'], '{:.1f}')} s); utilisation from then on resnas "
                         f"{_f(r['utilisation_busy_window'])} vs Ray Tune "
                         f"{_f(t['utilisation_busy_window'])}", "", ""))
        if p := d.get("resnas_pool"):
            runs = p.get("utilisations") or [p["utilisation"]]
            of = (f" (median of {len(runs)} runs: {', '.join(_f(u, U) for u in runs)})"
                  if len(runs) > 1 else "")
            rows.append(("overhead on resident runners (`nas pool up`, not timed)",
                         f"utilisation resnas {_f(p['utilisation'], U)}{of}; first trial after "
                         f"{_f(p['startup_s'], '{:.1f}')} s; wall Tune/resnas "
                         f"{_f(t['wall_s'] / p['wall_s'])}x", "resnas >= 0.95",
                         _goal(d["goals"]["resnas_pool_utilisation_ge_0.95"])))
            if "utilisation_ideal" in p:
                rows.append(("overhead: a scheduler that costs nothing",
                             f"utilisation {_f(p['utilisation_ideal'], U)} with the pool run's trial "
                             f"times (each to the first free worker): resnas reaches "
                             f"{_f(p['utilisation'] / p['utilisation_ideal'])} of it", "", ""))
    if d := _load("controller"):
        for backend, s in d["summary"].items():
            where = f"controller, {backend} ({d['mode']}: {', '.join(map(str, d['sizes']))} trials)"
            for name, label in (("", "bare Optuna on its own storage set-up"),
                                ("_same_setup", "bare Optuna on resnas's storage set-up")):
                if f"overhead_ratio{name}_max" in s:
                    rows.append((where, f"resnas / {label}, per trial: max over sizes "
                                 f"{_f(s[f'overhead_ratio{name}_max'])}x", "<= 1.1x",
                                 _goal(s[f"overhead_ratio{name}_max"] <= 1.1)))
            rows.append((f"controller, {backend}", f"p50 at {s['largest']} / p50 at {s['smallest']} = "
                         f"{_f(s['p50_growth'])}x", "<= 3x", _goal(s["p50_growth"] <= 3)))
            if backend == "postgresql":
                rows.append(("controller, postgresql", f"{_f(s['trials_per_s_at_largest'], '{:.1f}')} "
                             "trials/s", ">= 25 trials/s", _goal(s["trials_per_s_at_largest"] >= 25)))
    if d := _load("scaling"):
        rows.append((f"scaling ({d['trials']} trials)", f"2 workers / 1 worker = "
                     f"{_f(d['speedup_2_over_1'])}x trials/hour", ">= 1.9x",
                     _goal(d["goals"]["speedup_ge_1.9"])))
        if "speedup_busy_window" in d:
            rows.append(("scaling: after start-up", f"2 workers / 1 worker = "
                         f"{_f(d['speedup_busy_window'])}x trials/hour from the first trial's start",
                         "", ""))
        pairs = f" (median of {d['repeats']} pairs)" if d.get("repeats", 1) > 1 else ""
        if "speedup_resident_runners" in d:
            rows.append(("scaling on resident runners (`nas pool up`, not timed)",
                         f"2 runners / 1 runner = {_f(d['speedup_resident_runners'])}x "
                         f"trials/hour{pairs}",
                         ">= 1.9x", _goal(d["goals"]["speedup_resident_runners_ge_1.9"])))
        if "speedup_bare_processes" in d:
            rows.append(("scaling: what the machine allows",
                         f"2 / 1 plain processes running `run_trial` (no orchestration) = "
                         f"{_f(d['speedup_bare_processes'])}x{pairs}; resnas keeps "
                         f"{_f(d['speedup_over_bare'])} of it (fresh Ray), "
                         f"{_f(d['speedup_resident_runners_over_bare'])} (resident runners)", "", ""))
        for L, c in (d.get("max_cluster") or {}).items():
            rows.append(("scaling: one controller", f"{_f(d['controller_trials_per_s'], '{:.1f}')} trials/s "
                         f"x {L} s trials = {c['max_busy_workers']} busy workers at most", "", ""))
    if d := _load("inherit"):
        for name, t in d["setups"].items():
            s, reach = t["summary"], t["summary"]["ratio_median"]
            rows.append((f"inherit, {name} ({d['mode']}: {d['seeds']} seeds x {d['trials']} trials, "
                         f"{Path(t['space']).stem}, {t['recipe']['epochs']} epochs, {t['sampler']})",
                         f"best {_f(s['scratch_best'], '{:.4f}')} scratch vs "
                         f"{_f(s['inherit_best'], '{:.4f}')} inherit; compute to reach the scratch "
                         f"best, inherit / scratch: {'never' if reach is None else _f(reach)} "
                         f"(median; {s['reached']} of {d['seeds']} seeds reached it); "
                         f"{s['share_with_parent']:.0%} had a parent",
                         "<= 0.5", _goal(t["goal_met"])))
    if d := _load("throughput"):
        for r in d.get("rows", []):
            rows.append((f"training throughput: {r['label']}", f"run_trial / hand loop samples/s = "
                         f"{_f(r.get('ratio'))}; fixed cost {_f(r.get('fixed_cost_s'))} s",
                         "(see Training throughput)", ""))
    return rows


def write_readme(command: str) -> None:
    m, v = common.machine(), common.versions()
    lines = [
        START,
        "## Summary (written by `python -m bench.run`)",
        "",
        f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['ram_gib']} GiB RAM "
        f"(load average when the summary was written: {m['load_average_1m']}; the machine was "
        "shared with other jobs while measuring, so only ratios measured in one run are meaningful).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "| benchmark | figure (ratios from the same run) | goal | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows()]
    lines += ["", "Figures: `results/search_efficiency_*.png` (one per table).", END]
    block = "\n".join(lines)
    text = README.read_text() if README.is_file() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = common.run_id_of(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", help=f"comma-separated, from {','.join(ORDER)}")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(ORDER)
    bad = [n for n in names if n not in ORDER]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; allowed: {', '.join(ORDER)}")
    flags = ["--smoke"] if args.smoke else ["--quick"] if args.quick else []
    t0 = time.time()
    failed = []
    for name in [n for n in ORDER if n in names]:  # controller before scaling (it reads it)
        try:
            importlib.import_module(f"bench.{name}").main(list(flags))
        except Exception as exc:  # noqa: BLE001 - one benchmark's failure must not hide the rest
            failed.append(name)
            print(f"!! {name} failed: {type(exc).__name__}: {exc}")
    write_readme("python -m bench.run" + (" " + " ".join(argv) if argv else ""))
    print(f"== suite done in {time.time() - t0:.0f} s; summary in {README}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
