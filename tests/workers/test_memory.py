"""A candidate whose predicted training memory does not fit fails fast as `too_big`, before
its model exists; what the worker was given is read from the device, the cgroup or the env."""

from __future__ import annotations

import time

import pytest
import torch

import workers.trial as trial_module
from search_spaces.spec import MAX_WIDTH, ArchitectureSpec, StageSpec
from tests.workers.conftest import tiny_spec
from workers import TrialRequest, run_trial
from workers.memory import (
    HEADROOM,
    MEMORY_LIMIT_ENV,
    MemoryBudget,
    cpu_available,
    memory_budget,
    memory_limit,
    too_big_reason,
)

CPU = torch.device("cpu")
MIB = 2**20


def _request(spec, **config) -> dict:
    config = {"epochs": 1, "cpu_threads": 1, "device": "cpu", **config}
    return TrialRequest(spec=spec.to_dict(), config=config, key="big").to_dict()


def _wide_spec(width: int = 2048) -> ArchitectureSpec:
    """One 3x3 block of `width` channels on digits: ~75M parameters, ~2.4 GiB to train."""
    return ArchitectureSpec(stages=(StageSpec(depth=1, width=width),), stem_width=width,
                            in_channels=1)


@pytest.fixture
def builds(monkeypatch) -> list:
    """Every spec `run_trial` builds a model for (the builder is the trial's seam)."""
    built: list = []
    real = trial_module.build_model

    def recording(spec):
        built.append(spec.arch_id)
        return real(spec)

    monkeypatch.setattr(trial_module, "build_model", recording)
    return built


def test_a_candidate_that_cannot_fit_fails_fast_as_too_big_without_building_it(
    monkeypatch, builds
):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "256")
    start = time.perf_counter()
    result = run_trial(_request(_wide_spec()))
    assert time.perf_counter() - start < 5.0  # the digits load included; the check is ms
    assert result.state == "failed" and result.reason.startswith("too_big: ")
    assert builds == []  # no model, so no parameter was allocated
    assert result.epochs == [] and result.setup_s is None and result.peak_memory_mb is None
    assert result.weights is None and result.traceback is None
    # The cost from the spec alone is still reported, as for any failure after parsing.
    assert result.params > 70_000_000 and result.arch_id == _wide_spec().arch_id
    reason = result.reason
    assert "GiB at batch_size 64" in reason and "230 MiB of CPU memory" in reason
    assert MEMORY_LIMIT_ENV in reason
    assert "smaller batch_size" in reason and "max_params" in reason


def test_a_huge_candidate_fails_as_too_big_against_the_real_machine(monkeypatch, builds):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    if cpu_available() is None:
        pytest.skip("this platform tells no available memory")
    # ~300 billion parameters: terabytes before a single activation.
    spec = ArchitectureSpec(
        stages=(StageSpec(depth=4, width=MAX_WIDTH),), stem_width=MAX_WIDTH, in_channels=1
    )
    result = run_trial(_request(spec, batch_size=256))
    assert result.state == "failed" and result.reason.startswith("too_big: "), result.reason
    assert builds == [] and result.duration_s < 5.0


def test_a_small_digits_candidate_still_trains_under_a_limit(monkeypatch, builds):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1024")
    result = run_trial(_request(tiny_spec(), epochs=2))
    assert result.state == "complete", result.reason
    assert len(builds) == 1 and len(result.epochs) == 2


def test_the_check_is_cheap(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "256")
    from workers import TrainConfig, load_data

    config = TrainConfig(device="cpu")
    data = load_data(config)
    spec = _wide_spec()
    trial_module._too_big(spec, config, data, CPU)  # first call imports what it needs
    start = time.perf_counter()
    reason = trial_module._too_big(spec, config, data, CPU)
    assert time.perf_counter() - start < 0.05
    assert reason.startswith("too_big: ")
    assert trial_module._too_big(tiny_spec(), config, data, CPU) is None


