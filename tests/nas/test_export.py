"""`nas export` of a real search: every format round-trips within its tolerance, nothing is a
pickle, model.py runs with only torch + safetensors, and weightless trials point to `nas retrain`."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from db import RunRecord, Store
from nas.config import build_config
from nas.errors import UserError
from nas.export import (
    FORMAT_FILES,
    TOLERANCE,
    choose_run,
    export,
    is_pickle,
    load_model,
    onnx_unavailable,
    parse_formats,
    pickle_members,
    weights_for,
)
from nas.search import run_search
from search_spaces import ArchitectureSpec, build_model
from tests.nas.bundles import run_model_py_isolated

pytestmark = pytest.mark.slow  # real searches on Ray

STUDY = "exp"


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    """A real 3-trial search on digits (1 epoch each), plus two weightless runs added by hand:
    trial 90 pruned, trial 91 answered from the pruned run (so its weights are gone too)."""
    root = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{root / 'nas.db'}"
    flags = {"study": STUDY, "storage": url, "space": "resnet", "trials": 3, "workers": 2,
             "seed": 0, "train": {"epochs": 1}}
    run_search(build_config({}, flags, "flags"))
    store = Store(url)
    best = choose_run(store, STUDY)
    pruned_id = store.record_run(RunRecord(
        id=None, study=STUDY, trial_number=90, arch_id=best.arch_id, recipe_id=best.recipe_id,
        dataset=best.dataset, fidelity=1, state="pruned", val_accuracy=0.3, params=best.params,
    ))
    store.record_run(RunRecord(
        id=None, study=STUDY, trial_number=91, arch_id=best.arch_id, recipe_id=best.recipe_id,
        dataset=best.dataset, fidelity=1, state="complete", val_accuracy=0.2, params=best.params,
        cached_from=pruned_id,
    ))
    return {"url": url, "store": store, "root": root}


@pytest.fixture(scope="module")
def bundle(searched):
    out = searched["root"] / "bundle"
    report = export(searched["store"], STUDY, out)
    return out, report


def _trained(store: Store, report) -> tuple[ArchitectureSpec, torch.nn.Module]:
    run = store.run_for_trial(STUDY, report.trial)
    spec = ArchitectureSpec.from_dict(store.architecture(run.arch_id))
    return spec, load_model(spec, weights_for(store, run)[0])


def _batch(spec: ArchitectureSpec, n: int = 5) -> torch.Tensor:
    return torch.randn(n, spec.in_channels, 8, 8, generator=torch.Generator().manual_seed(7))


def test_bundle_holds_every_file_and_reports_parity_within_tolerance(searched, bundle):
    out, report = bundle
    store = searched["store"]
    complete = [r for r in store.runs(STUDY) if r.state == "complete" and r.cached_from is None]
    assert report.val_accuracy == max(r.val_accuracy for r in complete)
    always = {"architecture.json", "recipe.json", "metrics.json", "README.md"}
    assert always <= {p.name for p in out.iterdir()}
    expected = {"safetensors", "model_py", "pt2"} | ({"onnx"} if onnx_unavailable() is None else set())
    assert set(report.max_abs_diff) == expected
    for fmt, diff in report.max_abs_diff.items():
        assert diff <= TOLERANCE[fmt], fmt
        assert (out / FORMAT_FILES[fmt]).is_file()
    assert report.max_abs_diff["safetensors"] == 0.0 and report.max_abs_diff["model_py"] == 0.0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial"] == report.trial and metrics["val_accuracy"] == report.val_accuracy
    assert metrics["params"] > 0 and metrics["flops"] > 0 and metrics["latency_ms"] > 0
    assert len(metrics["epochs"]) == 1 and set(metrics["parity"]) == expected
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["epochs"] == 1 and recipe["dataset"] == "digits"
    card = (out / "README.md").read_text()
    for needle in ("## Data", "## Training recipe", "## Cost", "## Architecture", "torch.export.load",
                   "model.load()", report.arch_id, f"{report.val_accuracy:.4f}", "stage1"):
        assert needle in card


def test_every_format_loads_back_and_matches_the_trained_model(searched, bundle, monkeypatch):
    out, report = bundle
    spec, trained = _trained(searched["store"], report)
    x = _batch(spec)  # a batch size the export never saw: the batch axis is dynamic
    with torch.no_grad():
        want = trained(x)

        arch = json.loads((out / "architecture.json").read_text())
        assert arch["arch_id"] == spec.arch_id == ArchitectureSpec.from_dict(arch["spec"]).arch_id
        net = build_model(ArchitectureSpec.from_dict(arch["spec"]))
        net.load_state_dict(load_file(str(out / "model.safetensors")))
        assert torch.equal(net.eval()(x), want)

        # torch.export's archive loads without unpickling anything.
        def refuse(*args, **kwargs):
            raise AssertionError("loading model.pt2 tried to unpickle")

        monkeypatch.setattr(torch, "load", refuse)
        monkeypatch.setattr("pickle.loads", refuse)
        monkeypatch.setattr("pickle.load", refuse)
        program = torch.export.load(str(out / "model.pt2"))
        monkeypatch.undo()
        assert (program.module()(x) - want).abs().max().item() <= TOLERANCE["pt2"]

    if onnx_unavailable() is not None:
        pytest.skip(f"ONNX not checked: {onnx_unavailable()}")
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    assert (got - want).abs().max().item() <= TOLERANCE["onnx"]


def test_model_py_runs_with_only_torch_and_safetensors_importable(searched, bundle, tmp_path):
    out, report = bundle
    spec, trained = _trained(searched["store"], report)
    x = _batch(spec, 4)
    got = run_model_py_isolated(out, x, tmp_path)
    with torch.no_grad():
        want = trained(x)
    assert (got - want).abs().max().item() <= 1e-5  # another process, maybe other kernels


def test_no_file_in_the_bundle_is_a_pickle(bundle):
    out, _ = bundle
    files = list(out.iterdir())
    assert files
    for path in files:
        assert not is_pickle(path), path.name
    with open(out / "model.safetensors", "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        assert json.loads(fh.read(header_len))  # safetensors: length + JSON header + raw bytes
    assert pickle_members(out / "model.pt2") == []
    with zipfile.ZipFile(out / "model.pt2") as archive:
        names = archive.namelist()
        assert any(n.endswith("models/model.json") for n in names)
        for name in names:
            assert not name.endswith(".pkl")
            if "sample_inputs" in name:  # torch.save'd example inputs: left empty on purpose
                assert archive.getinfo(name).file_size == 0


def test_formats_choose_a_subset_and_the_json_files_and_card_are_always_written(searched, tmp_path):
    report = export(searched["store"], STUDY, tmp_path / "b", formats="pt2")
    names = {p.name for p in (tmp_path / "b").iterdir()}
    assert names == {"architecture.json", "recipe.json", "metrics.json", "README.md", "model.pt2"}
    assert set(report.max_abs_diff) == {"pt2"}
    assert parse_formats("model_py, onnx") == ("model_py", "onnx")
    with pytest.raises(UserError, match="--formats"):
        parse_formats("safetensors,pickle")


def test_trial_and_metric_choose_the_run(searched, tmp_path):
    store = searched["store"]
    complete = [r for r in store.runs(STUDY) if r.state == "complete" and r.cached_from is None]
    smallest = min(complete, key=lambda r: (r.params, r.trial_number))
    assert choose_run(store, STUDY, metric="params").trial_number == smallest.trial_number
    report = export(store, STUDY, tmp_path / "t", trial=smallest.trial_number, formats="safetensors")
    assert report.trial == smallest.trial_number
    with pytest.raises(UserError, match="--metric"):
        choose_run(store, STUDY, metric="beauty")
    with pytest.raises(UserError, match="multi-objective"):
        choose_run(store, STUDY, pareto=0)


@pytest.mark.parametrize("trial, why", [(90, "was pruned"), (91, "whose weights were not kept")])
def test_export_of_a_trial_without_weights_names_nas_retrain(searched, tmp_path, trial, why):
    with pytest.raises(UserError) as info:
        export(searched["store"], STUDY, tmp_path / "x", trial=trial)
    message = str(info.value)
    assert why in message and f"nas retrain {STUDY} --trial {trial}" in message
    assert "\n" not in message
    assert not (tmp_path / "x").exists()


def test_cli_export_prints_parity_per_format_and_a_one_line_retrain_error(searched, tmp_path):
    def nas(*args):
        return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    ok = nas("export", STUDY, "--storage", searched["url"], "--out", str(tmp_path / "c"),
             "--formats", "safetensors,model_py")
    assert ok.returncode == 0, ok.stderr
    assert "parity safetensors" in ok.stdout and "parity model_py" in ok.stdout
    assert "max |diff| = 0" in ok.stdout
    bad = nas("export", STUDY, "--storage", searched["url"], "--out", str(tmp_path / "d"), "--trial", "90")
    assert bad.returncode == 2
    assert "nas retrain" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_pickle_check_tells_raw_tensor_bytes_starting_with_0x80_from_a_pickle(tmp_path):
    import pickle
    import struct

    raw = b"\x80" + struct.pack("<255f", *range(255))[1:]  # tensor data that happens to start so
    with zipfile.ZipFile(tmp_path / "a.pt2", "w") as archive:
        archive.writestr("data/weights/weight_0", raw)
        archive.writestr("models/model.json", "{}")
    assert pickle_members(tmp_path / "a.pt2") == []
    (tmp_path / "raw.bin").write_bytes(raw)
    assert not is_pickle(tmp_path / "raw.bin")
    with zipfile.ZipFile(tmp_path / "b.pt2", "w") as archive:
        archive.writestr("data/weights/weight_0", pickle.dumps({"x": 1}))
    assert pickle_members(tmp_path / "b.pt2") == ["data/weights/weight_0"]
    (tmp_path / "p.bin").write_bytes(pickle.dumps([1, 2], protocol=2))
    assert is_pickle(tmp_path / "p.bin")


def test_the_bundle_directory_is_checked_before_anything_is_written(searched, tmp_path):
    store = searched["store"]
    a_file = tmp_path / "taken"
    a_file.write_text("not a directory")
    with pytest.raises(UserError, match="is a file"):
        export(store, STUDY, a_file, formats="safetensors")
    with pytest.raises(UserError, match="cannot create the bundle directory /proc/resnas-x"):
        export(store, STUDY, "/proc/resnas-x", formats="safetensors")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"not a resnas bundle \(notes.txt\).*--force"):
        export(store, STUDY, mine, formats="safetensors")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    export(store, STUDY, mine, formats="safetensors", force=True)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "model.safetensors").is_file()
    again = export(store, STUDY, mine / ".." / "mine2", formats="safetensors")  # a new one
    export(store, STUDY, again.out, formats="safetensors")  # an earlier bundle: replaced
