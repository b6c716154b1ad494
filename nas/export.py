"""`nas export`: the chosen trial's network as a bundle of formats, each checked before success.

A bundle holds `architecture.json`, `recipe.json`, `metrics.json` and `README.md` (model card)
always, plus any of: `model.safetensors`, `model.py` (standalone source, needs only torch),
`model.onnx`, `model.pt2` (torch.export). Every format written is loaded back from disk and run
on a fixed batch; its outputs must match the trained model (rebuilt from the store) within
`TOLERANCE`, or the export fails. Nothing in a bundle is a pickle: weights are safetensors or
the raw tensor bytes of torch.export's archive, configs are JSON.

This module chooses the run and writes the bundle; `nas.export_formats` writes and checks
each model format.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas import model_card
from nas.errors import UserError
from nas.export_formats import (
    FORMAT_FILES,
    FORMATS,
    ONNX_OPSET,
    PARITY_BATCH,
    SECOND_BATCH,
    TOLERANCE,
    ExportError,
    check_parity,
    export_program,
    fixed_batch,
    input_info,
    is_pickle,
    load_model,
    onnx_unavailable,
    parse_formats,
    pickle_members,
    write_model_py,
    write_onnx,
    write_pt2,
    write_safetensors,
)
from nas.study import best_trials, open_storage
from nas.weights import Artifacts
from search_spaces import ArchitectureSpec

# The export's API. The format helpers live in nas.export_formats since the split; they are
# listed here too because tests and scripts import them from nas.export.
__all__ = [
    "FORMATS", "FORMAT_FILES", "METRICS", "ONNX_OPSET", "PARITY_BATCH", "SECOND_BATCH",
    "TOLERANCE", "ExportError", "ExportReport", "choose_run", "export", "fixed_batch",
    "input_info", "is_pickle", "load_model", "onnx_unavailable", "parse_formats",
    "pickle_members", "retrain_hint", "weights_for",
]

# --metric: run field -> better direction.
METRICS = {
    "val_accuracy": "max",
    "best_val_accuracy": "max",
    "val_loss": "min",
    "latency_ms": "min",
    "params": "min",
    "flops": "min",
}


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
    tolerance: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # format -> write + check time


# -- choosing the run -----------------------------------------------------------------------------
def _no_runs(store: Store, study: str) -> UserError:
    known = ", ".join(store.study_names()) or "none"
    return UserError(f"study `{study}` has no runs in {store.display_url}; studies: {known}")


def choose_run(
    store: Store,
    study: str,
    trial: int | None = None,
    *,
    metric: str | None = None,
    pareto: int | None = None,
) -> RunRecord:
    """The run to export: `trial`'s, the `pareto`-th point of the Pareto front (0-based, by
    accuracy, best first), or the best complete run by `metric` (default `val_accuracy`;
    ties: fewer params, then the earlier trial)."""
    chosen = [n for n, v in (("--trial", trial), ("--pareto", pareto)) if v is not None]
    if metric is not None and chosen:
        chosen.append("--metric")
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} choose a trial in different ways; give one of them")
    runs = store.runs(study)
    if not runs:
        raise _no_runs(store, study)
    if trial is not None:
        run = store.run_for_trial(study, trial)
        if run is None:
            have = sorted(r.trial_number for r in runs)
            raise UserError(
                f"study `{study}` has no trial {trial}; it has trials {have[0]}..{have[-1]}"
                if have else f"study `{study}` has no trial {trial}"
            )
        return run
    if pareto is not None:
        return _pareto_run(store, study, pareto)
    metric = metric or "val_accuracy"
    if metric not in METRICS:
        raise UserError(f"`--metric` got {metric!r}; allowed: {' | '.join(METRICS)}")
    sign = 1.0 if METRICS[metric] == "max" else -1.0
    complete = [
        r for r in runs
        if r.state == "complete" and getattr(r, metric) is not None
        and math.isfinite(float(getattr(r, metric)))
    ]
    if not complete:
        raise UserError(f"study `{study}` has no complete trial with a `{metric}` yet")
    return max(complete, key=lambda r: (sign * float(getattr(r, metric)), -(r.params or 0), -r.trial_number))


def _pareto_run(store: Store, study: str, k: int) -> RunRecord:
    import optuna

    try:
        st = optuna.load_study(study_name=study, storage=open_storage(store.url))
    except KeyError:
        raise UserError(f"`--pareto` needs the Optuna study `{study}`, which is not in {store.display_url}") from None
    if len(st.directions) < 2:
        raise UserError(
            f"`--pareto` needs a multi-objective study; `{study}` optimises one objective "
            "(use --trial or --metric)"
        )
    objectives = (st.user_attrs.get("resnas") or {}).get("objectives") or ["accuracy", "params"]
    front = best_trials(st, store, objectives)
    if not front:
        raise UserError(f"the Pareto front of `{study}` is empty (no complete trial yet)")
    if not 0 <= k < len(front):
        listed = ", ".join(f"{i}: trial {p['trial']}" for i, p in enumerate(front[:10]))
        raise UserError(
            f"`--pareto` got {k}; the Pareto front of `{study}` has {len(front)} trial(s), "
            f"0-based by accuracy: {listed}"
        )
    run = store.run_for_trial(study, front[k]["trial"])
    if run is None:  # pragma: no cover - best_trials reads the same runs
        raise UserError(f"trial {front[k]['trial']} of `{study}` has no run in the store")
    return run


def weights_for(store: Store, run: RunRecord,
                artifacts: Artifacts | None = None) -> tuple[bytes | None, int | None]:
    """The trained weights of `run`, or of the run it was answered from (same arch and recipe),
    and that run's id; (None, None) if none were kept. Read through `artifacts` (default: the
    store's): weights missing or damaged there raise `nas.weights.WeightsError`."""
    artifacts = artifacts or Artifacts.open(store.url, store)
    if (data := artifacts.load(run)) is not None:
        return data, run.id
    source = store.get_run(run.cached_from) if run.cached_from is not None else None
    data = artifacts.load(source) if source is not None else None
    return (data, source.id) if data is not None else (None, None)