def test_off_skips_the_check_and_a_bad_limit_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "off")
    assert memory_budget(CPU) is None
    for bad in ("lots", "-5", "0", "inf", "nan"):
        monkeypatch.setenv(MEMORY_LIMIT_ENV, bad)
        with pytest.raises(ValueError, match=f"`{MEMORY_LIMIT_ENV}` got"):
            memory_limit()
    result = run_trial(_request(tiny_spec()))
    assert result.state == "failed"
    assert result.reason.startswith(f"error: ValueError: `{MEMORY_LIMIT_ENV}` got 'nan'")


def test_the_limit_caps_what_is_measured_but_never_raises_it(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "100")
    budget = memory_budget(CPU)
    assert (budget.available, budget.source) == (100 * MIB, MEMORY_LIMIT_ENV)
    assert budget.usable == int(100 * MIB * (1 - HEADROOM))
    measured = cpu_available()
    if measured is not None:
        monkeypatch.setenv(MEMORY_LIMIT_ENV, str(2 * measured[0] // MIB + 1024))
        assert memory_budget(CPU).source != MEMORY_LIMIT_ENV


def _fake_system(tmp_path, *, available_kb: int, cgroup_max: str | None, group: str = "job"):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:       65536000 kB\nMemFree:         1000000 kB\n"
        f"MemAvailable:   {available_kb} kB\n"
    )
    (proc / "self" / "cgroup").write_text(f"0::/{group}\n")
    if cgroup_max is not None:
        (cgroup / group).mkdir(parents=True)
        (cgroup / group / "memory.max").write_text(cgroup_max + "\n")
        (cgroup / group / "memory.current").write_text(str(3 * 2**30) + "\n")
        (cgroup / group / "memory.stat").write_text(f"anon 1\ninactive_file {2**30}\n")
    return proc, cgroup


def test_cpu_memory_is_the_smaller_of_meminfo_and_what_the_cgroup_leaves(tmp_path):
    # 8 GiB limit, 3 GiB used of which 1 GiB is reclaimable cache: 6 GiB left.
    proc, cgroup = _fake_system(tmp_path, available_kb=16 * 2**20, cgroup_max=str(8 * 2**30))
    assert cpu_available(proc, cgroup) == (6 * 2**30, "cgroup")
    proc, cgroup = _fake_system(tmp_path / "b", available_kb=2**20, cgroup_max=str(8 * 2**30))
    assert cpu_available(proc, cgroup) == (2**30, "meminfo")
    proc, cgroup = _fake_system(tmp_path / "c", available_kb=2**20, cgroup_max="max")
    assert cpu_available(proc, cgroup) == (2**30, "meminfo")


def test_the_reason_says_both_sizes_and_what_to_do():
    from search_spaces.cost import MemoryEstimate

    estimate = MemoryEstimate(
        weights=2**30, gradients=2**30, optimizer=2**30, activations=5 * 2**30, workspace=0
    )
    budget = MemoryBudget(available=9 * 2**30, source="cuda", reserved=2**30)
    cuda = torch.device("cuda", 0)
    reason = too_big_reason(estimate, budget, cuda, 128)
    assert reason == (
        "too_big: training needs about 8.0 GiB at batch_size 128 (3.0 GiB weights, gradients "
        "and optimizer state, 5.0 GiB activations and workspace) but 7.1 GiB of GPU memory is "
        "available (cuda: 9.0 GiB less 10% headroom, after 1.0 GiB of data); use a smaller "
        "batch_size, bound the search with max_params, or give the worker more memory"
    )
    assert too_big_reason(estimate, MemoryBudget(available=9 * 2**30, source="cuda"), cuda,
                          128) is None
    assert too_big_reason(estimate, None, cuda, 128) is None
    # On CPU the allocator holds freed activations: the same estimate needs more there.
    assert too_big_reason(estimate, MemoryBudget(available=9 * 2**30, source="meminfo"), CPU,
                          128).startswith("too_big: training needs about 13.0 GiB")
