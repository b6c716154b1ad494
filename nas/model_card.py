"""The `README.md` of an export bundle: a model card written from the store's records."""

from __future__ import annotations

from typing import Any

from nas.report_figures import fmt_cell

FORMAT_FILES = {
    "safetensors": "model.safetensors",
    "model_py": "model.py",
    "onnx": "model.onnx",
    "pt2": "model.pt2",
}
FORMAT_TITLES = {
    "safetensors": "weights (safetensors) into resnas's builder",
    "model_py": "standalone model.py + model.safetensors",
    "onnx": "ONNX, run with onnxruntime",
    "pt2": "torch.export program",
}




def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def stage_rows(spec: Any, input_size: tuple[int, int]) -> list[list[Any]]:
    """Rows of the stage table (stem, stages, head) for the card and the analysis report."""
    from search_spaces.describe import stage_table

    rows = []
    for r in stage_table(spec, input_size):
        res = r.get("resolution")
        rows.append([
            r.get("name"),
            r.get("depth"),
            r.get("block"),
            r.get("skip"),
            r.get("stride"),
            f"{r.get('in_channels')} -> {r.get('out_channels')}",
            f"{res[0]}x{res[1]}" if res else None,
            fmt_cell(r.get("params")),
            fmt_cell(r.get("flops")),
        ])
    return rows


STAGE_HEADER = ["part", "blocks", "block", "skip", "stride", "channels", "output", "params", "MACs"]


def _load_snippets(formats: list[str], spec: Any, info: dict[str, Any]) -> str:
    c, h, w = spec.in_channels, info.get("height", 32), info.get("width", 32)
    shape = f"(1, {c}, {h}, {w})"
    out = []
    if "model_py" in formats:
        out.append(f"""### Standalone `model.py` (needs only torch and safetensors)

```python
import sys, torch
sys.path.insert(0, "path/to/this/bundle")
import model

net = model.load()            # reads model.safetensors next to model.py; eval mode
logits = net(torch.randn{shape})
```
`python model.py` loads the weights and runs one zero image as a smoke test.
""")
    if "safetensors" in formats:
        out.append(f"""### Weights into resnas's own builder

```python
import json, torch
from safetensors.torch import load_file
from search_spaces import ArchitectureSpec, build_model

spec = ArchitectureSpec.from_dict(json.load(open("architecture.json"))["spec"])
net = build_model(spec)
net.load_state_dict(load_file("model.safetensors"), strict=True)
net.eval()
logits = net(torch.randn{shape})
```
""")
    if "onnx" in formats:
        out.append(f"""### ONNX (dynamic batch axis; input `input`, output `logits`)

```python
import numpy as np, onnxruntime as ort

session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
x = np.random.randn{shape}.astype(np.float32)
logits = session.run(["logits"], {{"input": x}})[0]
```
""")
    if "pt2" in formats:
        out.append(f"""### torch.export program (dynamic batch axis)

```python
import torch

program = torch.export.load("model.pt2")   # JSON graph + raw weight bytes; nothing unpickled
net = program.module()
logits = net(torch.randn{shape})
```
""")
    return "\n".join(out)


