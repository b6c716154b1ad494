"""Running an export bundle's model.py the way a user without resnas would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_SCRIPT = (
    "import sys\n"
    "import model\n"
    "for name in ('search_spaces', 'nas', 'workers', 'db'):\n"
    "    assert name not in sys.modules, name\n"
    "    try:\n"
    "        __import__(name)\n"
    "    except ImportError:\n"
    "        pass\n"
    "    else:\n"
    "        raise SystemExit(f'the repo package {name} is importable: not isolated')\n"
    "import torch\n"
    "from safetensors.torch import load_file, save_file\n"
    "net = model.load()\n"
    "assert not net.training\n"
    "with torch.no_grad():\n"
    "    y = net(load_file(sys.argv[1])['x'])\n"
    "save_file({'y': y.contiguous()}, sys.argv[2])\n"
)


def run_model_py_isolated(bundle: Path, x: torch.Tensor, work: Path) -> torch.Tensor:
    """The bundle's network applied to `x` by its model.py, in a fresh interpreter that can
    import only torch and safetensors (not resnas): asserts it ran, returns its output."""
    save_file({"x": x}, str(work / "x.safetensors"))
    script = work / "run_bundle.py"
    script.write_text(_SCRIPT)
    site_dirs = {
        str(Path(m.__file__).resolve().parent.parent) for m in (torch, sys.modules["safetensors"])
    }
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(bundle), *sorted(site_dirs)]),
        "OMP_NUM_THREADS": "1",
    }
    # -S: no site module, so no .pth files (the editable install of resnas) and no user site;
    # -B: no __pycache__ left in the bundle.
    result = subprocess.run(
        [sys.executable, "-S", "-B", str(script), str(work / "x.safetensors"),
         str(work / "y.safetensors")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return load_file(str(work / "y.safetensors"))["y"]
