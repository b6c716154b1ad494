"""The family tree of a study searched with `--inherit`, as plain data: which run started from
which trained parent's weights, and how it ended against that parent.

`inherited_from` is the parent's run id, in any study. `inheritance` (the data behind the
report's family-tree section, `collect()`'s `inheritance` key) counts trained complete runs of
the study, like the report's residual views; a child is compared with its parent's final
validation accuracy although it trained for fewer epochs (its `fidelity`). `inherited_labels`
names each parent the way `nas trials` shows it (`#12`, `other-study#3`).

Reads the store only, and imports neither optuna nor torch (`search_spaces.morph.morph_plan`
compares specs), so `nas trials` stays light.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from db import RunRecord, Store
from search_spaces import ArchitectureSpec
from search_spaces.morph import morph_plan

# Children whose accuracy differs from their parent's by no more than this tie with it: runs on
# one validation set score multiples of 1/size, so equal scores differ only by float noise.
TIE_TOLERANCE = 1e-9


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _trial_label(parent_study: str | None, parent_trial: int | None, study: str) -> str | None:
    if parent_trial is None:
        return None
    return f"#{parent_trial}" if parent_study in (None, study) else f"{parent_study}#{parent_trial}"


def _parent_runs(store: Store, runs: list[RunRecord],
                 known: Sequence[RunRecord] = ()) -> dict[int, RunRecord | None]:
    """The parent run of every run of `runs` that inherited, by parent id (None: not in the
    store any more). Parents among `runs` or `known` are not read again."""
    by_id = {r.id: r for r in (*known, *runs)}
    return {pid: by_id.get(pid) or store.get_run(pid)
            for pid in sorted({r.inherited_from for r in runs} - {None})}


def _parent_label(run: RunRecord, parent: RunRecord | None, study: str) -> str:
    """`#12` (a trial of `study`), `other-study#3`, or `run 17` when the parent row is gone and
    the run's `extra` does not say which trial it was."""
    if parent is not None:
        return _trial_label(parent.study, parent.trial_number, study) or f"run {run.inherited_from}"
    info = run.inherit
    trial = info.get("parent_trial")
    study_name = info.get("parent_study")
    label = _trial_label(study_name if isinstance(study_name, str) else None,
                         trial if isinstance(trial, int) else None, study)
    return label or f"run {run.inherited_from or info.get('parent_run')}"


def inherited_labels(store: Store, runs: list[RunRecord], study: str) -> dict[int, str]:
    """Where each run of `runs` that inherited came from, by its run id: `#12` for trial 12 of
    `study`, `other-study#3` for a parent in another study (what `nas trials` shows in its
    `from` column). Empty when none of `runs` inherited."""
    parents = _parent_runs(store, runs)
    return {r.id: _parent_label(r, parents.get(r.inherited_from), study)
            for r in runs if r.inherited and r.id is not None}


