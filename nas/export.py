"""`nas export`: the chosen trial's network as a bundle of formats, each checked before success.

A bundle holds `architecture.json`, `recipe.json`, `metrics.json` and `README.md` (model card)
always, plus any of: `model.safetensors`, `model.py` (standalone source, needs only torch),
`model.onnx`, `model.pt2` (torch.export). Every format written is loaded back from disk and run
on a fixed batch; its outputs must match the trained model (rebuilt from the store) within
`TOLERANCE`, or the export fails. Nothing in a bundle is a pickle: weights are safetensors or
the raw tensor bytes of torch.export's archive, configs are JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import sys
import time
import types
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import RunRecord, Store
from nas.errors import UserError
from search_spaces import ArchitectureSpec

FORMATS = ("safetensors", "model_py", "onnx", "pt2")
FORMAT_FILES = {
    "safetensors": "model.safetensors",
    "model_py": "model.py",
    "onnx": "model.onnx",
    "pt2": "model.pt2",
}
# Max |difference| of outputs allowed per format. safetensors and model.py rebuild the same
# modules with the same kernels, so they must match bit for bit; ONNX Runtime and torch.export
# may fuse or reorder float ops (e.g. fold BatchNorm into convs), hence a small absolute slack.
TOLERANCE = {"safetensors": 0.0, "model_py": 0.0, "onnx": 1e-4, "pt2": 1e-4}
# --metric: run field -> better direction.
METRICS = {
    "val_accuracy": "max",
    "best_val_accuracy": "max",
    "val_loss": "min",
    "latency_ms": "min",
    "params": "min",
    "flops": "min",
}
# Parity batches: a fixed one, plus a smaller one that exercises the dynamic batch axis.
PARITY_BATCH = 8
SECOND_BATCH = 3
ONNX_OPSET = 18

log = logging.getLogger(__name__)


class ExportError(UserError):
    """A format could not be written, or its outputs differ from the trained model."""


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
def parse_formats(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`"onnx,pt2"` -> ("onnx", "pt2") in canonical order; None -> every format."""
    if text is None:
        return FORMATS
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted = {i.strip().lower().replace("-", "_").replace(".", "_") for i in items if i.strip()}
    aliases = {"model": "model_py", "modelpy": "model_py", "py": "model_py", "torch_export": "pt2"}
    wanted = {aliases.get(w, w) for w in wanted}
    unknown = sorted(wanted - set(FORMATS))
    if unknown or not wanted:
        raise UserError(
            f"`--formats` got {','.join(unknown) or repr(text)}; allowed: a comma-separated subset "
            f"of {','.join(FORMATS)}"
        )
    return tuple(f for f in FORMATS if f in wanted)


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

    from nas.search import best_trials, open_storage

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


def weights_for(store: Store, run: RunRecord) -> tuple[bytes | None, int | None]:
    """The trained weights of `run`, or of the run it was answered from (same arch and recipe)."""
    data = store.weights(run.id) if run.id is not None else None
    if data is not None:
        return data, run.id
    if run.cached_from is not None:
        cached = store.weights(run.cached_from)
        return (cached, run.cached_from) if cached is not None else (None, None)
    return None, None


def retrain_hint(study: str, run: RunRecord, storage: str | None = None) -> str:
    """One line: why `run` has no weights to export, and the `nas retrain` command that gets them."""
    if run.state != "complete":
        at = f" after {run.fidelity} epoch(s)" if run.state == "failed" and run.fidelity else ""
        why = f"was {run.state}{at}{' (' + run.reason + ')' if run.reason else ''}, so no fully trained weights were kept"
    elif run.cached_from is not None:
        why = f"was answered from run {run.cached_from}, whose weights were not kept"
    else:
        why = "completed, but its weights were not kept"
    where = f" --storage {storage}" if storage else ""
    return (
        f"trial {run.trial_number} of `{study}` {why}; get them with "
        f"`nas retrain {study} --trial {run.trial_number}{where}`, then `nas export {study}.retrain{where}`"
    )


