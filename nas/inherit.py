"""Parents for `--inherit`: the trained runs a candidate can grow from.

A candidate that extends a trained architecture by blocks or width (`search_spaces.morph`)
starts from that network's function instead of from random weights, and trains for fewer
epochs. Its parent is the best trained run in the store, from any study (like the
duplicate cache), on the same dataset with the same recipe up to the number of epochs, whose
architecture morphs into the candidate. Children are parents too: a search grows chains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

from db import RunRecord, Store
from nas.recorder import trial_ref
from nas.weights import WeightsError
from search_spaces import ArchitectureSpec
from search_spaces.morph import Morph, morph_plan
from workers.config import TrainConfig

log = logging.getLogger(__name__)

# How often the list of parents is read again, for runs other searches finished meanwhile.
REFRESH_S = 30.0
# What a worker says when a parent's weights did not start its child as the parent.
REFUSED = ("not_a_morph", "inherit_gap")
# A child trains this share of the recipe's epochs unless told (`inherit_epochs`).
CHILD_SHARE = 0.25


def family_of(recipe: dict[str, Any] | TrainConfig) -> str | None:
    """The recipe without its number of epochs, hashed: runs of one family can be parents
    of each other's children. None for a recipe this version cannot read."""
    try:
        config = TrainConfig.from_dict(recipe)
    except (ValueError, TypeError):
        return None
    fields = {k: v for k, v in config.recipe_dict().items() if k != "epochs"}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def child_recipe_id(recipe: TrainConfig) -> str:
    """The store's id of the children's recipe `recipe`: not the id of a scratch run trained
    for as many epochs, so that the duplicate cache never answers one with the other."""
    return hashlib.sha256(f"inherit:{recipe.recipe_id}".encode()).hexdigest()[:16]


def child_epochs(epochs: int, inherit_epochs: int | None) -> int:
    """Epochs a child trains: `inherit_epochs`, else a quarter of the recipe's (at least 1)."""
    if inherit_epochs is not None:
        return inherit_epochs
    return max(1, math.ceil(epochs * CHILD_SHARE))


@dataclass(frozen=True)
class Parent:
    """The run a candidate starts from, and how it grows into the candidate."""

    run: RunRecord
    spec: ArchitectureSpec
    morph: Morph

    def describe(self, search_recipe: str) -> dict[str, Any]:
        """What the child's run row keeps about its parent (`extra["inherit"]`), and the
        recipe its search trains from scratch (`search_recipe`: what `nas retrain` trains)."""
        return {"parent_run": self.run.id, "parent_study": self.run.study,
                "parent_trial": self.run.trial_number, "parent_arch_id": self.run.arch_id,
                "parent_val_accuracy": self.run.val_accuracy,
                "morph": self.morph.describe(), "search_recipe": search_recipe}


class Parents:
    """The trained runs of one recipe family on one dataset, kept in memory and refreshed."""

    def __init__(self, store: Store, recipe: TrainConfig, *, clock=time.monotonic) -> None:
        self.store, self.dataset = store, recipe.dataset
        self.family = family_of(recipe)
        self._clock = clock
        self._families: dict[str, bool] = {}  # recipe_id -> of this family
        self._specs: dict[str, ArchitectureSpec | None] = {}
        self.runs: list[tuple[RunRecord, ArchitectureSpec]] = []
        self._ids: set[int] = set()  # of `runs`, so a run read again is not added twice
        self._dropped: set[int] = set()  # parents whose weights did not start a child
        self._read_at = -math.inf
        self.refresh()

    def _of_family(self, recipe_id: str | None) -> bool:
        if recipe_id is None:
            return False
        if recipe_id not in self._families:
            recipe = self.store.recipe(recipe_id)
            self._families[recipe_id] = recipe is not None and family_of(recipe) == self.family
        return self._families[recipe_id]

    def _spec(self, arch_id: str) -> ArchitectureSpec | None:
        if arch_id not in self._specs:
            data = self.store.architecture(arch_id)
            try:
                self._specs[arch_id] = None if data is None else ArchitectureSpec.from_dict(data)
            except (ValueError, TypeError, KeyError):
                self._specs[arch_id] = None  # written by another version: not a parent
        return self._specs[arch_id]

    def refresh(self) -> None:
        """Read the trained runs again, for those other searches (or a `nas retrain`, whose
        row is written before it trains) finished meanwhile."""
        self._read_at = self._clock()
        for run in self.store.trained_runs(self.dataset):
            self.add(run)

    def drop(self, run_id: int | None) -> None:
        """Never pick run `run_id` again: its weights are unreadable or do not grow."""
        if run_id is None:
            return
        self._dropped.add(run_id)
        self._ids.discard(run_id)
        self.runs = [(r, s) for r, s in self.runs if r.id != run_id]

    def add(self, run: RunRecord, spec: ArchitectureSpec | None = None) -> None:
        """A trained run with weights, if it belongs to the family."""
        if run.id is None or run.id in self._ids or run.id in self._dropped:
            return
        if run.val_accuracy is None or not math.isfinite(run.val_accuracy):
            return
        if run.dataset != self.dataset or not self._of_family(run.recipe_id):
            return
        spec = spec or self._spec(run.arch_id)
        if spec is not None:
            self.runs.append((run, spec))
            self._ids.add(run.id)

    def parent_for(self, child: ArchitectureSpec) -> Parent | None:
        """The best run whose architecture grows into `child` by a morph; None if none does.
        An identical architecture is not a parent: the duplicate cache answers it."""
        if self._clock() - self._read_at >= REFRESH_S:
            self.refresh()
        best: Parent | None = None
        for run, spec in self.runs:
            if spec.arch_id == child.arch_id:
                continue
            if best is not None and run.val_accuracy <= best.run.val_accuracy:
                continue
            morph = morph_plan(spec, child)
            if morph is not None:
                best = Parent(run, spec, morph)
        return best