def render(ctx: dict[str, Any]) -> str:
    """The model card. `ctx` holds what `nas.export.export` gathered (see there)."""
    spec = ctx["spec"]
    run = ctx["run"]
    metrics = ctx["metrics"]
    recipe = ctx.get("recipe") or {}
    info = ctx.get("input") or {}
    parity = ctx.get("parity") or {}
    skipped = ctx.get("skipped") or {}
    epochs = metrics.get("epochs") or []
    acc = metrics.get("val_accuracy")
    title = f"{ctx['study']} / trial {run.trial_number}: residual network {spec.arch_id}"
    lines = [f"# {title}", ""]
    lines.append(
        f"`{spec.summary()}` — {fmt_cell(metrics.get('params'))} parameters, "
        f"{fmt_cell(metrics.get('flops'))} multiply-adds per image, validation accuracy "
        f"{'-' if acc is None else f'{acc:.4f}'} on `{metrics.get('dataset')}` after "
        f"{metrics.get('fidelity')} epoch(s)."
    )
    lines.append("")
    lines.append(
        f"Exported by `nas export` on {ctx['exported_at']} from study `{ctx['study']}` "
        f"(run {run.id}; {ctx['storage']})."
    )
    if ctx.get("weights_from_run") not in (None, run.id):
        lines.append(
            f"This trial was answered from the cache: the weights and measurements are those of "
            f"run {ctx['weights_from_run']} (same architecture, recipe and dataset)."
        )
    inherit = (run.extra or {}).get("inherit") if run.inherited_from is not None else None
    if inherit:
        where = (f"trial {inherit.get('parent_trial')}" if inherit.get("parent_study") == ctx["study"]
                 else f"trial {inherit.get('parent_trial')} of study `{inherit.get('parent_study')}`")
        grown = "; ".join(inherit.get("morph") or []) or "a function-preserving morph"
        lines.append(
            f"It did not start from random weights: it grew from {where} (run "
            f"{run.inherited_from}, architecture {inherit.get('parent_arch_id')}) by {grown}, "
            f"and trained {run.fidelity} epoch(s) from there (`nas search --inherit`). "
            f"`nas retrain` trains the architecture from scratch."
        )
    if ctx.get("retrain_of"):
        ro = ctx["retrain_of"]
        lines.append(
            f"This is a full-fidelity retraining (seed {ctx.get('seed')}) of "
            f"{'trial ' + str(ro.get('trial')) + ' of study `' + str(ro.get('study')) + '`' if ro.get('study') else ro.get('file') or 'an architecture file'}."
        )

    # -- data
    lines += ["", "## Data", ""]
    ds = metrics.get("dataset")
    lines.append(
        f"- dataset: `{ds}`; {info.get('num_train', '-')} training and {info.get('num_val', '-')} "
        f"validation images (validation fraction {recipe.get('val_fraction', '-')}, split with a "
        "fixed seed independent of the trial seed). The reported accuracy is on that validation "
        "split, which also guided the search: it is optimistic; measure on a held-out test set "
        "before relying on it."
    )
    lines.append(
        f"- input: float32 NCHW, {spec.in_channels} channel(s), "
        f"{info.get('height', '-')}x{info.get('width', '-')} pixels; {spec.num_classes} classes "
        "(output: logits)."
    )
    if info.get("mean") is not None:
        lines.append(
            f"- normalisation: x = (pixels - mean) / std per channel, pixels scaled to [0, 1]; "
            f"mean = {[round(m, 6) for m in info['mean']]}, std = {[round(s, 6) for s in info['std']]} "
            "(statistics of the training split; also `INPUT` in model.py)."
        )
    else:
        lines.append(
            "- normalisation: x = (pixels - mean) / std per channel with the training split's "
            "statistics (pixels scaled to [0, 1]); they were not recomputed at export time for "
            f"`{ds}` (resnas computes them when it loads the dataset)."
        )

    # -- recipe
    lines += ["", "## Training recipe", ""]
    if recipe:
        lines.append(f"recipe `{run.recipe_id}` (also in recipe.json):")
        lines.append("")
        keys = [k for k in sorted(recipe) if k != "recipe_id"]
        lines.append(_table(["setting", "value"], [[f"`{k}`", f"`{recipe[k]}`"] for k in keys]))
    else:
        lines.append("The recipe of this run is not in the store.")

    # -- results
    lines += ["", "## Results", ""]
    rows = [
        ["validation accuracy (last epoch)", fmt_cell(acc, ".4f")],
        ["best validation accuracy (any epoch)", fmt_cell(metrics.get("best_val_accuracy"), ".4f")],
        ["validation loss (last epoch)", fmt_cell(metrics.get("val_loss"), ".4f")],
        ["epochs trained (fidelity)", metrics.get("fidelity")],
        ["training time", f"{metrics['duration_s']:.1f} s" if metrics.get("duration_s") else "-"],
        ["training throughput", f"{metrics['samples_per_s']:,.0f} samples/s" if metrics.get("samples_per_s") else "-"],
    ]
    lines.append(_table(["metric", "value"], rows))
    if epochs:
        lines += ["", "Learning curve:", ""]
        lines.append(_table(
            ["epoch", "train loss", "val loss", "val accuracy", "lr"],
            [[e.get("epoch"), fmt_cell(e.get("train_loss"), ".4f"), fmt_cell(e.get("val_loss"), ".4f"),
              fmt_cell(e.get("val_accuracy"), ".4f"), fmt_cell(e.get("lr"), ".3g")] for e in epochs],
        ))

    # -- cost
    lines += ["", "## Cost", ""]
    lat = metrics.get("latency_ms")
    lat_batch = metrics.get("latency_ms_batch")
    lines.append(_table(["measure", "value"], [
        ["parameters", fmt_cell(metrics.get("params"))],
        ["multiply-adds per image (FLOPs as usually quoted)", fmt_cell(metrics.get("flops"))],
        ["latency, batch 1 (median, eval mode)", f"{lat:.3f} ms" if lat is not None else "-"],
        ["latency, one batch (median)", f"{lat_batch:.3f} ms" if lat_batch is not None else "-"],
        ["peak memory while training", f"{metrics['peak_memory_mb']:,.0f} MB" if metrics.get("peak_memory_mb") else "-"],
        ["measured on", f"{metrics.get('device') or '-'} ({metrics.get('host') or 'unknown host'})"],
    ]))

    # -- architecture
    lines += ["", "## Architecture", ""]
    lines.append(
        f"`arch_id` {spec.arch_id} (sha256 of the canonical spec; the full spec is in "
        f"architecture.json). Stem `{spec.stem}`, pre-activation {spec.preact}, "
        f"zero-init residual {spec.zero_init_residual}, squeeze-excitation ratio {spec.se_ratio}; "
        f"{spec.total_blocks} blocks, {spec.total_depth} weighted layers on the longest path."
    )
    lines.append("")
    try:
        size = (int(info.get("height") or 32), int(info.get("width") or 32))
        lines.append(_table(STAGE_HEADER, stage_rows(spec, size)))
    except Exception as exc:  # noqa: BLE001 - the card must not fail on a describe helper
        lines.append(f"(stage table unavailable: {type(exc).__name__}: {exc})")

    # -- files and parity
    lines += ["", "## Files and parity check", ""]
    lines.append(
        "Every format below was loaded back from this directory and run on a fixed input batch "
        f"({ctx.get('batch_note', 'seeded random normal inputs')}); the outputs were compared "
        "with the trained model rebuilt from the store."
    )
    lines.append("")
    rows = []
    for fmt, file in FORMAT_FILES.items():
        if fmt in parity:
            p = parity[fmt]
            rows.append([f"`{file}`", FORMAT_TITLES[fmt], f"{p['max_abs_diff']:.3g}", f"{p['tolerance']:g}"])
        elif fmt in skipped:
            rows.append([f"`{file}`", FORMAT_TITLES[fmt], f"skipped: {skipped[fmt]}", "-"])
    lines.append(_table(["file", "format", "max abs difference", "tolerance"], rows))
    lines.append("")
    lines.append(
        "Also here: `architecture.json` (spec + arch_id + input), `recipe.json` (training "
        "recipe), `metrics.json` (the run's measurements, learning curve and this parity "
        "check). No file is a pickle: weights are safetensors or raw tensor bytes, configs JSON."
    )

    # -- how to load
    lines += ["", "## How to load", ""]
    lines.append(_load_snippets(list(parity), spec, info))
    return "\n".join(lines).rstrip() + "\n"
