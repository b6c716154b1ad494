"""Duplicate answers: a candidate the store has already trained (any study, same
architecture, recipe, dataset and fidelity) is answered from that run; one that is training
right now waits for it instead of training twice. TPE re-proposes often (PITFALLS.md)."""

from __future__ import annotations

from typing import Any

from db import RunRecord, Store

Key = tuple[str, str, str, int]  # (arch_id, recipe_id, dataset, fidelity)


def key_of(run: RunRecord) -> Key:
    return (run.arch_id, run.recipe_id, run.dataset, run.fidelity)


class DuplicateCache:
    """Finished runs by key, and the candidates waiting on a key that is training."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.known: dict[Key, RunRecord] = {}  # this search's own (complete or pruned)
        self.training: set[Key] = set()
        self.waiting: dict[Key, list[Any]] = {}

    def remember(self, run: RunRecord) -> None:
        """A run this study trained: complete runs answer later duplicates, pruned ones too
        (the same curve would be pruned again) unless a complete one is known."""
        if run.cached_from is not None:
            return
        if run.state == "complete":
            self.known[key_of(run)] = run
        elif run.state == "pruned":
            self.known.setdefault(key_of(run), run)

    def finished(self, key: Key) -> RunRecord | None:
        """The run that answers `key`, from this search or any study in the store."""
        return self.known.get(key) or self.store.find_finished(*key)

    def wait_for(self, key: Key, item: Any) -> bool:
        """Park `item` behind the training run of `key` (True), or say none trains (False)."""
        if key not in self.training:
            return False
        self.waiting.setdefault(key, []).append(item)
        return True

    def started(self, key: Key) -> None:
        self.training.add(key)

    def ended(self, key: Key) -> list[Any]:
        """`key` stopped training (any outcome): the items that waited on it."""
        self.training.discard(key)
        return self.waiting.pop(key, [])

    def all_waiting(self) -> list[Any]:
        return [w for ws in self.waiting.values() for w in ws]

    def clear(self) -> list[Any]:
        """Forget everything in flight; returns what still waited."""
        waiting = self.all_waiting()
        self.training.clear()
        self.waiting.clear()
        return waiting