def retrain_hint(study: str, run: RunRecord, storage: str | None = None) -> str:
    """One line: why `run` has no weights to export, and the `nas retrain` command that gets them."""
    where = f" --storage {storage}" if storage else ""
    if (run.dataset or "").startswith("replay:"):
        return (f"trial {run.trial_number} of `{study}` was answered from the table "
                f"`{run.dataset.split(':', 1)[1]}` (`--replay`) and never trained, so it has no "
                f"weights to export; `nas trials {study}{where}` lists its architectures")
    if run.state != "complete":
        at = f" after {run.fidelity} epoch(s)" if run.state == "failed" and run.fidelity else ""
        why = f"was {run.state}{at}{' (' + run.reason + ')' if run.reason else ''}, so no fully trained weights were kept"
    elif run.cached_from is not None:
        why = f"was answered from run {run.cached_from}, whose weights were not kept"
    else:
        why = "completed, but its weights were not kept"
    return (
        f"trial {run.trial_number} of `{study}` {why}; get them with "
        f"`nas retrain {study} --trial {run.trial_number}{where}`, then `nas export {study}.retrain{where}`"
    )


# -- export ----------------------------------------------------------------------------------------
# What a bundle directory holds (model.py's import leaves __pycache__ beside it).
BUNDLE_FILES = frozenset({"architecture.json", "recipe.json", "metrics.json", "README.md",
                          "__pycache__", *FORMAT_FILES.values()})


