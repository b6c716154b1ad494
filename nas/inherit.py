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

    def describe(self) -> dict[str, Any]:
        """What the child's run row keeps about its parent (`extra["inherit"]`)."""
        return {"parent_run": self.run.id, "parent_study": self.run.study,
                "parent_trial": self.run.trial_number, "parent_arch_id": self.run.arch_id,
                "parent_val_accuracy": self.run.val_accuracy,
                "morph": self.morph.describe()}


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
        self._last_id = 0
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
        """Read the runs finished since the last read (this search's and any other's)."""
        self._read_at = self._clock()
        for run in self.store.trained_runs(self.dataset, since_id=self._last_id):
            self._last_id = max(self._last_id, run.id or 0)
            self.add(run)

    def add(self, run: RunRecord, spec: ArchitectureSpec | None = None) -> None:
        """A trained run with weights, if it belongs to the family."""
        if run.id is None or run.id in self._ids:
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
    `child_epochs`), the parents, and for each candidate the parent its job starts from."""

    def __init__(self, store: Store, artifacts: Any, recipe: TrainConfig, *, config: Any) -> None:
        """`config`: the search's `SearchConfig` (its `study` and `inherit_epochs`)."""
        self.artifacts, self.study = artifacts, config.study
        self.recipe = recipe.with_(epochs=child_epochs(recipe.epochs, config.inherit_epochs))
        store.save_recipe(self.recipe.recipe_id, self.recipe.to_dict(), recipe.dataset)
        self.parents = Parents(store, recipe)

    def key(self, arch_id: str) -> tuple[str, str, str, int]:
        """The duplicate-cache key of `arch_id` trained as a child."""
        return (arch_id, self.recipe.recipe_id, self.recipe.dataset, self.recipe.epochs)

    def answer(self, cache: Any, arch_id: str) -> RunRecord | None:
        """A child of `arch_id` trained before, to answer a duplicate from. A scratch run of a
        recipe with the children's epochs has the same key, and answers nothing."""
        run = cache.finished(self.key(arch_id))
        return run if run is not None and run.inherited_from is not None else None

    def parent(self, trial: Any, spec: ArchitectureSpec) -> tuple[Parent, dict[str, Any]] | None:
        """The parent a candidate starts from and the job's `parent` entry (its spec and
        weights); None: it trains from scratch (no parent, or its weights cannot be read)."""
        found = self.parents.parent_for(spec)
        if found is None:
            return None
        try:
            weights = self.artifacts.load(found.run)
        except WeightsError as exc:  # a damaged or missing file: the child trains from scratch
            log.warning("trial %d trains from scratch: %s", trial.number, exc)
            return None
        if weights is None:
            return None
        trial.set_user_attr("inherited_from", trial_ref(found.run, self.study))
        return found, {"spec": found.spec.to_dict(), "weights": weights}

    def subject(self, subject: Any, parent: Parent, result: dict[str, Any] | None = None) -> Any:
        """`subject` (a `nas.recorder.Subject`) as the child of `parent` that it is, with how
        exactly it started as its parent when the worker said (`result["inherited"]`)."""
        info = parent.describe()
        if result and result.get("inherited"):
            info["start_gap"] = result["inherited"].get("gap")
        return replace(subject, recipe_id=self.recipe.recipe_id, fidelity=self.recipe.epochs,
                       inherited_from=parent.run.id, extra={**subject.extra, "inherit": info})

    def finished(self, run: RunRecord, spec: ArchitectureSpec, result: dict[str, Any]) -> None:
        """A run of this search ended: a complete one with weights is a parent from now on."""
        if run.state == "complete" and (run.weights_artifact or result.get("weights")):
            self.parents.add(run, spec)
