"""Shared builders for the store tests, and the worker that concurrent-writer tests spawn."""

from __future__ import annotations

from db import RunRecord
from search_spaces.spec import ArchitectureSpec, StageSpec


def spec(
    depth: int = 3, skip: str = "identity", *, skips: tuple[str, ...] | None = None, width: int = 16
) -> ArchitectureSpec:
    """A CIFAR-style 3-stage net; `skips` gives each stage its own skip type."""
    skips = skips or (skip, skip, skip)
    return ArchitectureSpec(
        stages=(
            StageSpec(depth=depth, width=width, skip=skips[0]),
            StageSpec(depth=depth, width=width * 2, stride=2, skip=skips[1]),
            StageSpec(depth=depth, width=width * 4, stride=2, skip=skips[2]),
        )
    )


def run(study: str, trial: int, arch_id: str = "a" * 16, **kw) -> RunRecord:
    base = dict(
        id=None,
        study=study,
        trial_number=trial,
        arch_id=arch_id,
        recipe_id="r1",
        dataset="cifar10",
        fidelity=10,
        state="complete",
    )
    base.update(kw)
    return RunRecord(**base)


def write_runs(url: str, worker: int, count: int) -> int:
    """Child process body: open its own Store, record `count` runs, one transaction each."""
    from db import EpochRecord, Store

    store = Store(url)
    try:
        for i in range(count):
            store.record_run(
                run(f"concurrent-{worker}", i, val_accuracy=0.5 + i / 100),
                epochs=[EpochRecord(epoch=1, train_loss=1.0)],
                weights=b"w" * 64,
            )
        return count
    finally:
        store.close()