def _morph_words(store: Store, child: RunRecord, parent: RunRecord | None,
                 specs: dict[str, ArchitectureSpec | None]) -> list[str]:
    """The morph in words: what the run's `extra` recorded, else worked out from both specs
    (`search_spaces.morph.morph_plan`, torch-free), else nothing."""
    words = child.inherit.get("morph")
    if isinstance(words, list) and all(isinstance(w, str) for w in words):
        return list(words)
    if isinstance(words, str):
        return [words]
    if parent is None:
        return []
    def spec_of(arch_id: str) -> ArchitectureSpec | None:
        if arch_id not in specs:
            arch = store.architecture(arch_id)
            try:
                specs[arch_id] = ArchitectureSpec.from_dict(arch) if arch else None
            except (ValueError, TypeError, KeyError):
                specs[arch_id] = None
        return specs[arch_id]

    parent_spec, child_spec = spec_of(parent.arch_id), spec_of(child.arch_id)
    if parent_spec is None or child_spec is None:
        return []
    plan = morph_plan(parent_spec, child_spec)
    return plan.describe() if plan is not None else []


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def inheritance(store: Store, study: str, runs: list[RunRecord],
                specs: dict[str, ArchitectureSpec | None] | None = None) -> dict[str, Any]:
    """The family tree of `study`: which trained runs started from which parent, and how they did.

    Returns:
        `edges`: one per trained (not cached) run that inherited, by trial number: `trial`,
        `run`, `state`, `val_accuracy` (None unless complete), `epochs` (its fidelity),
        `parent` (label: `#12` or `other-study#3`), `parent_run`, `parent_study`,
        `parent_trial`, `same_study`, `parent_val_accuracy`, `parent_epochs`, `gain` (child
        minus parent, None when either has no accuracy), `outcome` (`above` | `below` | `tie`
        | None), `morph` (lines in words, may be empty).
        `nodes`: the study's trained complete trials (`trial`, `val_accuracy`), for the figure.
        `summary`: `trained` (complete trained trials), `inherited` (those with a parent),
        `share`, `other_study` (of those, parents in another study), `compared`, `above`,
        `below`, `tie`, `median_gain`, `median_epochs` (children), `full_epochs` (median
        epochs of trained trials without a parent; the recipe's `epochs` if there are none),
        `not_complete` (children pruned, failed or running).
    """
    specs = dict(specs or {})  # parents' specs are added: not the caller's dict
    trained = sorted((r for r in runs if r.state == "complete" and r.cached_from is None
                      and _finite(r.val_accuracy)), key=lambda r: r.trial_number)
    children = sorted((r for r in runs if r.inherited and r.cached_from is None),
                      key=lambda r: r.trial_number)
    parents = _parent_runs(store, children, known=runs)
    edges = []
    for child in children:
        parent = parents.get(child.inherited_from)
        info = child.inherit
        acc = child.val_accuracy if child.state == "complete" and _finite(child.val_accuracy) else None
        if parent is not None:
            parent_acc = parent.val_accuracy if parent.state == "complete" else None
        else:  # its row is gone: what the child recorded of it
            parent_acc = info.get("parent_val_accuracy")
        if not (isinstance(parent_acc, (int, float)) and _finite(parent_acc)):
            parent_acc = None
        gain = None if acc is None or parent_acc is None else acc - parent_acc
        outcome = None if gain is None else (
            "tie" if abs(gain) <= TIE_TOLERANCE else "above" if gain > 0 else "below")
        parent_study = parent.study if parent is not None else info.get("parent_study")
        parent_trial = parent.trial_number if parent is not None else info.get("parent_trial")
        edges.append({
            "trial": child.trial_number, "run": child.id, "state": child.state,
            "val_accuracy": acc, "epochs": child.fidelity,
            "parent": _parent_label(child, parent, study), "parent_run": child.inherited_from,
            "parent_study": parent_study if isinstance(parent_study, str) else None,
            "parent_trial": parent_trial if isinstance(parent_trial, int) else None,
            "same_study": parent_study in (None, study) if parent is None else parent.study == study,
            "parent_val_accuracy": parent_acc,
            "parent_epochs": parent.fidelity if parent is not None else None,
            "gain": gain, "outcome": outcome,
            "morph": _morph_words(store, child, parent, specs),
        })
    inherited = [e for e in edges if e["state"] == "complete" and e["val_accuracy"] is not None]
    compared = [e for e in inherited if e["gain"] is not None]
    heirs = {e["run"] for e in inherited}
    own = [r.fidelity for r in trained if r.id not in heirs and r.fidelity is not None]
    full = _median(own)
    if full is None and trained:
        recipe = store.recipe(trained[0].recipe_id) if trained[0].recipe_id else None
        epochs = (recipe or {}).get("epochs")
        full = epochs if isinstance(epochs, int) else None
    summary = {
        "trained": len(trained),
        "inherited": len(inherited),
        "share": len(inherited) / len(trained) if trained else None,
        "other_study": sum(1 for e in inherited if not e["same_study"]),
        "compared": len(compared),
        "above": sum(1 for e in compared if e["outcome"] == "above"),
        "below": sum(1 for e in compared if e["outcome"] == "below"),
        "tie": sum(1 for e in compared if e["outcome"] == "tie"),
        "median_gain": _median([e["gain"] for e in compared]),
        "median_epochs": _median([e["epochs"] for e in inherited if e["epochs"] is not None]),
        "full_epochs": full,
        "not_complete": len(edges) - len(inherited),
    }
    return {
        "edges": edges,
        "nodes": {"trial": [r.trial_number for r in trained],
                  "val_accuracy": [r.val_accuracy for r in trained]},
        "summary": summary,
    }
