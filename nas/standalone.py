"""The standalone `model.py` of an export bundle: the builder's own source, with the spec inlined.

The file is generated, not hand-maintained: the top-level definitions of the builder's
modules (`SOURCE_MODULES`: spec, layers, blocks, dense, convnext, transformer, cell, builder) are copied
verbatim (comments included), minus the cost functions (FLOP counting is not needed to run a
network) and minus the imports between those modules. So the bundle's network is the searched
network by construction, and a change to the builder reaches the next export without anyone
editing a template. The generated file imports only the standard library and torch (and
safetensors inside `load()`); `check_imports` enforces that, and the export's parity check runs it.
"""

from __future__ import annotations

import ast
import importlib
import json
from collections.abc import Iterable
from typing import Any

from search_spaces import ArchitectureSpec

# Modules copied, in dependency order.
SOURCE_MODULES = (
    "search_spaces.spec",
    "search_spaces.layers",
    "search_spaces.blocks",
    "search_spaces.dense",
    "search_spaces.convnext",
    "search_spaces.transformer",
    "search_spaces.cell",
    "search_spaces.builder",
)
# Top-level names of those modules that only price a network; left out of model.py.
COST_NAMES = frozenset(
    {
        "Cost",
        "conv_out",
        "conv_cost",
        "bn_cost",
        "linear_cost",
        "patchify_cost",
        "entry_cost",
        "shortcut_cost",
    }
)
# Methods that only price a network (`Stem.cost`, `ResidualBlock._branch_cost`, ...).
COST_METHODS = frozenset({"cost", "_branch_cost"})
# What model.py may import at all: the standard library pieces the builder uses, torch,
# safetensors. Anything else means the builder grew a dependency the bundle cannot carry.
ALLOWED_IMPORTS = frozenset(
    {"__future__", "collections", "dataclasses", "hashlib", "json", "math", "os", "pathlib",
     "typing", "torch", "safetensors"}
)


class StandaloneError(RuntimeError):
    """The builder's source cannot be turned into a self-contained file (a bug to fix here)."""


def _module_source(name: str) -> tuple[str, ast.Module]:
    module = importlib.import_module(name)
    path = getattr(module, "__file__", None)
    if not path:
        raise StandaloneError(f"module {name} has no source file")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return text, ast.parse(text)


