"""A real search on each new family's digits preset (DenseNet, ConvNeXt, the conv/attention
hybrid) trains on Ray and exports in every format with parity; model.py runs standalone."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from db import Store
from nas.config import build_config
from nas.export import TOLERANCE, export, load_model, onnx_unavailable, weights_for
from nas.search import run_search
from search_spaces import ArchitectureSpec
from tests.nas.bundles import run_model_py_isolated

pytestmark = pytest.mark.slow  # real searches on Ray

# preset -> (zoo architecture tried first, the block the exported network must contain)
PRESETS = {
    "densenet": (None, "dense"),
    "convnext": (None, "convnext"),
    "hybrid": ("hybrid_digits", "transformer"),
}


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    url = f"sqlite:///{root / 'nas.db'}"
    for preset, (enqueue, _) in PRESETS.items():
        flags = {"study": preset, "storage": url, "space": preset, "trials": 2, "workers": 2,
                 "seed": 0, "pruner": "none", "train": {"epochs": 1},
                 "enqueue": [enqueue] if enqueue else []}
        run_search(build_config({}, flags, "flags"))
    return {"store": Store(url), "root": root}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_search_on_each_new_preset_exports_with_parity(searched, preset, tmp_path):
    store = searched["store"]
    enqueue, block = PRESETS[preset]
    runs = [r for r in store.runs(preset) if r.state == "complete"]
    assert len(runs) == 2
    recipe = store.recipe(runs[0].recipe_id)
    if preset in ("convnext", "hybrid"):
        assert recipe["optimizer"] == "adamw"  # the preset's recipe default reached the workers
    trial = 0 if enqueue else None  # the enqueued architecture is trial 0
    out = tmp_path / preset
    report = export(store, preset, out, trial=trial)
    run = store.run_for_trial(preset, report.trial)
    spec = ArchitectureSpec.from_dict(store.architecture(run.arch_id))
    assert block in {s.block for s in spec.stages}
    expected = {"safetensors", "model_py", "pt2"} | (
        {"onnx"} if onnx_unavailable() is None else set()
    )
    assert set(report.max_abs_diff) == expected
    for fmt, diff in report.max_abs_diff.items():
        assert diff <= TOLERANCE[fmt], fmt
    trained = load_model(spec, weights_for(store, run)[0])
    x = torch.randn(3, spec.in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    got = run_model_py_isolated(out, x, tmp_path)
    with torch.no_grad():
        want = trained(x)
    assert (got - want).abs().max().item() <= 1e-5


def test_nas_show_prices_a_bundle_at_the_size_it_trained_on(searched, tmp_path):
    out = tmp_path / "bundle"
    export(searched["store"], "hybrid", out, trial=0, formats="safetensors")
    shown = subprocess.run([sys.executable, "-m", "nas", "show", str(out / "architecture.json")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "1x8x8 input" in shown.stdout and "MACs 828,736" in shown.stdout  # not 32x32