def load_model(spec: ArchitectureSpec, weights: bytes):
    """`build_model(spec)` with the safetensors `weights` loaded, in eval mode."""
    from safetensors.torch import load as load_safetensors

    from search_spaces import build_model

    model = build_model(spec)
    model.load_state_dict(load_safetensors(weights), strict=True)
    return model.eval()


def fixed_batch(spec: ArchitectureSpec, recipe: dict[str, Any] | None, n: int = PARITY_BATCH):
    """A deterministic input batch of the right shape for parity checks."""
    import torch

    size = _input_size(recipe)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, spec.in_channels, *size, generator=gen)


def _input_size(recipe: dict[str, Any] | None) -> tuple[int, int]:
    from workers import TrainConfig, dataset_info

    if recipe is not None:
        try:
            return tuple(dataset_info(TrainConfig.from_dict(recipe)).input_size)
        except Exception:  # noqa: BLE001 - data not available here: any size works for convs
            pass
    return (32, 32)


def input_info(spec: ArchitectureSpec, recipe: dict[str, Any] | None) -> dict[str, Any]:
    """What the network expects: channels, size, split sizes and, where cheap to compute
    (digits, npz files), the normalisation statistics. Never downloads a dataset."""
    from workers import TrainConfig, dataset_info

    h, w = _input_size(recipe)
    info: dict[str, Any] = {"channels": spec.in_channels, "height": h, "width": w}
    if recipe is None:
        return info
    try:
        config = TrainConfig.from_dict(recipe)
        shape = dataset_info(config)
        info.update(num_train=shape.num_train, num_val=shape.num_val, dataset=config.dataset)
        if config.dataset == "digits" or config.dataset.startswith("npz:"):
            from workers import load_data

            data = load_data(config)
            info.update(mean=list(data.mean), std=list(data.std))
    except Exception as exc:  # noqa: BLE001 - informative only
        log.debug("input statistics unavailable: %s", exc)
    return info


# -- parity --------------------------------------------------------------------------------------
def _max_diff(reference, outputs) -> float:
    import torch

    outputs = torch.as_tensor(outputs)
    if tuple(outputs.shape) != tuple(reference.shape):
        return math.inf
    diff = (reference.double() - outputs.double()).abs()
    if not bool(torch.isfinite(outputs).all()):
        return math.inf
    return float(diff.max()) if diff.numel() else 0.0


def _check(fmt: str, diff: float) -> None:
    tol = TOLERANCE[fmt]
    if not diff <= tol:
        raise ExportError(
            f"export check failed: {FORMAT_FILES[fmt]} differs from the trained model by "
            f"{diff:.3g} (allowed {tol:g}); leave it out with --formats, and report this"
        )


def _run_both(fn, batches) -> float:
    """Max |difference| of `fn`'s outputs from the reference outputs over all batches."""
    import torch

    with torch.no_grad():
        return max(_max_diff(ref, fn(x)) for x, ref in batches)


