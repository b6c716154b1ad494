"""`nas export`: the chosen trial's architecture and trained weights, checked before success."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas.errors import UserError
from search_spaces import ArchitectureSpec


@dataclass
class ExportReport:
    out: Path
    study: str
    trial: int
    run_id: int
    arch_id: str
    val_accuracy: float | None
    files: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    weights_from_run: int | None = None


def choose_run(store: Store, study: str, trial: int | None = None) -> RunRecord:
    """`trial`'s run, or the best complete run of `study` (ties: fewer params)."""
    runs = store.runs(study)
    if not runs:
        known = ", ".join(s["name"] for s in store.studies()) or "none"
        raise UserError(f"study `{study}` has no runs in {store.display_url}; studies: {known}")
    if trial is not None:
        run = store.run_for_trial(study, trial)
        if run is None:
            raise UserError(f"study `{study}` has no trial {trial}")
        return run
    complete = [r for r in runs if r.state == "complete" and r.val_accuracy is not None]
    if not complete:
        raise UserError(f"study `{study}` has no complete trial yet")
    return max(complete, key=lambda r: (r.val_accuracy, -(r.params or 0), -r.trial_number))


def weights_for(store: Store, run: RunRecord) -> tuple[bytes | None, int | None]:
    """The trained weights of `run`, or of the run it was answered from (same arch and recipe)."""
    data = store.weights(run.id) if run.id is not None else None
    if data is not None:
        return data, run.id
    if run.cached_from is not None:
        return store.weights(run.cached_from), run.cached_from
    return None, None


def load_model(spec: ArchitectureSpec, weights: bytes):
    """`build_model(spec)` with the safetensors `weights` loaded, in eval mode."""
    from safetensors.torch import load as load_safetensors

    from search_spaces import build_model

    model = build_model(spec)
    model.load_state_dict(load_safetensors(weights), strict=True)
    return model.eval()


def export(store: Store, study: str, out: str | Path, *, trial: int | None = None) -> ExportReport:
    import torch
    from safetensors.torch import load_file

    run = choose_run(store, study, trial)
    if run.state != "complete":
        raise UserError(
            f"trial {run.trial_number} of `{study}` is {run.state}"
            f"{' (' + run.reason + ')' if run.reason else ''}; it has no fully trained weights. "
            "Choose a complete trial with --trial, or retrain it."
        )
    arch = store.architecture(run.arch_id)
    if arch is None:
        raise UserError(f"architecture {run.arch_id} of trial {run.trial_number} is not in the store")
    spec = ArchitectureSpec.from_dict(arch)
    weights, source = weights_for(store, run)
    if weights is None:
        raise UserError(
            f"the weights of trial {run.trial_number} were not kept (answered from run "
            f"{run.cached_from}); retrain it to export."
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "architecture.json").write_text(
        json.dumps({"arch_id": spec.arch_id, "spec": spec.to_dict()}, indent=2, sort_keys=True) + "\n"
    )
    (out / "model.safetensors").write_bytes(weights)

    # Parity: the bundle, loaded back from disk alone, must reproduce the stored model.
    reference = load_model(spec, weights)
    reloaded_spec = ArchitectureSpec.from_dict(json.loads((out / "architecture.json").read_text())["spec"])
    from search_spaces import build_model

    reloaded = build_model(reloaded_spec)
    reloaded.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    reloaded.eval()
    batch = fixed_batch(spec, store.recipe(run.recipe_id) if run.recipe_id else None)
    with torch.inference_mode():
        diff = float((reference(batch) - reloaded(batch)).abs().max())
    if diff != 0.0:
        raise UserError(f"export check failed: reloaded model differs by {diff:g}")
    return ExportReport(
        out=out, study=study, trial=run.trial_number, run_id=run.id or -1, arch_id=spec.arch_id,
        val_accuracy=run.val_accuracy, files=["architecture.json", "model.safetensors"],
        max_abs_diff={"safetensors": diff}, weights_from_run=source,
    )


def fixed_batch(spec: ArchitectureSpec, recipe: dict[str, Any] | None, n: int = 8):
    """A deterministic input batch of the right shape for parity checks."""
    import torch

    from workers import TrainConfig, dataset_info

    size = (32, 32)
    if recipe is not None:
        try:
            size = tuple(dataset_info(TrainConfig.from_dict(recipe)).input_size)
        except Exception:  # noqa: BLE001 - data not available here: any size works for convs
            pass
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, spec.in_channels, *size, generator=gen)
