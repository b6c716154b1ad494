"""`nas export`, `nas retrain` and `nas analyze`: the commands that turn a study into results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nas.cli_common import (
    DEFAULT_STORAGE,
    ArtifactsOpt,
    StorageOpt,
    console,
    err_console,
    open_store,
    user_errors,
)
from nas.errors import UserError

# Plain functions here: nas.cli registers them on its `app` in the order `nas --help` lists
# them. The machinery (torch, Ray, the exporters) is imported inside each command, so that
# `nas --help` stays fast.


# -- export -------------------------------------------------------------------------------------
@user_errors
def export_cmd(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study to export from.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Directory for the bundle.")] = Path("exports/model"),
    storage: StorageOpt = DEFAULT_STORAGE,
    trial: Annotated[int | None, typer.Option(metavar="N", help="Export this trial instead of the best.  \\[default: the best]")] = None,
    pareto: Annotated[int | None, typer.Option(metavar="K", help="Export the K-th trial (0-based, by accuracy) of a multi-objective study's Pareto front (`nas best` lists them).  \\[default: none]")] = None,
    metric: Annotated[str | None, typer.Option(metavar="METRIC", help="Best by this run metric: val_accuracy | best_val_accuracy | val_loss | latency_ms | params | flops.  \\[default: val_accuracy]")] = None,
    formats: Annotated[str, typer.Option(metavar="LIST", help="Model formats to write (architecture/recipe/metrics JSON and README always): a subset of safetensors,model_py,onnx,pt2.")] = "safetensors,model_py,onnx,pt2",
    force: Annotated[bool, typer.Option("--force", metavar="", help="Write into a directory that holds other files than a bundle's.")] = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Write the chosen trial as a bundle (safetensors, standalone model.py, ONNX, torch.export, model card), each format checked against the trained model."""
    from nas.export import FORMAT_FILES, export
    from nas.weights import Artifacts

    store = open_store(storage)
    report = export(store, study, out, trial=trial, pareto=pareto, metric=metric, formats=formats,
                    force=force, artifacts=Artifacts.open(store.url, store, artifacts))
    acc = f"{report.val_accuracy:.4f}" if report.val_accuracy is not None else "-"
    source = "" if report.weights_from_run in (None, report.run_id) else f", weights of run {report.weights_from_run}"
    console.print(
        f"exported trial {report.trial} of `{study}` (val_accuracy {acc}, arch {report.arch_id}"
        f"{source}) to {report.out}/",
        highlight=False, soft_wrap=True,
    )
    for name in report.files:
        console.print(f"  {name}", highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    for fmt, diff in report.max_abs_diff.items():
        console.print(
            f"  parity {fmt:<11} {FORMAT_FILES[fmt]:<17} max |diff| = {diff:.3g} "
            f"(tolerance {report.tolerance[fmt]:g})",
            highlight=False, soft_wrap=True,
        )
    for fmt, why in report.skipped.items():
        console.print(f"  skipped {fmt}: {why}", highlight=False, soft_wrap=True)


# -- retrain ------------------------------------------------------------------------------------
@user_errors
def retrain(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="A study name (its best architecture), or an architecture.json (e.g. from an export bundle).")],
    epochs: Annotated[int | None, typer.Option(metavar="N", help="Training epochs per run (full fidelity).  \\[default: the recipe default, at least the search's]")] = None,
    seeds: Annotated[int, typer.Option(metavar="S", help="Runs per architecture, with seeds 0..S-1.")] = 3,
    top: Annotated[int | None, typer.Option(metavar="K", help="Retrain the K best distinct architectures of the study and check whether their ranking holds.  \\[default: none: the best one]")] = None,
    trial: Annotated[int | None, typer.Option(metavar="N", help="Retrain this trial's architecture (any state, e.g. pruned).  \\[default: none]")] = None,
    study: Annotated[str | None, typer.Option("--study", metavar="NAME", help="Study to record the runs in.  \\[default: STUDY.retrain]")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    ray_address: Annotated[str | None, typer.Option(metavar="HOST:PORT", help="Join this Ray cluster instead of starting a local one.  \\[default: a Ray of its own]")] = None,
    workers: Annotated[int | None, typer.Option(metavar="N", help="Runs in flight at once.  \\[default: all, as Ray's CPUs allow]")] = None,
    cpus_per_trial: Annotated[float, typer.Option(metavar="N", help="CPUs reserved per run.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(metavar="N", help="GPUs per run; fractions share a GPU.")] = 0.0,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Train the chosen architecture(s) at full fidelity with several seeds on Ray; record the runs (weights kept) in STUDY.retrain."""
    from nas.retrain import retrain as run_retrain
    from nas.weights import Artifacts

    store = open_store(storage)
    report = run_retrain(
        store, source, epochs=epochs, seeds=seeds, top=top, trial=trial, study=study,
        ray_address=ray_address, workers=workers, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, progress=lambda line: console.print(line, highlight=False, soft_wrap=True),
        artifacts=Artifacts.open(store.url, store, artifacts),
    )
    console.print(
        f"\n[bold]{report.study}[/]: {len(report.runs)} run(s) of {report.epochs} epochs in "
        f"{report.wall_s:.1f}s",
        highlight=False, soft_wrap=True,
    )
    for a in report.archs:
        origin = a.retrain_of
        where = f"trial {origin['trial']}" if origin.get("trial") is not None else origin.get("file", "file")
        search = (
            f"; search: {a.search_accuracy:.4f} at {a.search_fidelity} epoch(s)"
            if a.search_accuracy is not None else ""
        )
        if a.mean is None:
            console.print(f"  {where} ({a.arch_id}): no run completed{search}", highlight=False, soft_wrap=True)
        else:
            console.print(
                f"  {where} ({a.arch_id}): val_accuracy mean {a.mean:.4f} ± {a.std:.4f} (std over "
                f"{len(a.accuracies)} seed(s)){search}  {a.summary}",
                highlight=False, soft_wrap=True,
            )
    if report.ranking is not None:
        r = report.ranking
        tau = "-" if r["kendall_tau"] is None else f"{r['kendall_tau']:.2f}"
        verdict = "holds (same order)" if r["holds"] else "changes"
        console.print(f"ranking of the {r['n']} architectures at full fidelity {verdict}; Kendall tau {tau}", highlight=False, soft_wrap=True)
    if not any(a.accuracies for a in report.archs):
        err_console.print("error: no retraining run completed; see the reasons above")
        raise typer.Exit(1)
    console.print(f"export the best: nas export {report.study} --storage {storage} --out exports/{report.study}", highlight=False, soft_wrap=True)


# -- analyze ------------------------------------------------------------------------------------
@user_errors
def analyze(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study to analyse (it may still be running).")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.html", help="HTML file to write (self-contained, opens offline).")] = Path("report.html"),
    png: Annotated[Path | None, typer.Option(metavar="DIR", help="Also write each figure as a PNG file in this directory.  \\[default: none]")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    top: Annotated[int, typer.Option(metavar="K", help="Rows of the top-architectures table.")] = 10,
) -> None:
    """Write an HTML report: history, parameter importance, Pareto front, cost plots, accuracy by depth per skip type, error EDFs, top architectures. Reads only."""
    from db import Store
    from nas.analyze import analyze as write_report

    # migrate=False: analysis never writes; a store behind the code's schema says so instead.
    if storage.startswith("sqlite:///") and storage[len("sqlite:///"):] not in ("", ":memory:"):
        db_file = Path(storage[len("sqlite:///"):].split("?", 1)[0])
        if not db_file.is_file():
            raise UserError(f"no database file at {db_file} (from --storage {storage})")
    data = write_report(Store(storage, migrate=False), study, out, png_dir=png, top=max(1, top))
    c = data["counts"]
    best = data["best"]
    best_text = f"best val_accuracy {best['val_accuracy']:.4f} (trial {best['trial']})" if best else "no complete trial yet"
    console.print(
        f"wrote {out} for `{study}`: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
        f"{c.get('failed', 0)} failed, {c.get('running', 0)} running; {best_text}",
        highlight=False, soft_wrap=True,
    )
    if data["importance"]["note"]:
        console.print(f"  note: {data['importance']['note']}", highlight=False, soft_wrap=True)
    if data["inheritance"]["edges"]:
        from nas.report_family import inheritance_text

        console.print(f"  family tree: {inheritance_text(data)}", highlight=False, soft_wrap=True)
    if png is not None:
        console.print(f"  figures also in {png}/", highlight=False, soft_wrap=True)
    interactive = data.get("interactive") or {}
    if interactive.get("path"):
        console.print(f"  interactive version: {interactive['path']}", highlight=False, soft_wrap=True)
    elif interactive.get("note"):
        console.print(f"  note: {interactive['note']}", highlight=False, soft_wrap=True)