@contextlib.contextmanager
def _quiet_exporters():
    """torch.onnx and torch.export log warnings (e.g. 'torchvision is not installed') that are
    noise for a user; errors still raise."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental")
    previous = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in previous.items():
            logging.getLogger(n).setLevel(level)


def _batch_dim():
    import torch

    return torch.export.Dim("batch", min=1, max=1 << 16)


def _torch_export(model, batch):
    import torch

    with _quiet_exporters():
        program = torch.export.export(model, (batch,), dynamic_shapes=({0: _batch_dim()},), strict=False)
    # torch.export.save pickles `example_inputs` (torch.save) into the archive; without them the
    # archive holds only JSON and raw tensor bytes, and torch.export.load unpickles nothing.
    program.example_inputs = None
    return program


def pickle_members(path: str | Path) -> list[str]:
    """Members of a zip archive (torch.export's .pt2) that are pickles or torch.save archives."""
    found = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            head = archive.read(info.filename)[:4] if info.file_size else b""
            if info.filename.endswith((".pkl", ".pickle")) or head[:1] == b"\x80" or head == b"PK\x03\x04":
                found.append(info.filename)
    return found


def is_pickle(path: str | Path) -> bool:
    """True for a pickle file, a torch.save zip (which holds data.pkl) or a zip with pickles."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80":
        return True
    if head == b"PK\x03\x04":
        return bool(pickle_members(path))
    return False


def onnx_unavailable() -> str | None:
    """None when ONNX export and checking work here, else why not (for a skip line)."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'resnas[export]')"
    return None


def _write_safetensors(out: Path, weights: bytes, spec: ArchitectureSpec, batches) -> float:
    from safetensors.torch import load_file

    from search_spaces import build_model

    path = out / FORMAT_FILES["safetensors"]
    path.write_bytes(weights)
    reloaded = build_model(ArchitectureSpec.from_dict(json.loads((out / "architecture.json").read_text())["spec"]))
    reloaded.load_state_dict(load_file(str(path)), strict=True)
    reloaded.eval()
    return _run_both(reloaded, batches)


def _write_model_py(out: Path, spec: ArchitectureSpec, info: dict[str, Any], title: str, batches) -> float:
    from nas.standalone import render

    path = out / FORMAT_FILES["model_py"]
    path.write_text(render(spec, input_info=info, title=title))
    # Executed from the file's text, not imported: no __pycache__ is left in the bundle.
    name = f"_resnas_bundle_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        exec(compile(path.read_text(), str(path), "exec"), module.__dict__)  # noqa: S102 - our own file
        model = module.load(str(out / FORMAT_FILES["safetensors"]))
        return _run_both(model, batches)
    finally:
        sys.modules.pop(name, None)


def _write_pt2(out: Path, program, batches) -> float:
    import torch

    path = out / FORMAT_FILES["pt2"]
    with _quiet_exporters():
        torch.export.save(program, str(path))
    bad = pickle_members(path)
    if bad:
        raise ExportError(f"model.pt2 would hold pickled members {bad}; not writing a pickle")
    with _quiet_exporters():
        loaded = torch.export.load(str(path)).module()
    return _run_both(loaded, batches)


def _write_onnx(out: Path, program, batches) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch

    path = out / FORMAT_FILES["onnx"]
    with _quiet_exporters(), contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            program,
            f=str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _run_both(
        lambda x: torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0])), batches
    )


# -- export ----------------------------------------------------------------------------------------
def export(
    store: Store,
    study: str,
    out: str | Path,
    *,
    trial: int | None = None,
    pareto: int | None = None,
    metric: str | None = None,
    formats: str | list[str] | tuple[str, ...] | None = None,
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

    Raises:
        UserError: nothing to export (unknown study or trial, no weights kept: the message
            names `nas retrain`), or a format failed its parity check (`ExportError`).
    """
    import torch

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
    weights, source = weights_for(store, run)
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

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
                diff = _write_safetensors(out, weights, spec, batches)
            elif fmt == "model_py":
                diff = _write_model_py(out, spec, info, title, batches)
            else:
                if program is None:
                    program = _torch_export(reference_model, batch)
                diff = _write_pt2(out, program, batches) if fmt == "pt2" else _write_onnx(out, program, batches)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"writing {FORMAT_FILES[fmt]} failed ({type(exc).__name__}: {first[:300]}); "
                f"leave it out with --formats"
            ) from None
        _check(fmt, diff)
        report.max_abs_diff[fmt] = diff
        report.tolerance[fmt] = TOLERANCE[fmt]
        report.seconds[fmt] = time.perf_counter() - started
        report.files.append(FORMAT_FILES[fmt])

    metrics = _metrics(store, run, source, spec, report, info)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    from nas import model_card

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
