"""`run_trial`: train and measure one candidate with Lightning; failures become results.

No Ray, Optuna or SQL here: a GPU box with torch + lightning + scikit-learn runs this.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import socket
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from search_spaces.spec import ArchitectureSpec
from workers.config import TrainConfig
from workers.data import LoadedData, load_data
from workers.measure import (
    LATENCY_BATCH_SIZE,
    device_name,
    measure_latency,
    peak_memory_mb,
    reset_peak_memory,
)
from workers.memory import OPTIMIZER_STATES, memory_budget, too_big_reason
from workers.module import ClassifierModule, TensorDataModule, TrialMonitor, TrialStop
from workers.results import Reporter, TrialRequest, TrialResult

_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")
_MAX_REASON_CHARS = 500
_TRACEBACK_FRAMES = 8
_EVAL_BATCH_SIZE = 256  # validation keeps no activations, so larger batches are cheap
# Share of free GPU memory the dataset may take to live on the GPU for the whole trial
# (no host->device copies per batch); bigger datasets stay in pinned host memory.
_GPU_DATA_SHARE = 0.25


# -- the two search_spaces entry points (tests may stand in for them) ------------------------
def build_model(spec: ArchitectureSpec) -> torch.nn.Module:
    """`search_spaces.build_model`, looked up at call time.

    Args:
        spec: the architecture.
    """
    import search_spaces

    return search_spaces.build_model(spec)


def complexity(spec: ArchitectureSpec, input_size: tuple[int, int]) -> Any:
    """`search_spaces.complexity` (params, flops), looked up at call time.

    Args:
        spec: the architecture.
        input_size: (H, W) of the dataset's images.
    """
    import search_spaces

    return search_spaces.complexity(spec, input_size)


def training_memory(
    spec: ArchitectureSpec,
    input_size: tuple[int, int],
    batch_size: int,
    *,
    optimizer_states: int,
    eval_batch_size: int,
) -> Any:
    """`search_spaces.training_memory` (bytes a training step needs), looked up at call time.

    Args:
        spec: the architecture.
        input_size: (H, W) of the dataset's images.
        batch_size: samples per training step.
        optimizer_states: buffers per parameter the optimizer keeps.
        eval_batch_size: samples per forward pass without autograd.
    """
    import search_spaces

    return search_spaces.training_memory(
        spec,
        input_size,
        batch_size,
        optimizer_states=optimizer_states,
        eval_batch_size=eval_batch_size,
    )


def morph_weights(
    parent: ArchitectureSpec, parent_state: dict[str, torch.Tensor], child: ArchitectureSpec,
    *, seed: int,
) -> dict[str, torch.Tensor]:
    """`search_spaces.morph_weights` (the child's state_dict computing the parent's function),
    looked up at call time.

    Args:
        parent: the trained architecture.
        parent_state: its trained state_dict.
        child: the architecture to grow into.
        seed: picks the copied channels and the fresh weights of new blocks.
    """
    from search_spaces.morph import morph_weights as morph

    return morph(parent, parent_state, child, seed=seed)


# -- helpers -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logging and its advice warnings for the duration."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    saved = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=".*barebones.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means "out of memory" (CUDA OOM, a failed CPU allocation).

    Args:
        exc: the exception.
    """
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _OOM_MARKERS)
    return False


def _error_reason(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"error: {type(exc).__name__}: {message}".rstrip(": ").rstrip()
    return reason[:_MAX_REASON_CHARS]


def _short_traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-_TRACEBACK_FRAMES)
    return "".join(lines)[-4000:]


def _pick_device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("`device` got 'cuda'; allowed: auto | cpu (no CUDA device here)")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pick_precision(config: TrainConfig, device: torch.device) -> str:
    """Lightning's precision string; `auto` = bf16-mixed on CUDA devices that support it."""
    if config.precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"
    return "32-true" if config.precision == "32" else config.precision


_device_data: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}


