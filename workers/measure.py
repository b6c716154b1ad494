"""Measurements around training: inference latency, peak memory, device name."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time

import torch

LATENCY_BATCH_SIZE = 256
# Time budgets (seconds) per latency measurement: enough repeats for a stable median on
# small models, yet a trial on digits spends < 0.1 s here. At least one timed run always.
_BUDGET_BATCH1_S = 0.03
_BUDGET_BATCH_S = 0.06
_MAX_REPEATS = 25


def device_name(device: torch.device) -> str:
    """`cpu` or the CUDA device's marketing name (e.g. `NVIDIA H100 80GB HBM3`).

    Args:
        device: the device the trial ran on.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh CUDA peak-memory window (CPU max RSS cannot be reset).

    Args:
        device: the trial's device.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA max allocated since `reset_peak_memory`, or on CPU the
    process's max resident set size (a process-lifetime high-water mark).

    Args:
        device: the trial's device.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(
    net: torch.nn.Module, x: torch.Tensor, device: torch.device, budget_s: float
) -> float:
    net(x)  # warm-up (allocator, kernel selection)
    _sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < _MAX_REPEATS and (not times or spent < budget_s):
        start = time.perf_counter()
        net(x)
        _sync(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return statistics.median(times) * 1000.0


def measure_latency(
    net: torch.nn.Module,
    input_shape: tuple[int, int, int],
    device: torch.device,
    *,
    batch_size: int = LATENCY_BATCH_SIZE,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Median forward latency (ms) at batch 1 and at `batch_size`, eval mode, no autograd.

    Args:
        net: the trained network (switched to eval mode here).
        input_shape: (C, H, W) of one sample.
        device: where to run.
        batch_size: the larger batch.
        channels_last: feed channels-last inputs (as in training).
        autocast_dtype: run under autocast with this dtype (mixed-precision trials).
    """
    net.eval()
    gen = torch.Generator().manual_seed(0)  # local: leaves the global RNG alone
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    big = torch.randn((batch_size, *input_shape), generator=gen).to(device)
    big = big.contiguous(memory_format=fmt)
    one = big[:1].contiguous(memory_format=fmt)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        ms1 = _median_ms(net, one, device, _BUDGET_BATCH1_S)
        ms_batch = _median_ms(net, big, device, _BUDGET_BATCH_S)
    return ms1, ms_batch
