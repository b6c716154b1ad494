"""`nas analyze`: the numbers behind each figure come from the study, and the report is one
self-contained HTML file (embedded images, nothing fetched) written without touching the DB."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from db import RunRecord, Store
from nas.analyze import MIN_IMPORTANCE_TRIALS, analyze, collect
from nas.config import build_config
from nas.errors import UserError
from nas.export import export
from nas.search import run_search
from search_spaces import ArchitectureSpec

pytestmark = pytest.mark.slow  # real searches on Ray

STUDY = "an"


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    """A real multi-objective (accuracy, params) search of 4 trials, and one extra run that is
    still `running` (as in a live study)."""
    root = tmp_path_factory.mktemp("analyze")
    url = f"sqlite:///{root / 'nas.db'}"
    flags = {"study": STUDY, "storage": url, "space": "resnet", "trials": 4, "workers": 2,
             "seed": 2, "objectives": "accuracy,params", "train": {"epochs": 1}}
    run_search(build_config({}, flags, "flags"))
    store = Store(url)
    some = store.runs(STUDY)[0]
    store.record_run(RunRecord(
        id=None, study=STUDY, trial_number=50, arch_id=some.arch_id, recipe_id=some.recipe_id,
        dataset=some.dataset, fidelity=1, state="running",
    ))
    return {"url": url, "store": store, "root": root}


def _complete(store: Store) -> list[RunRecord]:
    return sorted((r for r in store.runs(STUDY) if r.state == "complete"), key=lambda r: r.trial_number)


def test_collect_numbers_match_the_store(searched):
    store = searched["store"]
    data = collect(store, STUDY)
    complete = _complete(store)
    assert complete
    assert data["objectives"] == ["accuracy", "params"]
    assert data["counts"]["running"] == 1
    assert data["counts"]["complete"] == len(complete)

    # history: one point per complete trial, best-so-far is the running maximum
    assert data["history"]["trial"] == [r.trial_number for r in complete]
    assert data["history"]["val_accuracy"] == [r.val_accuracy for r in complete]
    assert data["history"]["best_so_far"][-1] == max(r.val_accuracy for r in complete)
    assert all(a <= b for a, b in zip(data["history"]["best_so_far"], data["history"]["best_so_far"][1:], strict=False))
    assert data["best"]["val_accuracy"] == max(r.val_accuracy for r in complete)

    # residual views: trained runs grouped by the architecture's set of skip / block types
    trained = [r for r in complete if r.cached_from is None]
    specs = {r.arch_id: ArchitectureSpec.from_dict(store.architecture(r.arch_id)) for r in trained}
    skips = Counter(",".join(sorted({s.skip for s in specs[r.arch_id].stages})) for r in trained)
    assert data["skip_counts"] == dict(skips)
    assert sum(data["block_counts"].values()) == len(trained)
    for skip, group in data["depth_by_skip"].items():
        assert len(group["depth"]) == skips[skip]
        for trial, depth in zip(group["trial"], group["depth"], strict=True):
            run = next(r for r in trained if r.trial_number == trial)
            assert depth == specs[run.arch_id].total_depth
    for skip, edf in data["edf"]["skip"].items():
        assert edf["fraction"][-1] == 1.0 and len(edf["error"]) == skips[skip]
        assert edf["error"] == sorted(edf["error"])
        assert min(edf["error"]) == pytest.approx(1 - max(data["depth_by_skip"][skip]["val_accuracy"]))

    # cost plots and the Pareto front (no point on the front is dominated)
    assert data["cost"]["params"] == [r.params for r in complete]
    pareto = data["pareto"]
    assert pareto["objective"] == "params" and pareto["front"]
    points = list(zip(pareto["val_accuracy"], pareto["cost"], strict=True))
    for acc, cost in zip(pareto["front_val_accuracy"], pareto["front_cost"], strict=True):
        assert not any(a >= acc and c <= cost and (a > acc or c < cost) for a, c in points)

    # importance: 4 trials are too few for a ranking; the note says how many there are
    assert data["importance"]["values"] == {}
    assert data["importance"]["note"] == (
        f"parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; "
        f"this study has {data['importance']['trials']}"
    )
    assert data["top"][0]["val_accuracy"] == data["best"]["val_accuracy"]
    assert data["top"][0]["stages"] and len({t["arch_id"] for t in data["top"]}) == len(data["top"])


def test_report_is_self_contained_and_the_database_is_not_written(searched, tmp_path):
    db_file = Path(searched["url"].removeprefix("sqlite:///"))
    before = hashlib.sha256(db_file.read_bytes()).hexdigest()
    out = tmp_path / "report.html"
    analyze(Store(searched["url"], migrate=False), STUDY, out, png_dir=tmp_path / "png")
    assert hashlib.sha256(db_file.read_bytes()).hexdigest() == before

    text = out.read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', text)
    names = {p.name for p in (tmp_path / "png").iterdir()}
    assert {"history.png", "pareto.png", "cost.png", "depth_by_skip.png", "edf.png"} <= names
    assert len(images) == len(names) >= 5
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text, re.I)
    assert "<script" not in text.lower()
    assert "Top " in text and STUDY in text


def test_the_pareto_point_of_the_report_is_what_export_pareto_exports(searched, tmp_path):
    data = collect(searched["store"], STUDY)
    report = export(searched["store"], STUDY, tmp_path / "p", pareto=0, formats="safetensors")
    assert report.trial == data["pareto"]["front"][0]
    with pytest.raises(UserError, match="Pareto front"):
        export(searched["store"], STUDY, tmp_path / "q", pareto=len(data["pareto"]["front"]))


def test_unknown_study_is_a_one_line_cli_error(searched, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nas", "analyze", "nope", "--storage", searched["url"], "--out",
         str(tmp_path / "r.html")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.html").exists()