def _data_on(data: LoadedData, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The dataset's tensors where batches should come from: as-is on CPU; on the GPU
    when they fit (cached for the next trial of this process), else pinned host memory."""
    tensors = (data.x_train, data.y_train, data.x_val, data.y_val)
    if device.type != "cuda":
        return tensors
    key = (id(data), str(device))
    if key not in _device_data:
        _device_data.clear()  # one dataset at a time on the GPU
        free, _ = torch.cuda.mem_get_info(device)
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size < _GPU_DATA_SHARE * free:
            _device_data[key] = tuple(t.to(device, non_blocking=True) for t in tensors)
        else:
            _device_data[key] = tuple(t.pin_memory() for t in tensors)
    return _device_data[key]


def _data_reserve(data: LoadedData, device: torch.device) -> int:
    """Bytes `_data_on` will copy to `device` for this trial (0 on CPU, where the data is
    already loaded, or where it is on the GPU already or will stay in host memory)."""
    if device.type != "cuda" or (id(data), str(device)) in _device_data:
        return 0
    tensors = (data.x_train, data.y_train, data.x_val, data.y_val)
    size = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    return size if size < _GPU_DATA_SHARE * free else 0


def _too_big(
    spec: ArchitectureSpec, config: TrainConfig, data: LoadedData, device: torch.device
) -> str | None:
    """The `too_big` reason where the predicted training memory exceeds what the trial
    was given (see `workers.memory`); None where it fits or cannot be told."""
    info = data.info
    try:
        estimate = training_memory(
            spec,
            info.input_size,
            min(config.batch_size, info.num_train),  # no batch is larger than the data
            optimizer_states=OPTIMIZER_STATES[config.optimizer],
            eval_batch_size=max(
                min(max(config.batch_size, _EVAL_BATCH_SIZE), info.num_val), LATENCY_BATCH_SIZE
            ),
        )
    except Exception:  # noqa: BLE001 - like the cost, the estimate informs; training decides
        return None
    budget = memory_budget(device, reserved=_data_reserve(data, device))
    return too_big_reason(estimate, budget, device, config.batch_size)


# Images the inherited start is checked on: enough to see a broken morph, cheap on any net.
_INHERIT_CHECK_SAMPLES = 64
# The most the child's outputs may differ from the parent's at the start, relative to the
# parent's largest output (at least 1): float32 morphs measure a few 1e-6.
INHERIT_GAP_TOLERANCE = 1e-4


def _inherit(net: torch.nn.Module, spec: ArchitectureSpec, parent: dict[str, Any],
             x_check: torch.Tensor, seed: int) -> dict[str, Any]:
    """Load into `net` the parent's weights morphed into `spec`; what it did, in plain data.

    The start is checked: the child's and the parent's outputs (eval mode) on a few
    validation images, whose largest difference is returned as `gap`; past
    `INHERIT_GAP_TOLERANCE` the trial stops (`inherit_gap: ...`) rather than train a child
    that does not start as its parent."""
    from safetensors.torch import load as load_safetensors

    from search_spaces.morph import check_morph

    parent_spec = ArchitectureSpec.from_dict(parent["spec"])
    weights = parent.get("weights")
    if not isinstance(weights, (bytes, bytearray)):
        raise ValueError("`parent.weights` got no safetensors bytes")
    parent_state = load_safetensors(bytes(weights))
    try:
        state = morph_weights(parent_spec, parent_state, spec, seed=seed)
    except ValueError as exc:  # the driver sent a parent that does not grow into this spec
        raise TrialStop(f"not_a_morph: {exc}") from None
    net.load_state_dict(state, strict=True)
    parent_net = build_model(parent_spec)
    parent_net.load_state_dict(parent_state, strict=True)
    x = x_check[:_INHERIT_CHECK_SAMPLES].to("cpu", torch.float32)
    net.eval()
    parent_net.eval()
    with torch.no_grad():
        expected = parent_net(x)
        gap = float((net(x) - expected).abs().max())
        allowed = INHERIT_GAP_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not gap <= allowed:  # NaN too
        raise TrialStop(f"inherit_gap: the child starts {gap:.3g} away from its parent "
                        f"{parent_spec.arch_id} (allowed {allowed:.3g})")
    net.train()
    return {"morph": check_morph(parent_spec, spec).describe() or ["same architecture"],
            "gap": gap, "parent_arch_id": parent_spec.arch_id}


def _weights_bytes(net: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    return save(state)


# -- the trial ---------------------------------------------------------------------------------
def run_trial(
    request: TrialRequest | dict[str, Any], reporter: Reporter | None = None
) -> TrialResult:
    """Train one architecture with one recipe and measure it. Never raises for a failed
    trial: NaN loss, out of memory, timeout and exceptions come back as `state="failed"`,
    and so does a candidate whose predicted training memory exceeds what the worker was
    given (`too_big: ...`, before its model is built; see `workers.memory`).

    Args:
        request: a `TrialRequest` or its dict (spec, config, key).
        reporter: gets `report(epoch, metrics)` after each validation epoch; returning
            True stops training now and the result is `pruned`.
    """
    t0 = time.perf_counter()
    result = TrialResult(state="failed", host=socket.gethostname(), started=time.time())
    try:
        with _quiet_lightning():
            _run(request, reporter, result, t0)
    except Exception as exc:  # noqa: BLE001 - a trial's failure is data, not a crash
        result.state = "failed"
        if isinstance(exc, TrialStop):
            result.reason = exc.reason
        elif is_out_of_memory(exc):
            result.reason = "out_of_memory"
        else:
            result.reason = _error_reason(exc)
            result.traceback = _short_traceback(exc)
        result.weights = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # Trainer <-> module cycles would hold GPU tensors until the next gc
    result.finished = time.time()
    result.duration_s = time.perf_counter() - t0
    return result


def _run(
    request: TrialRequest | dict[str, Any],
    reporter: Reporter | None,
    result: TrialResult,
    t0: float,
) -> None:
    """Fill `result` in place (so that a failure keeps what was measured before it)."""
    # 1. parse: request, spec, recipe
    request = TrialRequest.from_dict(request)
    result.key = request.key
    config = TrainConfig.from_dict(request.config)
    result.recipe_id = config.recipe_id
    result.dataset = config.dataset
    spec = ArchitectureSpec.from_dict(request.spec)
    result.arch_id = spec.arch_id
    deadline = None if config.time_limit_s is None else t0 + config.time_limit_s
    device = _pick_device(config)
    result.device = device_name(device)

    with _threads(config.cpu_threads):
        # 2. data (cached per process) and cost from the spec alone
        data = load_data(config)
        info = data.info
        try:
            cost = complexity(spec, info.input_size)
            result.params, result.flops = int(cost.params), int(cost.flops)
        except Exception:  # noqa: BLE001 - cost is informative; training decides the outcome
            result.params = result.flops = None

        if (spec.in_channels, spec.num_classes) != (info.in_channels, info.num_classes):
            raise ValueError(
                f"the spec has in_channels={spec.in_channels}, num_classes={spec.num_classes} "
                f"but dataset `{info.name}` has {info.in_channels} channel(s) and "
                f"{info.num_classes} classes"
            )
        # 3. refuse what cannot fit before it allocates (swap or the OOM killer otherwise)
        too_big = _too_big(spec, config, data, device)
        if too_big is not None:
            result.state, result.reason = "failed", too_big
            return

        # 4. model, precision, layout
        pl.seed_everything(config.seed, workers=True, verbose=False)
        net = build_model(spec)
        if request.parent is not None:
            result.inherited = _inherit(net, spec, request.parent, data.x_val, config.seed)
        if result.params is None:
            result.params = sum(p.numel() for p in net.parameters())
        precision = _pick_precision(config, device)
        mixed = precision.endswith("-mixed")
        channels_last = (
            device.type == "cuda" and mixed
            if config.channels_last == "auto"
            else bool(config.channels_last)
        )
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        forward_net = torch.compile(net) if config.compile else net

        x_train, y_train, x_val, y_val = _data_on(data, device)
        datamodule = TensorDataModule(
            x_train,
            y_train,
            x_val,
            y_val,
            batch_size=config.batch_size,
            seed=config.seed,
            val_batch_size=max(config.batch_size, _EVAL_BATCH_SIZE),
            drop_last=config.compile,
            augment=config.augment,
            flip=data.flip,
            channels_last=channels_last,
        )
        module = ClassifierModule(
            net,
            config,
            steps_per_epoch=len(datamodule.train_batches),
            forward_net=forward_net,
        )
        monitor = TrialMonitor(reporter, started=t0, deadline=deadline)
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index] if device.type == "cuda" else 1,
            precision=precision,
            max_epochs=config.epochs,
            barebones=True,  # no logger, checkpoints, progress bar, summary, sanity check
            callbacks=[monitor],
            benchmark=device.type == "cuda",  # fixed shapes: let cuDNN pick kernels once
            use_distributed_sampler=False,
            default_root_dir=None,
        )

        # 5. train
        reset_peak_memory(device)
        try:
            trainer.fit(module, datamodule=datamodule)
        except TrialStop:
            _record_epochs(result, monitor)
            raise
        finally:
            result.setup_s = monitor.setup_s
            result.peak_memory_mb = peak_memory_mb(device)
        _record_epochs(result, monitor)
        result.state = "pruned" if monitor.pruned else "complete"

        # 6. measure the trained network
        autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        latency_net = forward_net.to(device) if device.type == "cuda" else forward_net
        result.latency_ms, result.latency_ms_batch = measure_latency(
            latency_net,
            (info.in_channels, *info.input_size),
            device,
            channels_last=channels_last,
            autocast_dtype=autocast_dtype if device.type == "cuda" else None,
        )
        result.latency_batch_size = LATENCY_BATCH_SIZE
        if result.state == "complete" and config.keep_weights:
            result.weights = _weights_bytes(net)


def _record_epochs(result: TrialResult, monitor: Any) -> None:
    result.epochs = list(monitor.epochs)
    if not result.epochs:
        return
    last = result.epochs[-1]
    result.val_accuracy = last["val_accuracy"]
    result.val_loss = last["val_loss"]
    result.best_val_accuracy = max(e["val_accuracy"] for e in result.epochs)
    seconds = sum(e["train_seconds"] for e in result.epochs)
    samples = sum(e["train_samples"] for e in result.epochs)
    result.samples_per_s = samples / seconds if seconds > 0 and math.isfinite(seconds) else None
