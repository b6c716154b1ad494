"""The digits curve table: every architecture of a small residual space, trained with resnas.

Three grid searches over `bench/data/digits-curves.yaml` (192 architectures), one per training
seed, no pruning, every epoch's validation accuracy recorded; then the runs are written as
one compressed JSON table (`nas.tables.write_curve_table`), which `nas search --replay FILE`
and `bench.search_efficiency` replay.

    python -m bench.curve_table [--storage URL] [--out bench/data/digits-curves.json.gz]

The searches resume: a second call with the same storage trains only what is missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import common  # noqa: F401 - Ray's token mode, before anything imports Ray

DATA_DIR = Path(__file__).resolve().parent / "data"
SPACE_FILE = DATA_DIR / "digits-curves.yaml"
OUT = DATA_DIR / "digits-curves.json.gz"
SEEDS = (0, 1, 2)
# 12 epochs of batches of 128: about 2 s per trial on one core, enough epochs for halving.
RECIPE = {"dataset": "digits", "epochs": 12, "batch_size": 128}


def study_name(seed: int) -> str:
    return f"digits-curves-s{seed}"


def build(storage: str, *, workers: int) -> float:
    """Train every architecture with every seed into `storage`; returns the wall seconds."""
    from nas.config import build_config
    from nas.search import run_search
    from search_spaces import load_space

    grid = load_space(str(SPACE_FILE)).grid()
    size = 1
    for values in grid.values():
        size *= len(values)
    started = time.time()
    for seed in SEEDS:
        flags = {"study": study_name(seed), "storage": storage, "space": str(SPACE_FILE),
                 "trials": size, "workers": workers, "seed": 0, "sampler": "grid",
                 "pruner": "none", "train": {**RECIPE, "seed": seed}}
        summary = run_search(build_config({}, flags, "flags"))
        print(f"seed {seed}: {summary.status}, {dict(summary.counts)}, {summary.wall_s:.0f} s",
              flush=True)
    return time.time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///digits-curves.db")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--export-only", action="store_true",
                        help="write the table from what the storage holds; train nothing")
    args = parser.parse_args(argv)
    if not args.export_only:
        wall = build(args.storage, workers=args.workers)
        print(f"trained in {wall:.0f} s", flush=True)
    from nas.tables import write_curve_table

    table = write_curve_table(args.storage, [study_name(s) for s in SEEDS], args.out,
                              name="digits-curves")
    print(f"{args.out}: {len(table.rows)} architectures x {len(SEEDS)} seeds, "
          f"{table.epochs} epochs, {args.out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
