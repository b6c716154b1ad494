"""The walking skeleton end to end: real Ray, real Lightning training on digits, real SQL."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from safetensors.torch import load_file

from db import Store
from nas.config import build_config
from nas.export import export
from nas.search import run_search
from search_spaces import ArchitectureSpec, build_model

pytestmark = pytest.mark.slow  # real searches on Ray

FAST_TRAIN = {"epochs": 2}


def _config(url: str, study: str = "skeleton", **overrides):
    flags = {"study": study, "storage": url, "space": "resnet", "trials": 4, "workers": 2,
             "seed": 0, "train": dict(FAST_TRAIN)}
    flags.update(overrides)
    return build_config({}, flags, "flags")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_four_trial_search_with_two_workers_records_four_runs(backend, request, ray_local, tmp_path):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    summary = run_search(_config(url))

    store = Store(url)
    runs = store.runs("skeleton")
    assert len(runs) == 4
    assert {r.trial_number for r in runs} == {0, 1, 2, 3}
    assert all(r.state in ("complete", "pruned", "cached") or r.cached_from for r in runs)
    assert sum(summary.counts.values()) == 4
    study = optuna.load_study(study_name="skeleton", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert summary.best and summary.best[0]["val_accuracy"] > 0.5

    # Export reloads into build_model(ArchitectureSpec.from_dict(...)) with identical outputs.
    report = export(store, "skeleton", tmp_path / "bundle", formats="safetensors")
    arch = json.loads((tmp_path / "bundle" / "architecture.json").read_text())
    spec = ArchitectureSpec.from_dict(arch["spec"])
    assert spec.arch_id == arch["arch_id"] == report.arch_id
    model = build_model(spec)
    model.load_state_dict(load_file(str(tmp_path / "bundle" / "model.safetensors")))
    model.eval()
    from nas.export import load_model, weights_for

    best_run = store.run_for_trial("skeleton", report.trial)
    trained = load_model(spec, weights_for(store, best_run)[0])
    batch = torch.randn(5, spec.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(batch), trained(batch))
    assert report.val_accuracy == max(r.val_accuracy for r in runs if r.state == "complete")
