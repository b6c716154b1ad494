"""run_trial: accuracy, determinism, pruning, failures as results, weights, measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import workers.trial as trial_module
from tests.workers.conftest import tiny_spec, write_npz
from workers import TrainConfig, TrialRequest, TrialResult, load_data, run_trial

FAST = {"epochs": 2, "cpu_threads": 1}


def _request(spec=None, **config) -> dict:
    spec = spec if spec is not None else tiny_spec()
    return TrialRequest(spec=spec.to_dict(), config=config, key="k-1").to_dict()


@pytest.fixture(scope="module")
def trained() -> TrialResult:
    """One full default-recipe trial on digits, shared by the tests that read it."""
    return run_trial(_request(cpu_threads=1))


def test_default_recipe_trains_a_small_resnet_on_digits_above_95_percent(trained):
    assert trained.state == "complete", trained.reason
    assert trained.val_accuracy >= 0.95
    assert len(trained.epochs) == TrainConfig().epochs
    assert trained.best_val_accuracy >= trained.val_accuracy
    assert trained.duration_s < 30


def test_result_carries_identity_cost_and_measurements(trained, spec):
    assert trained.key == "k-1"
    assert trained.arch_id == spec.arch_id and trained.recipe_id == TrainConfig().recipe_id
    assert trained.params > 0 and trained.flops is not None
    assert trained.latency_ms > 0 and trained.latency_ms_batch > 0
    assert trained.latency_batch_size == 256
    assert trained.samples_per_s > 0 and trained.peak_memory_mb > 0
    assert trained.device == "cpu" and trained.host
    assert 0 <= trained.setup_s < trained.duration_s
    assert trained.started <= trained.finished
    first = trained.epochs[0]
    assert set(first) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"}
    assert [e["epoch"] for e in trained.epochs] == list(range(1, 9))
    json.dumps(trained.to_dict())  # JSON-ready as it is


def test_weights_load_into_a_fresh_build_and_reproduce_the_reported_accuracy(trained, spec):
    from safetensors.torch import load

    net = trial_module.build_model(spec)
    net.load_state_dict(load(trained.weights))
    net.eval()
    data = load_data(TrainConfig())
    with torch.inference_mode():
        logits = net(data.x_val)
        again = net(data.x_val)
    accuracy = int((logits.argmax(1) == data.y_val).sum()) / len(data.y_val)
    assert accuracy == trained.val_accuracy
    torch.testing.assert_close(logits, again)


def test_same_spec_recipe_and_seed_give_identical_metrics_on_cpu():
    first = run_trial(_request(**FAST))
    second = run_trial(_request(**FAST))
    strip = ("seconds", "train_seconds")
    assert first.state == second.state == "complete"
    assert [{k: v for k, v in e.items() if k not in strip} for e in first.epochs] == [
        {k: v for k, v in e.items() if k not in strip} for e in second.epochs
    ]


def test_reporter_asking_to_stop_prunes_the_trial_after_that_epoch():
    seen: list[tuple[int, float]] = []

    class StopAtTwo:
        def report(self, epoch: int, metrics: dict) -> bool:
            seen.append((epoch, metrics["val_accuracy"]))
            return epoch >= 2

    result = run_trial(_request(epochs=6, cpu_threads=1), reporter=StopAtTwo())
    assert result.state == "pruned" and result.reason is None
    assert [e for e, _ in seen] == [1, 2] and len(result.epochs) == 2
    assert result.val_accuracy == seen[-1][1]
    assert result.weights is None


def test_diverging_loss_fails_with_nan_loss():
    result = run_trial(_request(lr=1e6, schedule="none", epochs=3, cpu_threads=1))
    assert (result.state, result.reason) == ("failed", "nan_loss")
    assert result.params > 0 and result.weights is None


def test_time_limit_fails_with_timeout_between_batches():
    result = run_trial(_request(time_limit_s=0.3, epochs=1000, cpu_threads=1))
    assert (result.state, result.reason) == ("failed", "timeout")
    assert result.duration_s < 3.0


def _real_cpu_oom_spec():
    """A spec whose first activation needs ~4x the machine's RAM: the allocation fails at
    once with ENOMEM (no page is touched, so the OOM killer is never involved)."""
    ram = int(open("/proc/meminfo").read().split()[1]) * 1024
    width = 1
    while 1438 * 8 * 8 * 4 * width < 4 * ram:  # batch x H x W x float32 x channels
        width *= 2
    from search_spaces.spec import ArchitectureSpec, StageSpec

    return ArchitectureSpec(
        stages=(StageSpec(depth=1, width=1, skip="none"),), stem_width=width, in_channels=1
    )


def _overcommit_mode() -> str | None:
    try:
        return open("/proc/sys/vm/overcommit_memory").read().strip()
    except OSError:
        return None


@pytest.mark.skipif(
    _overcommit_mode() not in ("0", "2"),
    reason="a real CPU out-of-memory needs Linux with heuristic or strict overcommit; with "
    "overcommit always on, the allocation would succeed and the OOM killer would strike later",
)
def test_a_real_allocation_failure_is_reported_as_out_of_memory(monkeypatch):
    # The worker's own check would refuse this candidate before it allocates (test_memory.py):
    # off here, to meet torch's real failure.
    monkeypatch.setenv("RESNAS_MEMORY_LIMIT_MB", "off")
    spec = _real_cpu_oom_spec()
    result = run_trial(_request(spec, batch_size=1438, epochs=1, cpu_threads=1))
    assert (result.state, result.reason) == ("failed", "out_of_memory")
    assert result.params > 0 and result.traceback is None


def test_cuda_out_of_memory_error_is_reported_as_out_of_memory(monkeypatch):
    """No GPU here, so CUDA's OOM exception is raised from inside the forward pass."""

    real_build = trial_module.build_model

    def build_then_fail(spec):
        net = real_build(spec)

        def hook(module, inputs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        net.register_forward_pre_hook(hook)
        return net

    monkeypatch.setattr(trial_module, "build_model", build_then_fail)
    result = run_trial(_request(**FAST))
    assert (result.state, result.reason) == ("failed", "out_of_memory")


def test_invalid_spec_fails_with_an_error_reason_and_no_crash():
    request = _request(**FAST)
    request["spec"]["stages"][0]["depth"] = 0
    result = run_trial(request)
    assert result.state == "failed"
    assert result.reason.startswith("error: ValueError: `depth` got 0")
    assert result.traceback and "Traceback" in result.traceback
    assert result.params is None and result.arch_id is None


def test_spec_that_does_not_fit_the_dataset_fails_but_still_reports_its_cost():
    result = run_trial(_request(tiny_spec(num_classes=5), **FAST))
    assert result.state == "failed" and result.reason.startswith("error: ValueError:")
    assert "num_classes=5" in result.reason
    assert result.params > 0 and result.flops is not None and result.arch_id


def test_missing_dataset_fails_with_the_data_error_message(tmp_path):
    result = run_trial(_request(dataset=f"npz:{tmp_path / 'none.npz'}", **FAST))
    assert result.state == "failed" and result.reason.startswith("error: DataError:")


def test_unknown_config_key_fails_with_an_error_reason():
    result = run_trial(_request(epochz=2))
    assert result.state == "failed" and "`epochz`" in result.reason


def test_npz_dataset_in_nhwc_trains_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=96)
    x = rng.normal(size=(96, 6, 6, 3)).astype(np.float32) + y[:, None, None, None]
    dataset = write_npz(tmp_path / "rgb.npz", x, y)
    spec = tiny_spec(in_channels=3, num_classes=3)
    result = run_trial(_request(spec, dataset=dataset, augment=True, batch_size=16, **FAST))
    assert result.state == "complete", result.traceback
    assert len(result.epochs) == 2 and result.val_accuracy is not None


def test_adamw_cosine_and_step_schedules_train():
    for schedule in ("cosine", "step"):
        result = run_trial(_request(optimizer="adamw", lr=3e-3, schedule=schedule, **FAST))
        assert result.state == "complete", result.reason


def test_lightning_prints_nothing_during_a_trial(capfd):
    run_trial(_request(epochs=1, cpu_threads=1))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_cpu_threads_are_restored_after_the_trial():
    before = torch.get_num_threads()
    run_trial(_request(epochs=1, cpu_threads=1))
    assert torch.get_num_threads() == before


def test_result_survives_pickle_free_json_with_weights_kept_apart(trained):
    data = trained.to_dict()
    back = TrialResult.from_dict(json.loads(json.dumps(data)))
    assert back.val_accuracy == trained.val_accuracy and back.epochs == trained.epochs
    assert isinstance(trained.weights, bytes) and len(trained.weights) > 8