class Inheritance:
    """What `--inherit` adds to one search: the children's recipe (the search's with
    `child_epochs`, under its own id `recipe_id`), the parents, and for each candidate the
    parent its job starts from."""

    def __init__(self, store: Store, artifacts: Any, recipe: TrainConfig, *, config: Any) -> None:
        """`config`: the search's `SearchConfig` (its `study` and `inherit_epochs`)."""
        self.artifacts, self.study = artifacts, config.study
        self.search_recipe = recipe.recipe_id
        self.recipe = recipe.with_(epochs=child_epochs(recipe.epochs, config.inherit_epochs))
        self.recipe_id = child_recipe_id(self.recipe)
        store.save_recipe(self.recipe_id, self.recipe.to_dict(), recipe.dataset)
        self.parents = Parents(store, recipe)

    def key(self, arch_id: str) -> tuple[str, str, str, int]:
        """The duplicate-cache key of `arch_id` trained as a child."""
        return (arch_id, self.recipe_id, self.recipe.dataset, self.recipe.epochs)

    def answer(self, cache: Any, arch_id: str) -> RunRecord | None:
        """A child of `arch_id` trained before, to answer a duplicate from."""
        return cache.finished(self.key(arch_id))

    def parent(self, trial: Any, spec: ArchitectureSpec) -> tuple[Parent | None, dict[str, Any] | None]:
        """The parent a candidate starts from and the job's `parent` entry (its spec and
        weights); (None, None): it trains from scratch. A parent whose weights cannot be
        read is dropped, and the next best one is tried."""
        while (found := self.parents.parent_for(spec)) is not None:
            try:
                weights = self.artifacts.load(found.run)
            except WeightsError as exc:  # a damaged or missing file
                log.warning("trial %d does not start from trial %d of study %s: %s",
                            trial.number, found.run.trial_number, found.run.study, exc)
                weights = None
            if weights is not None:
                trial.set_user_attr("inherited_from", trial_ref(found.run, self.study))
                return found, {"spec": found.spec.to_dict(), "weights": weights}
            self.parents.drop(found.run.id)
        return None, None

    def subject(self, subject: Any, parent: Parent, result: dict[str, Any] | None = None) -> Any:
        """`subject` (a `nas.recorder.Subject`) as the child of `parent` that it is, with how
        exactly it started as its parent when the worker said (`result["inherited"]`)."""
        info = parent.describe(self.search_recipe)
        if result and result.get("inherited"):
            info["start_gap"] = result["inherited"].get("gap")
        return replace(subject, recipe_id=self.recipe_id, fidelity=self.recipe.epochs,
                       inherited_from=parent.run.id, extra={**subject.extra, "inherit": info})

    def finished(self, run: RunRecord, spec: ArchitectureSpec, parent: Parent | None) -> None:
        """A run of this search ended: a complete one whose weights were saved is a parent
        from now on; a parent the worker could not start its child from is dropped."""
        if run.state == "complete" and run.weights_artifact:
            self.parents.add(run, spec)
        if parent is not None and (run.reason or "").startswith(REFUSED):
            log.warning("trial %d of study %s is no parent any more: %s",
                        parent.run.trial_number, parent.run.study, run.reason)
            self.parents.drop(parent.run.id)
