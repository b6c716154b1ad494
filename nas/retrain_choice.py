"""What `nas retrain` retrains: the best architectures of a study, one trial's, or an
architecture.json (with the recipe and origin its export bundle records)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas.errors import UserError
from nas.jsonfile import read_json
from nas.proposer import resolve_architecture
from search_spaces import ArchitectureSpec


@dataclass
class Candidate:
    """One architecture to retrain, and where it came from."""

    spec: ArchitectureSpec
    recipe: dict[str, Any]  # the base recipe (epochs and seed are replaced per run)
    retrain_of: dict[str, Any]  # {"study", "trial"} or {"study": None, "trial": None, "file"}
    search_accuracy: float | None = None
    search_fidelity: int | None = None



def _base_recipe(store: Store, run: RunRecord) -> dict[str, Any]:
    # A child of `--inherit` trained a few epochs from its parent's weights; from scratch,
    # the recipe is its search's.
    searched = run.inherit.get("search_recipe")
    recipe = store.recipe(searched) if isinstance(searched, str) else None
    recipe = recipe or (store.recipe(run.recipe_id) if run.recipe_id else None)
    if recipe is None:
        raise UserError(
            f"the recipe {run.recipe_id} of trial {run.trial_number} of `{run.study}` is not in the store"
        )
    return recipe


def candidates_from_study(
    store: Store, study: str, *, top: int | None = None, trial: int | None = None
) -> list[Candidate]:
    """The `top` best distinct architectures of `study` (default 1), or `trial`'s."""
    if top is not None and trial is not None:
        raise UserError("--top and --trial choose architectures in different ways; give one of them")
    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.study_names()) or "none"
        raise UserError(f"study `{study}` has no runs in {store.display_url}; studies: {known}")
    if trial is not None:
        run = store.run_for_trial(study, trial)
        if run is None:
            raise UserError(f"study `{study}` has no trial {trial}")
        chosen = [run]
    else:
        k = 1 if top is None else top
        if k < 1:
            raise UserError(f"`--top` got {k}; allowed: an integer >= 1")
        complete = sorted(
            (r for r in runs if r.state == "complete" and r.val_accuracy is not None),
            key=lambda r: (-r.val_accuracy, r.params or 0, r.trial_number),
        )
        if not complete:
            raise UserError(f"study `{study}` has no complete trial to retrain (use --trial N)")
        chosen, seen = [], set()
        for r in complete:
            if r.arch_id not in seen:
                seen.add(r.arch_id)
                chosen.append(r)
            if len(chosen) == k:
                break
    out = []
    for r in chosen:
        arch = store.architecture(r.arch_id)
        if arch is None:
            raise UserError(f"architecture {r.arch_id} of trial {r.trial_number} is not in the store")
        out.append(
            Candidate(
                spec=ArchitectureSpec.from_dict(arch),
                recipe=_base_recipe(store, r),
                retrain_of={"study": study, "trial": r.trial_number},
                search_accuracy=r.val_accuracy if r.state == "complete" else None,
                search_fidelity=r.fidelity,
            )
        )
    return out


def candidate_from_file(path: Path) -> tuple[Candidate, str | None]:
    """The architecture in `path` (an architecture.json, e.g. of an export bundle), with the
    bundle's recipe.json and the study it came from (metrics.json) when they lie beside it."""
    from workers import TrainConfig, dataset_info

    recipe: dict[str, Any] = {}
    recipe_file = path.parent / "recipe.json"
    if recipe_file.is_file():
        data = read_json(recipe_file)
        if not isinstance(data, dict):
            raise UserError(f"{recipe_file}: expected a JSON object of recipe fields")
        recipe = {k: v for k, v in data.items() if k != "recipe_id"}
    try:
        config = TrainConfig.from_dict(recipe)
        data = dataset_info(config)
    except ValueError as exc:
        raise UserError(f"{recipe_file}: {exc}") from None
    spec = resolve_architecture(str(path), in_channels=data.in_channels, num_classes=data.num_classes)
    retrain_of: dict[str, Any] = {"study": None, "trial": None, "file": str(path)}
    study = None
    metrics_file = path.parent / "metrics.json"
    accuracy = fidelity = None
    if metrics_file.is_file():
        try:
            metrics = read_json(metrics_file)
            if metrics.get("arch_id") == spec.arch_id and metrics.get("study"):
                study = str(metrics["study"])
                retrain_of.update(study=study, trial=metrics.get("trial"))
                accuracy, fidelity = metrics.get("val_accuracy"), metrics.get("fidelity")
        except (UserError, AttributeError):  # not ours, or damaged: it only names the study
            pass
    return Candidate(spec, config.to_dict(), retrain_of, accuracy, fidelity), study
