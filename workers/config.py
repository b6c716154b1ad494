"""The training recipe of one trial (`TrainConfig`): plain, validated, hashable data.

Standard library only, so the orchestrator can build and hash recipes without torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "none")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
DEVICES = ("auto", "cpu", "cuda")

# Fields that change where or how fast a trial runs but not what it learns. They stay out
# of `recipe_id`, so the same recipe run on a laptop and on a GPU box is recognised as one.
# `channels_last` and `compile` only change the memory layout / kernels (float rounding,
# like `device`); `data_dir` only says where the same files live.
_NOT_IN_RECIPE = frozenset(
    {
        "data_dir",
        "time_limit_s",
        "cpu_threads",
        "device",
        "keep_weights",
        "channels_last",
        "compile",
    }
)


def _fail(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"`{name}` got {value!r}; allowed: {allowed}")


def _as_float(name: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(name, value, allowed)
    return float(value)


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(name, value, f"an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """How one candidate is trained and measured. The defaults train a small ResNet on
    `digits` to >= 0.95 validation accuracy in 8 epochs, in seconds on one CPU core.

    Args:
        dataset: `digits` (sklearn, bundled) | `npz:PATH` | `cifar10` | `cifar100` | `mnist`
            | `fashion_mnist` | `svhn` (the last five read via torchvision from `data_dir`)
            | `replay:TABLE` (answered from a table of known results, never loaded: the
            recipe of a search that replays, `nas search --replay`).
        data_dir: where the torchvision datasets live (standard layout); `~` is expanded.
        val_fraction: share of the training set held out for validation (ignored when an
            npz file brings its own `x_val`/`y_val`). The split has its own fixed seed, so
            every trial of a search validates on the same images whatever its `seed`.
        epochs: full passes over the training split; also the trial's `fidelity`.
        batch_size: training samples per step.
        optimizer: `sgd` (momentum 0.9, Nesterov) | `adamw`.
        lr: peak learning rate (the max of `onecycle`, the start of `cosine`/`step`).
        schedule: `onecycle` | `cosine` | `step` (x0.1 at 50% and 75%) | `none`; per step.
        weight_decay: decoupled (adamw) or L2 (sgd) decay, on weights only (not norms/biases).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        augment: random shifts (pad 1/8 of the size, crop) and, for natural-image datasets,
            horizontal flips; done on the batch tensor, on the device.
        precision: `auto` (bf16-mixed on a CUDA device with bf16, else 32) | `32` |
            `bf16-mixed` | `16-mixed` (CUDA only).
        channels_last: `auto` (on with mixed precision on CUDA) | true | false.
        compile: wrap the network in `torch.compile` (pays off only for long trials).
        seed: seeds weights, data order and augmentation.
        time_limit_s: wall-clock budget of the whole trial in seconds (None = no limit);
            checked between batches, the trial then ends `failed`/`timeout`.
        cpu_threads: torch intra-op threads for this trial (None = leave as is).
        device: `auto` (CUDA when available) | `cpu` | `cuda`.
        keep_weights: return the trained weights (safetensors bytes) in the result.
    """

    dataset: str = "digits"
    data_dir: str = "~/.cache/resnas/data"
    val_fraction: float = 0.2  # share of train held out; the split seed is fixed
    epochs: int = 8  # also the fidelity a pruner sees
    batch_size: int = 64  # samples per step; 64 gives ~23 steps/epoch on digits
    optimizer: str = "sgd"
    lr: float = 0.1  # peak LR; 0.1 suits SGD+BN, use ~3e-3 with adamw
    schedule: str = "onecycle"
    weight_decay: float = 5e-4  # per step, weights only
    label_smoothing: float = 0.0
    augment: bool = False  # digits is too small (8x8) to gain from shifts in 8 epochs
    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False  # compile time (~tens of s) dwarfs short trials
    seed: int = 0
    time_limit_s: float | None = None  # seconds of wall clock for the whole trial
    cpu_threads: int | None = None  # torch.set_num_threads for the trial, restored after
    device: str = "auto"
    keep_weights: bool = True

    def __post_init__(self) -> None:
        ds = self.dataset
        if not isinstance(ds, str) or not (
            ds in DATASETS
            or (ds.startswith(("npz:", "replay:")) and ds.split(":", 1)[1])
        ):
            raise _fail("dataset", ds, " | ".join(DATASETS) + " | npz:PATH | replay:TABLE")
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise _fail("data_dir", self.data_dir, "a non-empty path")
        vf = _as_float("val_fraction", self.val_fraction, "a number in (0, 1)")
        if not 0.0 < vf < 1.0:
            raise _fail("val_fraction", self.val_fraction, "a number in (0, 1)")
        object.__setattr__(self, "val_fraction", vf)
        _as_int("epochs", self.epochs, 1)
        _as_int("batch_size", self.batch_size, 1)
        if self.optimizer not in OPTIMIZERS:
            raise _fail("optimizer", self.optimizer, " | ".join(OPTIMIZERS))
        lr = _as_float("lr", self.lr, "a finite number > 0")
        if lr <= 0:
            raise _fail("lr", self.lr, "a finite number > 0")
        object.__setattr__(self, "lr", lr)
        if self.schedule not in SCHEDULES:
            raise _fail("schedule", self.schedule, " | ".join(SCHEDULES))
        wd = _as_float("weight_decay", self.weight_decay, "a finite number >= 0")
        if wd < 0:
            raise _fail("weight_decay", self.weight_decay, "a finite number >= 0")
        object.__setattr__(self, "weight_decay", wd)
        ls = _as_float("label_smoothing", self.label_smoothing, "a number in [0, 1)")
        if not 0.0 <= ls < 1.0:
            raise _fail("label_smoothing", self.label_smoothing, "a number in [0, 1)")
        object.__setattr__(self, "label_smoothing", ls)
        for name in ("augment", "compile", "keep_weights"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "true | false")
        precision = self.precision
        if precision in (32, "32-true"):  # accept the common spellings, store one
            precision = "32"
        if precision not in PRECISIONS:
            raise _fail("precision", self.precision, " | ".join(PRECISIONS))
        object.__setattr__(self, "precision", precision)
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            raise _fail("channels_last", self.channels_last, "auto | true | false")
        _as_int("seed", self.seed, 0)
        if self.time_limit_s is not None:
            limit = _as_float("time_limit_s", self.time_limit_s, "a number of seconds > 0 | null")
            if limit <= 0:
                raise _fail("time_limit_s", self.time_limit_s, "a number of seconds > 0 | null")
            object.__setattr__(self, "time_limit_s", limit)
        if self.cpu_threads is not None:
            _as_int("cpu_threads", self.cpu_threads, 1)
        if self.device not in DEVICES:
            raise _fail("device", self.device, " | ".join(DEVICES))

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready data."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are an error (a typo must not train silently).

        Args:
            data: field values; missing fields take their defaults. A `recipe_id` key (as
                written by some exports) is ignored.
        """
        if isinstance(data, TrainConfig):
            return data
        if not isinstance(data, dict):
            raise _fail("config", type(data).__name__, "a mapping")
        data = {k: v for k, v in data.items() if k != "recipe_id"}
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"unknown train config field(s) {', '.join(f'`{u}`' for u in unknown)}; "
                f"allowed: {', '.join(names)}"
            )
        return cls(**data)

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again).

        Args:
            **changes: field=value pairs.
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            return TrainConfig.from_dict({**self.to_dict(), **changes})  # raises, naming them
        return dataclasses.replace(self, **changes)

    # -- identity ------------------------------------------------------------------------
    def recipe_dict(self) -> dict[str, Any]:
        """The fields that change what a trial learns (see `_NOT_IN_RECIPE`)."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_RECIPE}

    @property
    def recipe_id(self) -> str:
        """Short sha256 of the canonical JSON of `recipe_dict()`."""
        text = json.dumps(self.recipe_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def fidelity(self) -> int:
        """The training budget a pruner compares at: epochs."""
        return self.epochs
