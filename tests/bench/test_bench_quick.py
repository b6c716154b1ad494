"""Smoke runs of the benchmarks: they run end to end and write sane JSON. Nothing about speed
is asserted (benchmarks report, they do not judge)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")

from bench import common  # noqa: E402

pytestmark = pytest.mark.slow  # real searches on Ray

BASE_KEYS = {"benchmark", "command", "when", "machine", "versions", "goals", "mode"}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    return tmp_path


def _load(results, name):
    data = json.loads((results / f"{name}.json").read_text())
    assert BASE_KEYS <= set(data)
    assert data["machine"]["cores"] >= 1 and data["versions"]["python"]
    return data


def test_duplicates_smoke(results):
    from bench import duplicates

    duplicates.main(["--smoke"])
    d = _load(results, "duplicates")
    assert d["raw_optuna"]["repeats"] >= 0 and d["raw_optuna_default_tpe"]["repeats"] >= 0
    assert d["resnas"]["trained_twice"] >= 0
    assert d["resnas"]["trials"] >= d["trials"]
    assert d["resnas"]["trained"] + d["resnas"]["answered_from_store"] == d["resnas"]["trials"]


def test_controller_smoke(results):
    from bench import controller

    controller.main(["--smoke", "--backends", "sqlite"])
    d = _load(results, "controller")
    assert [r["trials"] for r in d["rows"]] == list(controller.SMOKE_SIZES)
    for row in d["rows"]:
        for side in ("resnas", "bare_optuna"):
            assert row[side]["per_trial_ms"] > 0 and row[side]["trials_per_s"] > 0
        assert row["resnas"]["trials"] >= row["trials"]
        assert row["overhead_ratio"] > 0
    assert d["summary"]["sqlite"]["p50_growth"] > 0


@pytest.mark.slow
def test_overhead_and_scaling_smoke(results):
    from bench import overhead, scaling

    overhead.main(["--smoke"])
    d = _load(results, "overhead")
    assert d["resnas_pool"]["repeats"] == 1
    assert d["resnas_pool"]["utilisation"] == d["resnas_pool"]["utilisations"][0]
    for tool in ("resnas", "ray_tune", "resnas_pool"):
        assert d[tool]["trials"] == overhead.SMOKE_TRIALS
        assert 0 < d[tool]["utilisation"] <= 1.05
    assert d["resnas"]["trained_archs"] == sorted(d["ray_tune"]["trained_archs"])
    assert d["resnas_pool"]["trained_archs"] == d["resnas"]["trained_archs"]
    scaling.main(["--smoke"])
    s = _load(results, "scaling")
    assert s["workers_1"]["trials_per_hour"] > 0 and s["speedup_2_over_1"] > 0
    for w in ("workers_1", "workers_2", "pool_workers_1", "pool_workers_2", "bare_workers_1",
              "bare_workers_2"):
        assert 0 < s[w]["utilisation"] <= 1.05
    assert s["speedup_resident_runners"] > 0
    # The plain processes trained every trial.
    assert s["bare_workers_2"]["states"] == ["complete"] and s["speedup_bare_processes"] > 0
    assert 0 < d["resnas_pool"]["utilisation_ideal"] <= 1.0 + 1e-9


@pytest.mark.slow
def test_search_efficiency_smoke_and_summary(results, tmp_path, monkeypatch):
    from bench import run, search_efficiency

    search_efficiency.main(["--smoke", "--tables", "nasbench201:cifar10,digits"])
    d = _load(results, "search_efficiency")
    assert set(d["tables"]) == {"nasbench201:cifar10", "digits"}
    nb, digits = d["tables"]["nasbench201:cifar10"], d["tables"]["digits"]
    assert nb["optimum"] == pytest.approx(91.61, abs=0.01)
    assert set(nb["methods"]) == {"resnas", "random", "evolution", "optuna_tpe"}
    assert set(digits["methods"]) == {"resnas", "random", "evolution", "optuna_tpe", "ray_tune"}
    for table in (nb, digits):
        for v in table["methods"].values():
            assert v["repeats"] >= 1 and v["mean@25"] <= table["optimum"] + 1e-9
            assert v["found@25"] >= v["mean@25"] - 1e-9  # the oracle pick is no worse
    assert "paper" in nb and (results / nb["figure"]).stat().st_size > 0
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n## Training throughput\n\nkept\n")
    monkeypatch.setattr(run, "README", readme)
    run.write_readme("python -m bench.run --smoke")
    run.write_readme("python -m bench.run --smoke")  # replaces its block, keeps the rest
    text = readme.read_text()
    assert "## Training throughput\n\nkept" in text and text.count(run.START) == 1
    assert "search efficiency" in text


def test_defaults_smoke():
    from bench import defaults

    rows = defaults.main(["--smoke"])
    assert len(rows) == 2 + len(defaults.SINGLE) + len(defaults.MULTI) + 1
    assert all(row.count("|") == 7 for row in rows)


def test_inherit_smoke(results):
    from bench import inherit

    inherit.main(["--smoke", "--epochs", "2", "--setups", "default"])
    d = _load(results, "inherit")
    [seed] = d["setups"]["default"]["per_seed"]
    assert seed["budget"] > 0 and seed["scratch"]["trained"] >= 1
    assert 0 < seed["inherit"]["compute_used"] <= 1 + 1e-9  # cut at the scratch search's compute
    kids = seed["inherit"]["children"]
    assert 0 <= kids["with_parent"] <= kids["trained"] and kids["recipe_epochs"] == 2
    assert d["setups"]["default"]["summary"]["scratch_best"] is not None
    assert set(d["goals"]) == {"default_same_best_with_half_the_compute"}
