"""Training throughput of `run_trial` against a minimal hand-written PyTorch loop.

Same model, data, batch size, optimizer, schedule and threads, in one process. Reports the
steady-state samples/s ratio (Lightning / hand loop, target >= 0.95) and the fixed cost of a
trial around its epochs (duration minus epoch seconds, target <= 0.3 s).

    python -m bench.throughput [--quick] [--threads N] [--epochs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from search_spaces.spec import ArchitectureSpec, StageSpec
from workers import TrainConfig, TrialRequest, load_data, run_trial
from workers.data import TensorBatches
from workers.module import make_optimizer, make_scheduler

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"


def bench_spec(in_channels: int = 1, num_classes: int = 10) -> ArchitectureSpec:
    """A small CIFAR-style ResNet (2 stages of 2 basic blocks, widths 16/32): big enough
    that a step is real work on digits, small enough to time in seconds."""
    return ArchitectureSpec(
        stages=(
            StageSpec(depth=2, width=16),
            StageSpec(depth=2, width=32, stride=2, skip="projection"),
        ),
        stem_width=16,
        in_channels=in_channels,
        num_classes=num_classes,
        name="bench-resnet10",
    )


def resnet20(in_channels: int = 3, num_classes: int = 10) -> ArchitectureSpec:
    """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks, widths 16/32/64."""
    return ArchitectureSpec(
        stages=(
            StageSpec(depth=3, width=16),
            StageSpec(depth=3, width=32, stride=2, skip="zero_pad"),
            StageSpec(depth=3, width=64, stride=2, skip="zero_pad"),
        ),
        stem_width=16,
        in_channels=in_channels,
        num_classes=num_classes,
        name="resnet20",
    )


class _Clock:
    """Reporter that timestamps each epoch end (wall and process CPU time); never prunes."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def report(self, epoch: int, metrics: dict[str, Any]) -> bool:
        self.marks.append((time.perf_counter(), time.process_time()))
        return False


def hand_loop(spec: ArchitectureSpec, config: TrainConfig) -> dict[str, Any]:
    """The minimal loop: per epoch, shuffled batches -> forward, loss, backward, step; then
    one validation pass (as `run_trial` does), so whole epochs compare too.

    Args:
        spec: the architecture.
        config: the recipe (dataset, epochs, batch_size, optimizer, lr, schedule, seed,
            precision, channels_last, device as `run_trial` would resolve them).

    Returns per-epoch training seconds and samples, and (wall, CPU) time at each epoch end.
    """
    import search_spaces

    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    data = load_data(config)
    torch.manual_seed(config.seed)
    net = search_spaces.build_model(spec).to(device)
    mixed = device.type == "cuda" and config.precision in ("auto", "bf16-mixed")
    channels_last = (
        mixed if config.channels_last == "auto" else bool(config.channels_last)
    ) and device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x, y = data.x_train.to(device), data.y_train.to(device)
    batches = TensorBatches(x, y, config.batch_size, shuffle=True, seed=config.seed)
    val = TensorBatches(
        data.x_val.to(device), data.y_val.to(device), max(256, config.batch_size), shuffle=False
    )
    optimizer = make_optimizer(net, config)
    scheduler = make_scheduler(optimizer, config, len(batches))
    epochs, marks = [], []
    for _ in range(config.epochs):
        # 1. train
        net.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, samples = time.perf_counter(), 0
        for xb, yb in batches:
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
                loss = F.cross_entropy(net(xb), yb, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            samples += len(yb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epochs.append({"train_seconds": time.perf_counter() - start, "train_samples": samples})
        # 2. validate
        net.eval()
        correct = torch.zeros((), device=device, dtype=torch.long)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed),
        ):
            for xb, yb in val:
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                correct += (net(xb).argmax(1) == yb).sum()
        int(correct)  # sync, as run_trial reads its metrics
        marks.append((time.perf_counter(), time.process_time()))
    return {"epochs": epochs, "marks": marks}


def steady_rate(epochs: list[dict[str, Any]]) -> float:
    """Training samples/s (wall clock, training only) over the epochs after the first.

    Args:
        epochs: dicts with `train_seconds` and `train_samples`.
    """
    steady = epochs[1:] if len(epochs) > 1 else epochs
    return sum(e["train_samples"] for e in steady) / sum(e["train_seconds"] for e in steady)


