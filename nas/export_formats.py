"""The formats of an export bundle: how each is written, loaded back and checked for parity."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import pickletools
import sys
import types
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

from nas.errors import UserError
from nas.standalone import render
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
# Parity batches: a fixed one, plus a smaller one that exercises the dynamic batch axis.
PARITY_BATCH = 8
SECOND_BATCH = 3
ONNX_OPSET = 18

# The logger `nas export` always used, so filters set on it keep working after the split.
log = logging.getLogger("nas.export")


class ExportError(UserError):
    """A format could not be written, or its outputs differ from the trained model."""


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


# -- the network and its input ----------------------------------------------------------------
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


def check_parity(fmt: str, diff: float) -> None:
    """Raise `ExportError` when `fmt`'s max |diff| is over its `TOLERANCE`."""
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


def export_program(model, batch):
    """`model` traced by torch.export with a dynamic batch axis, ready to save or convert."""
    import torch

    with _quiet_exporters():
        program = torch.export.export(model, (batch,), dynamic_shapes=({0: _batch_dim()},), strict=False)
    # torch.export.save pickles `example_inputs` (torch.save) into the archive; without them the
    # archive holds only JSON and raw tensor bytes, and torch.export.load unpickles nothing.
    program.example_inputs = None
    return program


def _is_pickle_bytes(data: bytes) -> bool:
    """Whether `data` parses as one whole pickle (opcodes read only: nothing built or run).

    A first byte of 0x80 alone is not enough: raw tensor data starts with it one time in 256.
    """
    if len(data) < 2 or data[0] != 0x80 or data[1] not in range(2, 6):
        return False
    try:
        *_, (op, _, pos) = pickletools.genops(data)
    except Exception:  # noqa: BLE001 - anything that is not a pickle
        return False
    return op.name == "STOP" and pos == len(data) - 1


def pickle_members(path: str | Path) -> list[str]:
    """Members of a zip archive (torch.export's .pt2) that are pickles or torch.save archives."""
    found = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            data = archive.read(info.filename) if info.file_size else b""
            if (info.filename.endswith((".pkl", ".pickle")) or data[:4] == b"PK\x03\x04"
                    or _is_pickle_bytes(data)):
                found.append(info.filename)
    return found


def is_pickle(path: str | Path) -> bool:
    """True for a pickle file, a torch.save zip (which holds data.pkl) or a zip with pickles."""
    path = Path(path)
    data = path.read_bytes()
    if _is_pickle_bytes(data):
        return True
    if data[:4] == b"PK\x03\x04":
        return bool(pickle_members(path))
    return False


def onnx_unavailable() -> str | None:
    """None when ONNX export and checking work here, else why not (for a skip line)."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'resnas[export]')"
    return None


# -- writing and checking each format ---------------------------------------------------------
def write_safetensors(out: Path, weights: bytes, spec: ArchitectureSpec, batches) -> float:
    """Write model.safetensors; return the max |diff| of a network rebuilt from the bundle."""
    from safetensors.torch import load_file

    from search_spaces import build_model

    path = out / FORMAT_FILES["safetensors"]
    path.write_bytes(weights)
    reloaded = build_model(ArchitectureSpec.from_dict(json.loads((out / "architecture.json").read_text())["spec"]))
    reloaded.load_state_dict(load_file(str(path)), strict=True)
    reloaded.eval()
    return _run_both(reloaded, batches)


def write_model_py(out: Path, spec: ArchitectureSpec, info: dict[str, Any], title: str, batches) -> float:
    """Write the standalone model.py; return the max |diff| of the model it loads."""
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


def write_pt2(out: Path, program, batches) -> float:
    """Write `program` as model.pt2 (no pickles); return the max |diff| of the reloaded one."""
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


def write_onnx(out: Path, program, batches) -> float:
    """Write `program` as model.onnx; return the max |diff| of ONNX Runtime's outputs."""
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