def _bundle_dir(out: Path, *, force: bool) -> Path:
    """`out`, checked before anything is trained or written: a directory that is empty, new,
    or an earlier bundle (whose files are replaced); anything else only with `force`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"`--out` {out} is a file; give a directory for the bundle")
    if out.is_dir() and not force:
        try:
            foreign = sorted(p.name for p in out.iterdir() if p.name not in BUNDLE_FILES)
        except OSError as exc:
            raise UserError(f"cannot read the directory {out}: {exc.strerror or exc}") from None
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UserError(f"`--out` {out} holds files that are not a resnas bundle ({listed}); "
                            "choose an empty or new directory, or --force to write beside them")
    return out


def export(
    store: Store,
    study: str,
    out: str | Path,
    *,
    trial: int | None = None,
    pareto: int | None = None,
    metric: str | None = None,
    formats: str | list[str] | tuple[str, ...] | None = None,
    force: bool = False,
    artifacts: Artifacts | None = None,
) -> ExportReport:
    """Write the bundle of `study`'s chosen run to `out` and check every format in it.

    Args:
        store: the store holding the study's runs, architectures, recipes and weights.
        study: the study name (a retraining's study is `<study>.retrain`).
        out: the bundle directory (created; our files in it are overwritten).
        trial / pareto / metric: how to choose the run (see `choose_run`); default the best
            complete run by validation accuracy.
        formats: which model formats to write (see `FORMATS`; default all). The JSON files and
            the README are always written. `model_py` brings `safetensors` along.
        force: write into a directory that holds other files than a bundle's.
        artifacts: where the weights are (`nas.weights.Artifacts`; default: the store's).

    Raises:
        UserError: nothing to export (unknown study or trial, no weights kept: the message
            names `nas retrain`; damaged ones: `WeightsError`), or a format failed its parity
            check (`ExportError`).
    """
    import torch

    out = _bundle_dir(Path(out), force=force)
    wanted = list(parse_formats(formats))
    notes: list[str] = []
    if "model_py" in wanted and "safetensors" not in wanted:
        wanted.insert(0, "safetensors")
        notes.append("model.py reads model.safetensors, so it is written too")
    run = choose_run(store, study, trial, metric=metric, pareto=pareto)
    storage_hint = None if store.display_url.startswith("sqlite:///nas.db") else store.display_url
    if run.state != "complete":
        raise UserError(retrain_hint(study, run, storage_hint))
    arch = store.architecture(run.arch_id)
    if arch is None:
        raise UserError(f"architecture {run.arch_id} of trial {run.trial_number} is not in the store")
    spec = ArchitectureSpec.from_dict(arch)
    weights, source = weights_for(store, run, artifacts)
    if weights is None:
        raise UserError(retrain_hint(study, run, storage_hint))
    recipe = store.recipe(run.recipe_id) if run.recipe_id else None
    try:
        reference_model = load_model(spec, weights)
    except Exception as exc:  # noqa: BLE001 - corrupt or mismatched weights: say which run
        raise UserError(
            f"the stored weights of run {source} do not load into architecture {spec.arch_id}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    info = input_info(spec, recipe)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the bundle directory {out}: {exc.strerror or exc}") from None
    architecture = {
        "arch_id": spec.arch_id,
        "summary": spec.summary(),
        "spec": spec.to_dict(),
        "input": info,
    }
    (out / "architecture.json").write_text(json.dumps(architecture, indent=2, sort_keys=True) + "\n")
    recipe_doc = {"recipe_id": run.recipe_id, **(recipe or {})}
    (out / "recipe.json").write_text(json.dumps(recipe_doc, indent=2, sort_keys=True) + "\n")

    # The reference: the trained model rebuilt from the store, on two fixed batches.
    batch = fixed_batch(spec, recipe)
    with torch.no_grad():
        batches = [(x, reference_model(x)) for x in (batch, batch[:SECOND_BATCH])]

    report = ExportReport(
        out=out, study=study, trial=run.trial_number, run_id=run.id or -1, arch_id=spec.arch_id,
        val_accuracy=run.val_accuracy, weights_from_run=source, notes=notes,
    )
    title = f"{study} trial {run.trial_number} (run {run.id})"
    program = None
    for fmt in wanted:
        started = time.perf_counter()
        if fmt == "onnx" and (why := onnx_unavailable()):
            report.skipped[fmt] = why
            continue
        try:
            if fmt == "safetensors":
                diff = write_safetensors(out, weights, spec, batches)
            elif fmt == "model_py":
                diff = write_model_py(out, spec, info, title, batches)
            else:
                if program is None:
                    program = export_program(reference_model, batch)
                diff = write_pt2(out, program, batches) if fmt == "pt2" else write_onnx(out, program, batches)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"writing {FORMAT_FILES[fmt]} failed ({type(exc).__name__}: {first[:300]}); "
                f"leave it out with --formats"
            ) from None
        check_parity(fmt, diff)
        report.max_abs_diff[fmt] = diff
        report.tolerance[fmt] = TOLERANCE[fmt]
        report.seconds[fmt] = time.perf_counter() - started
        report.files.append(FORMAT_FILES[fmt])

    metrics = _metrics(store, run, source, spec, report, info)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    card = model_card.render({
        "study": study,
        "run": run,
        "spec": spec,
        "metrics": metrics,
        "recipe": recipe,
        "input": info,
        "parity": metrics["parity"],
        "skipped": report.skipped,
        "storage": store.display_url,
        "weights_from_run": source,
        "exported_at": metrics["exported_at"],
        "retrain_of": (run.extra or {}).get("retrain_of"),
        "seed": (run.extra or {}).get("seed"),
        "batch_note": f"{PARITY_BATCH} and {SECOND_BATCH} seeded random normal images",
    })
    (out / "README.md").write_text(card)
    report.files = ["architecture.json", "recipe.json", *report.files, "metrics.json", "README.md"]
    return report


def _metrics(
    store: Store, run: RunRecord, source: int | None, spec: ArchitectureSpec,
    report: ExportReport, info: dict[str, Any],
) -> dict[str, Any]:
    measured = store.get_run(source) if source not in (None, run.id) else run
    measured = measured or run
    epochs = store.epochs(measured.id) if measured.id is not None else []
    fields = ("val_accuracy", "best_val_accuracy", "val_loss", "params", "flops", "latency_ms",
              "latency_ms_batch", "samples_per_s", "peak_memory_mb", "device", "host",
              "duration_s", "fidelity", "dataset", "recipe_id")
    data: dict[str, Any] = {k: getattr(measured, k, None) for k in fields}
    # The exported trial's own identity (a cached trial's measurements are its source's).
    data.update(
        study=run.study, trial=run.trial_number, run_id=run.id, state=run.state,
        arch_id=spec.arch_id, weights_from_run=source, cached_from=run.cached_from,
        params=run.params if run.params is not None else measured.params,
        flops=run.flops if run.flops is not None else measured.flops,
        flops_unit="multiply-adds per image", latency_unit="ms, median, batch 1, eval mode",
        extra=run.extra or {},
        input=info,
        epochs=[e.__dict__ for e in epochs],
        parity={
            fmt: {"file": FORMAT_FILES[fmt], "max_abs_diff": report.max_abs_diff[fmt],
                  "tolerance": report.tolerance[fmt], "seconds": round(report.seconds[fmt], 3)}
            for fmt in report.max_abs_diff
        },
        skipped=report.skipped,
        exported_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        versions=_versions(),
    )
    return data


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "safetensors", "onnx", "onnxruntime"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out
