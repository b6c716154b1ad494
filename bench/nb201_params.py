"""Exactness of the NAS-Bench-201 networks resnas builds: every cell, every table.

Every one of the 15,625 cells is built (`build_model` on torch's meta device: the real
layers, no weights allocated; about 0.1 s a network here) at CIFAR-10's 10 classes, and its
parameters are counted; `complexity()` (the analytic count the search uses) must give the
same number for every cell. Both are compared with the table's model size for cifar10
(10 classes, 32x32), cifar100 (100) and ImageNet16-120 (120 classes, 16x16; the other two
tables through the analytic count, which the builds have just shown equal, plus a built
sample). The table gives millions of parameters rounded to 6 decimals, i.e. the exact
count: the tolerance is 0 parameters.

    python -m bench.nb201_params [--limit N]
"""

from __future__ import annotations

import argparse
import time

from bench import common


def main(argv: list[str] | None = None) -> dict:
    argv = common.run_id_of(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.nb201_params",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, help="check only the first N cells of each table")
    args = ap.parse_args(argv)
    import torch

    from nas.tables import NB201_DATASETS, nasbench201
    from search_spaces import build_model, complexity
    from search_spaces.cell import nb201_spec

    started = time.time()
    common.header("NAS-Bench-201 parameter counts: resnas's networks against the tables")
    out: dict = {"tolerance_params": 0, "unit": "table: millions of parameters, 6 decimals",
                 "tables": {}}
    conv = {1: 0, 3: 0}  # one conv op's parameters summed over the three stages' widths
    for k in conv:
        conv[k] = sum(w * w * k * k + 2 * w for w in (16, 32, 64)) * 5
    built_vs_analytic = 0
    keys = sorted(nasbench201("cifar10").rows)[: args.limit]
    for i, (dataset, (_, classes, side)) in enumerate(NB201_DATASETS.items()):
        table = nasbench201(dataset)
        sample = set(keys) if i == 0 else set(keys[::97])
        off: dict[str, int] = {}
        for key in keys:
            spec = nb201_spec(key, classes)
            analytic = complexity(spec, (side, side)).params
            if key in sample:
                with torch.device("meta"):
                    built = sum(p.numel() for p in build_model(spec).parameters())
                built_vs_analytic += built != analytic
            if analytic != table.rows[key].params:
                off[key] = analytic - table.rows[key].params
        one_op = sum(abs(d) in conv.values() for d in off.values())
        out["tables"][dataset] = {
            "cells": len(keys), "built": len(sample), "mismatches": len(off),
            "mismatches_by_exactly_one_conv_op": one_op,
            "largest_difference_params": max(map(abs, off.values()), default=0),
            "mismatched_keys": dict(sorted(off.items())),
        }
        print(f"   {dataset:15s} {len(keys):6d} cells ({len(sample)} built): {len(off)} differ "
              f"from the table, {one_op} of them by exactly one 1x1 or 3x3 conv op "
              f"({conv[1]:,} / {conv[3]:,} params)", flush=True)
    out["built_differs_from_complexity"] = built_vs_analytic
    out["exact"] = built_vs_analytic == 0 and all(
        t["mismatches"] == 0 for t in out["tables"].values())
    print(f"   built != complexity(): {built_vs_analytic} networks")
    path = common.write_result("nb201_params", out, started=started, argv=argv)
    print(f"   exact: {out['exact']} -> {path}")
    return out


if __name__ == "__main__":
    main()