def epoch_cpu_rate(epochs: list[dict[str, Any]], marks: list[tuple[float, float]]) -> float:
    """Training samples per second of process CPU time over whole epochs (train + val +
    loop overhead) after the first. With one thread this is immune to other processes
    taking the cores, which wall clock on a shared machine is not.

    Args:
        epochs: dicts with `train_samples`.
        marks: (wall, cpu) time at each epoch end.
    """
    if len(marks) < 2:
        return float("nan")
    samples = sum(e["train_samples"] for e in epochs[1 : len(marks)])
    return samples / (marks[-1][1] - marks[0][1])


def compare(
    spec: ArchitectureSpec, config: TrainConfig, repeats: int, label: str = ""
) -> dict[str, Any]:
    """Interleaved repeats of run_trial and the hand loop; medians and paired ratios.

    Args:
        spec: the architecture.
        config: the recipe both sides use.
        repeats: runs of each side.
        label: a name for the printed row.
    """
    request = TrialRequest(spec=spec.to_dict(), config=config.with_(keep_weights=True).to_dict())
    run_trial(request.to_dict() | {"config": config.with_(epochs=1).to_dict()})  # warm-up
    hand_loop(spec, config.with_(epochs=1))
    rows: list[dict[str, float]] = []
    device = "cpu"
    for i in range(repeats):
        row: dict[str, float] = {}
        if i % 2:  # alternate who goes first, so drift in machine load hits both sides
            hand = hand_loop(spec, config)
        clock = _Clock()
        result = run_trial(request, reporter=clock)
        if result.state != "complete":
            raise RuntimeError(f"benchmark trial failed: {result.reason}\n{result.traceback}")
        if not i % 2:
            hand = hand_loop(spec, config)
        device = result.device or device
        row["run_trial"] = steady_rate(result.epochs)
        row["hand"] = steady_rate(hand["epochs"])
        row["run_trial_cpu"] = epoch_cpu_rate(result.epochs, clock.marks)
        row["hand_cpu"] = epoch_cpu_rate(hand["epochs"], hand["marks"])
        row["fixed_cost_s"] = result.duration_s - sum(e["seconds"] for e in result.epochs)
        row["setup_s"] = result.setup_s or 0.0
        row["latency_ms"] = result.latency_ms
        rows.append(row)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {
        "label": label or spec.name,
        "device": device,
        "spec": spec.summary(),
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "precision": config.precision,
        "channels_last": config.channels_last,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "run_trial_samples_per_s": med("run_trial"),
        "hand_loop_samples_per_s": med("hand"),
        # median of per-pair ratios: each pair ran back to back under the same load
        "ratio": statistics.median(r["run_trial"] / r["hand"] for r in rows),
        "ratio_cpu_time": statistics.median(r["run_trial_cpu"] / r["hand_cpu"] for r in rows),
        "fixed_cost_s": med("fixed_cost_s"),
        "setup_s": med("setup_s"),
        "latency_ms_batch1": med("latency_ms"),
        "runs": rows,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """Args:
    rows: outputs of `compare`.
    """
    head = (
        f"{'case':<26} {'device':<14} {'run_trial/s':>11} {'hand/s':>8} {'ratio':>6} "
        f"{'cpu-ratio':>9} {'fixed s':>8} {'setup s':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['label']:<26} {r['device'][:14]:<14} {r['run_trial_samples_per_s']:>11.0f} "
            f"{r['hand_loop_samples_per_s']:>8.0f} {r['ratio']:>6.3f} {r['ratio_cpu_time']:>9.3f} "
            f"{r['fixed_cost_s']:>8.3f} {r['setup_s']:>8.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Args:
    argv: command-line arguments (see the module docstring).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (4 if args.quick else 8)
    repeats = args.repeats or (3 if args.quick else 5)
    config = TrainConfig(epochs=epochs, cpu_threads=args.threads, device="cpu")
    load_before = os.getloadavg()[0]  # other processes on the machine skew both sides
    rows = [
        compare(bench_spec(), config, repeats, "digits resnet10 b64"),
        compare(bench_spec(), config.with_(batch_size=256), repeats, "digits resnet10 b256"),
    ]
    print_table(rows)
    # One thread on CPU: CPU time is the fair clock when other processes share the cores.
    key = "ratio_cpu_time" if args.threads == 1 else "ratio"
    ok = all(r[key] >= 0.95 and r["fixed_cost_s"] <= 0.3 for r in rows)
    print(f"targets ({key} >= 0.95, fixed cost <= 0.3 s): {'met' if ok else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python -m bench.throughput" + (" --quick" if args.quick else ""),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rows": rows,
        "targets_met": ok,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