def _node_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _first_line(node: ast.stmt, lines: list[str]) -> int:
    """0-based first line of `node`, including decorators and the comment block right above."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def _tidy(lines: list[str]) -> list[str]:
    """At most two blank lines in a row, one before an indented line (inside a class)."""
    out: list[str] = []
    blank = 0
    for line in lines:
        if not line.strip():
            blank += 1
            continue
        if out:
            limit = 1 if line.startswith((" ", "\t")) else 2
            out.extend([""] * min(blank, limit))
        blank = 0
        out.append(line)
    return out


def _imports_of(node: ast.Import | ast.ImportFrom, imported: set[tuple[str, str]]) -> list[str]:
    """The import lines `node` adds beyond `imported` (updated); none for search_spaces."""
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if module.split(".")[0] == "search_spaces":
            return []
        new = [a for a in node.names if (module, a.name) not in imported]
        imported.update((module, a.name) for a in new)
        if not new:
            return []
        names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in new)
        return [f"from {module} import {names}"]
    out = []
    for alias in node.names:
        if alias.name.split(".")[0] == "search_spaces" or ("", alias.name) in imported:
            continue
        imported.add(("", alias.name))
        out.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
    return out


def builder_source() -> tuple[list[str], list[str]]:
    """(import lines, one body per module) copied from the builder modules.

    Each body is the module's text with the docstring, the imports (gathered separately), the
    cost functions and the cost methods cut out; everything else keeps its formatting.
    """
    imports: list[str] = []
    imported: set[tuple[str, str]] = set()
    bodies: list[str] = []
    defined: dict[str, str] = {}
    for name in SOURCE_MODULES:
        text, tree = _module_source(name)
        lines = text.splitlines()
        drop: set[int] = set()
        for index, node in enumerate(tree.body):
            end = node.end_lineno or node.lineno
            if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                drop.update(range(node.lineno - 1, end))  # the module docstring
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                drop.update(range(node.lineno - 1, end))
                imports.extend(_imports_of(node, imported))
                continue
            top = _node_name(node)
            if top in COST_NAMES:
                drop.update(range(_first_line(node, lines), end))
                continue
            if top is not None:
                if top in defined:
                    raise StandaloneError(
                        f"`{top}` is defined in both {defined[top]} and {name}; model.py needs "
                        "unique top-level names"
                    )
                defined[top] = name
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in COST_METHODS:
                        drop.update(range(_first_line(item, lines), item.end_lineno or item.lineno))
        kept = _tidy([line for i, line in enumerate(lines) if i not in drop])
        path = name.replace(".", "/") + ".py"
        rule = "# -- copied from " + path + " "
        bodies.append(rule + "-" * max(4, 94 - len(rule)) + "\n" + "\n".join(kept))
    return imports, bodies


def check_imports(source: str, allowed: Iterable[str] = ALLOWED_IMPORTS) -> None:
    """Raise `StandaloneError` if `source` imports anything beyond `allowed` (at any depth)."""
    allowed = set(allowed)
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise StandaloneError("model.py must not use relative imports")
            names = [node.module or ""]
        for name in names:
            if name.split(".")[0] not in allowed:
                raise StandaloneError(
                    f"model.py would import `{name}`; allowed: {', '.join(sorted(allowed))}"
                )


def _literal(text: str) -> str:
    """`text` as a readable Python string literal (raw triple-quoted where that is exact)."""
    if "'''" not in text and not text.endswith("\\"):
        return "r'''" + text + "'''"
    return repr(text)


def render(spec: ArchitectureSpec, *, input_info: dict[str, Any] | None = None, title: str = "") -> str:
    """The full text of a bundle's `model.py` for `spec`.

    Args:
        spec: the exported architecture.
        input_info: what the network expects: channels, height, width, mean, std (per channel,
            of pixels scaled to [0, 1]); written as `INPUT` in the file.
        title: one line naming where the network came from (study, trial).
    """
    imports, bodies = builder_source()
    future = [i for i in imports if i.startswith("from __future__")]
    others = [i for i in imports if not i.startswith("from __future__")]
    for needed in ("import json", "import os", "from pathlib import Path"):
        if needed not in others:
            others.append(needed)
    others.sort(key=lambda line: (line.split()[1].split(".")[0] == "torch", line.split()[1], line))
    spec_json = json.dumps(spec.to_dict(), indent=2, sort_keys=True)
    info = dict(input_info or {})
    header = f'''"""{title or "A residual network exported by resnas"}: standalone, needs only torch (+ safetensors).

Architecture {spec.arch_id}: {spec.summary()}

    import torch
    import model                      # this file, next to model.safetensors
    net = model.load()                # eval mode; or model.load("path/to/model.safetensors")
    logits = net(torch.randn(1, {spec.in_channels}, {info.get("height", 32)}, {info.get("width", 32)}))

Inputs are float32 NCHW images normalised per channel: x = (pixels - INPUT["mean"]) / INPUT["std"],
with pixels scaled to [0, 1]. The classes below are copied from resnas's
search_spaces package (cost functions left out); parameter names
match the safetensors file exactly.
"""'''
    footer = f'''
# -- this network ----------------------------------------------------------------------------
SPEC_JSON = {_literal(spec_json)}
ARCH_ID = {spec.arch_id!r}
INPUT = {json.dumps(info, sort_keys=True)}


def build() -> nn.Module:
    """The network with fresh (random) weights, in eval mode."""
    spec = ArchitectureSpec.from_dict(json.loads(SPEC_JSON))
    if spec.arch_id != ARCH_ID:
        raise RuntimeError(f"embedded spec has arch_id {{spec.arch_id}}, expected {{ARCH_ID}}")
    return build_model(spec).eval()


def load(weights_path: str | os.PathLike = "model.safetensors", device: str = "cpu") -> nn.Module:
    """The trained network in eval mode. A relative `weights_path` that does not exist from the
    working directory is looked up next to this file."""
    from safetensors.torch import load_file

    path = Path(weights_path)
    if not path.is_absolute() and not path.exists():
        path = Path(__file__).resolve().parent / path
    model = build()
    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return model.to(device).eval()


if __name__ == "__main__":
    net = load()
    size = (INPUT.get("height", 32), INPUT.get("width", 32))
    with torch.inference_mode():
        out = net(torch.zeros(1, {spec.in_channels}, *size))
    print(f"{{ARCH_ID}}: output {{tuple(out.shape)}}")
'''
    parts = [header, "\n".join(future), "\n".join(others), *bodies, footer]
    source = "\n\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"
    check_imports(source)
    compile(source, "model.py", "exec")
    return source
