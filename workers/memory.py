"""The memory a trial was given, and whether a candidate's predicted training memory fits it.

Checked before the model is built, so a candidate that cannot fit fails in milliseconds as
`too_big` instead of swapping the machine or meeting the OOM killer halfway through a step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# MiB this worker may use for one trial (several workers on one GPU or machine each set
# theirs); it caps what is measured. `off` skips the check (an estimate wrong for a spec).
MEMORY_LIMIT_ENV = "RESNAS_MEMORY_LIMIT_MB"
# Share of the available memory kept free: allocator rounding and fragmentation, cuDNN
# workspaces, the framework's own buffers.
HEADROOM = 0.10
# Buffers per parameter of each optimizer a recipe can name (`TrainConfig.optimizer`):
# SGD's momentum; AdamW's first and second moments.
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}
# On CPU, glibc keeps freed activation memory in its heap instead of returning it: the max
# RSS of ResNet training steps measured 1.3-1.9x their live activations and workspace.
CPU_ACTIVATION_OVERHEAD = 2.0
TOO_BIG = "too_big"

_MIB = 2**20


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes a trial may use.

    Args:
        available: what the worker was given: free device memory (CUDA, plus what this
            process's allocator caches), or the memory available to the process (CPU).
        source: where `available` came from: `cuda`, `cgroup`, `meminfo`, `psutil` or
            `RESNAS_MEMORY_LIMIT_MB`.
        reserved: bytes the trial takes before the model (its dataset copied to the GPU).
    """

    available: int
    source: str
    reserved: int = 0

    @property
    def usable(self) -> int:
        """What the model may take: `available` less the headroom and `reserved`."""
        return max(0, int(self.available * (1.0 - HEADROOM)) - self.reserved)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _meminfo_available(proc: Path) -> int | None:
    text = _read(proc / "meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _stat(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _cgroup_left(proc: Path, cgroup: Path) -> int | None:
    """Bytes left under the process's cgroup memory limit (None where no limit is set).

    Usage counts the page cache; its inactive part is reclaimed before the limit bites, so
    it is not counted as used (the kubelet's working set does the same).
    """
    dirs = []
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        if line.startswith("0::"):  # cgroup v2: the process's own group first
            dirs.append(cgroup / line[3:].strip().lstrip("/"))
    dirs.append(cgroup)
    for d in dirs:
        limit = (_read(d / "memory.max") or "").strip()
        if limit and limit != "max":
            used = int((_read(d / "memory.current") or "0").strip() or 0)
            used -= _stat(_read(d / "memory.stat"), "inactive_file")
            return max(0, int(limit) - max(0, used))
    v1 = cgroup / "memory"
    limit = (_read(v1 / "memory.limit_in_bytes") or "").strip()
    if limit.isdigit() and int(limit) < 2**60:  # "no limit" reads as a huge number
        used = int((_read(v1 / "memory.usage_in_bytes") or "0").strip() or 0)
        used -= _stat(_read(v1 / "memory.stat"), "total_inactive_file")
        return max(0, int(limit) - max(0, used))
    return None


def cpu_available(
    proc: str | Path = "/proc", cgroup: str | Path = "/sys/fs/cgroup"
) -> tuple[int, str] | None:
    """Bytes this process can still allocate without swapping, and where that came from.

    The smaller of `MemAvailable` (/proc/meminfo) and what is left under a cgroup memory
    limit; psutil's figure where neither can be read (not Linux); None where nothing can.

    Args:
        proc: the proc file system (a folder laid out like it, in tests).
        cgroup: the cgroup file system.
    """
    proc, cgroup = Path(proc), Path(cgroup)
    found = [
        (value, source)
        for value, source in (
            (_meminfo_available(proc), "meminfo"),
            (_cgroup_left(proc, cgroup), "cgroup"),
        )
        if value is not None
    ]
    if found:
        return min(found)
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available), "psutil"


def _cuda_available(device: torch.device) -> tuple[int, str]:
    free, _ = torch.cuda.mem_get_info(device)
    # Blocks this process's allocator caches (from earlier trials) are free to it.
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached), "cuda"


def memory_limit() -> int | None | str:
    """`RESNAS_MEMORY_LIMIT_MB` in bytes, None where unset, or `off`.

    Raises:
        ValueError: the variable is set to something else than a number of MiB > 0 or off.
    """
    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not raw:
        return None
    if raw.lower() == "off":
        return "off"
    try:
        mib = float(raw)
    except ValueError:
        mib = -1.0
    if not mib > 0 or mib == float("inf"):
        raise ValueError(f"`{MEMORY_LIMIT_ENV}` got {raw!r}; allowed: a number of MiB > 0 | off")
    return int(mib * _MIB)


def memory_budget(device: torch.device, *, reserved: int = 0) -> MemoryBudget | None:
    """What a trial on `device` may use; None where it cannot be told (no check then).

    Args:
        device: the trial's device.
        reserved: bytes the trial takes before the model (its data copied to the device).
    """
    limit = memory_limit()
    if limit == "off":
        return None
    measured = _cuda_available(device) if device.type == "cuda" else cpu_available()
    if limit is not None and (measured is None or limit < measured[0]):
        measured = (limit, MEMORY_LIMIT_ENV)
    if measured is None:
        return None
    return MemoryBudget(available=measured[0], source=measured[1], reserved=reserved)


def needed_bytes(estimate: Any, device: torch.device) -> int:
    """The estimate's total as `device`'s allocator will hold it (see
    `CPU_ACTIVATION_OVERHEAD`).

    Args:
        estimate: a `search_spaces.cost.MemoryEstimate`.
        device: the trial's device.
    """
    if device.type == "cuda":
        return int(estimate.total)
    resident = estimate.weights + estimate.gradients + estimate.optimizer
    return int(resident + CPU_ACTIVATION_OVERHEAD * (estimate.activations + estimate.workspace))


def format_bytes(n: int) -> str:
    """`512 MiB`, `3.2 GiB`, `1.5 TiB`."""
    if n < 2**30:
        return f"{n / _MIB:.0f} MiB"
    if n < 2**40:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**40:.1f} TiB"


def too_big_reason(
    estimate: Any, budget: MemoryBudget | None, device: torch.device, batch_size: int
) -> str | None:
    """The `too_big: ...` reason of a candidate that cannot fit, or None where it fits (or
    nothing is known of the budget).

    Args:
        estimate: the candidate's `search_spaces.cost.MemoryEstimate`.
        budget: what the trial may use (`memory_budget`).
        device: the trial's device.
        batch_size: the recipe's training batch size.
    """
    if budget is None:
        return None
    needed = needed_bytes(estimate, device)
    if needed <= budget.usable:
        return None
    resident = estimate.weights + estimate.gradients + estimate.optimizer
    where = "GPU" if device.type == "cuda" else "CPU"
    reserved = f", after {format_bytes(budget.reserved)} of data" if budget.reserved else ""
    return (
        f"{TOO_BIG}: training needs about {format_bytes(needed)} at batch_size {batch_size} "
        f"({format_bytes(resident)} weights, gradients and optimizer state, "
        f"{format_bytes(needed - resident)} activations and workspace) but "
        f"{format_bytes(budget.usable)} of {where} memory is available "
        f"({budget.source}: {format_bytes(budget.available)} less {HEADROOM:.0%} headroom"
        f"{reserved}); use a smaller batch_size, bound the search with max_params, or give "
        f"the worker more memory"
    )
