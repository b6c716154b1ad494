"""`nas retrain`: S seeds per architecture on Ray, recorded at full fidelity with weights, so
that `nas export STUDY.retrain` exports the best of them; the ranking check with `--top`."""

from __future__ import annotations

import math

import pytest

from db import Store
from nas.config import build_config
from nas.errors import UserError
from nas.export import export
from nas.retrain import kendall_tau, retrain
from nas.search import run_search
from nas.weights import Artifacts

pytestmark = pytest.mark.slow  # real searches on Ray

STUDY = "rt"


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    url = f"sqlite:///{root / 'nas.db'}"
    flags = {"study": STUDY, "storage": url, "space": "resnet", "trials": 3, "workers": 2,
             "seed": 1, "train": {"epochs": 1}}
    run_search(build_config({}, flags, "flags"))
    return {"url": url, "store": Store(url), "root": root}


def _distinct_best(store: Store, k: int) -> list:
    complete = sorted(
        (r for r in store.runs(STUDY) if r.state == "complete"),
        key=lambda r: (-r.val_accuracy, r.params or 0, r.trial_number),
    )
    out, seen = [], set()
    for r in complete:
        if r.arch_id not in seen:
            seen.add(r.arch_id)
            out.append(r)
    return out[:k]


def test_retrain_top_k_records_seeds_runs_at_full_fidelity_with_weights(searched, tmp_path):
    store = searched["store"]
    chosen = _distinct_best(store, 2)
    lines: list[str] = []
    report = retrain(store, STUDY, epochs=2, seeds=2, top=2, workers=2, progress=lines.append)

    runs = store.runs(f"{STUDY}.retrain")
    artifacts = Artifacts.open(store.url, store)
    assert report.study == f"{STUDY}.retrain"
    assert len(runs) == 2 * len(chosen) == len(lines)
    assert sorted(r.trial_number for r in runs) == list(range(len(runs)))  # a running index
    assert all(r.fidelity == 2 for r in runs)
    assert all(r.state == "complete" for r in runs), [(r.state, r.reason) for r in runs]
    for source in chosen:
        mine = [r for r in runs if r.extra["retrain_of"] == {"study": STUDY, "trial": source.trial_number}]
        assert {r.extra["seed"] for r in mine} == {0, 1}
        assert {r.arch_id for r in mine} == {source.arch_id}
        assert all(artifacts.load(r) for r in mine)  # the artifact store (or nas_weights)
        assert len({r.recipe_id for r in mine}) == 2  # the seed is part of the recipe
        recipe = store.recipe(mine[0].recipe_id)
        assert recipe["epochs"] == 2 and recipe["keep_weights"] is True
        result = next(a for a in report.archs if a.arch_id == source.arch_id)
        accs = sorted(r.val_accuracy for r in mine)
        assert result.mean == pytest.approx(sum(accs) / 2)
        assert result.std == pytest.approx(abs(accs[1] - accs[0]) / math.sqrt(2))
        assert result.search_accuracy == source.val_accuracy
    if len(chosen) >= 2:
        assert report.ranking is not None and isinstance(report.ranking["holds"], bool)
        tau = report.ranking["kendall_tau"]  # None where ties leave it undefined
        assert tau is None or -1.0 <= tau <= 1.0
        assert report.ranking["search_order"] == [r.arch_id for r in chosen]

    # The retraining study exports like any other: its best run, with its weights.
    bundle = export(store, f"{STUDY}.retrain", tmp_path / "b", formats="safetensors")
    assert bundle.val_accuracy == max(r.val_accuracy for r in runs)


def test_retrain_of_an_exported_architecture_file_continues_the_index(searched, tmp_path):
    store = searched["store"]
    bundle = export(store, STUDY, tmp_path / "bundle", formats="safetensors")
    before = [r.trial_number for r in store.runs(f"{STUDY}.retrain")]
    report = retrain(store, str(tmp_path / "bundle" / "architecture.json"), epochs=1, seeds=1)

    assert report.study == f"{STUDY}.retrain"  # the bundle's metrics.json names the study
    new = [r for r in store.runs(f"{STUDY}.retrain") if r.trial_number not in before]
    assert len(new) == 1
    assert new[0].trial_number == max(before, default=-1) + 1
    assert new[0].extra["retrain_of"]["study"] == STUDY
    assert new[0].extra["retrain_of"]["trial"] == bundle.trial
    assert new[0].arch_id == bundle.arch_id and new[0].fidelity == 1


def test_bad_retrain_requests_are_user_errors(searched, tmp_path):
    store = searched["store"]
    with pytest.raises(UserError, match="--seeds"):
        retrain(store, STUDY, seeds=0)
    with pytest.raises(UserError, match="no runs"):
        retrain(store, "nope", seeds=1)
    with pytest.raises(UserError, match="does not exist"):
        retrain(store, str(tmp_path / "missing.json"), seeds=1)
    with pytest.raises(UserError, match="one of them"):
        retrain(store, STUDY, top=2, trial=0)


def test_kendall_tau_of_known_orders():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert kendall_tau([1], [1]) is None
    assert kendall_tau([1, 1], [1, 1]) is None
