"""What crosses the worker boundary: `TrialRequest` in, `TrialResult` out, `Reporter` back.

Standard library only: the orchestrator builds requests and reads results without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from search_spaces.spec import known_fields

STATES = ("complete", "pruned", "failed")


@runtime_checkable
class Reporter(Protocol):
    """Receives each epoch's metrics; answering True stops the trial now (pruned)."""

    def report(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Called after each validation epoch.

        Args:
            epoch: 1-based number of epochs trained so far (the fidelity reached).
            metrics: the epoch dict (epoch, train_loss, val_loss, val_accuracy, lr, seconds,
                train_seconds).
        """
        ...


@dataclass
class TrialRequest:
    """One candidate to train.

    Args:
        spec: `ArchitectureSpec.to_dict()`.
        config: `TrainConfig.to_dict()` (missing keys take defaults).
        key: an opaque id of the caller's, echoed in the result.
        parent: a trained network to start from instead of random weights: `spec` (its
            `ArchitectureSpec.to_dict()`) and `weights` (safetensors bytes of its state_dict).
            `spec` must morph into the request's spec (`search_spaces.morph`): the network
            then starts computing what the parent computes.
    """

    spec: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    parent: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"spec": dict(self.spec), "config": dict(self.config), "key": self.key}
        if self.parent is not None:
            out["parent"] = dict(self.parent)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRequest:
        """Args:
        data: a mapping with `spec`, optional `config` and `key`.
        """
        if isinstance(data, TrialRequest):
            return data
        data = known_fields(cls, data, "request")
        if "spec" not in data:
            raise ValueError("`request` got no `spec`; allowed: a mapping with spec, config, key")
        return cls(**data)


@dataclass
class TrialResult:
    """Outcome and measurements of one trial. JSON-ready via `to_dict()`, except `weights`.

    `state`: `complete` | `pruned` | `failed`. `reason`: None, `nan_loss`, `out_of_memory`,
    `timeout` or `error: <Type>: <message>`. Accuracy/loss fields are those of the last
    finished epoch (also for pruned and failed trials that finished some epochs).
    """

    state: str
    reason: str | None = None
    traceback: str | None = None  # last frames, for `error:` reasons only
    epochs: list[dict[str, Any]] = field(default_factory=list)
    val_accuracy: float | None = None  # last epoch's
    best_val_accuracy: float | None = None
    val_loss: float | None = None  # last epoch's
    params: int | None = None
    flops: int | None = None  # multiply-adds (MACs) of one forward pass of one image
    latency_ms: float | None = None  # batch 1, median, eval mode
    latency_ms_batch: float | None = None  # whole batch of `latency_batch_size`, median
    latency_batch_size: int | None = None
    samples_per_s: float | None = None  # training samples/s over the epochs (not validation)
    peak_memory_mb: float | None = None  # CPU: process max RSS; CUDA: max allocated
    device: str | None = None  # `cpu` or the CUDA device name
    host: str = ""
    duration_s: float = 0.0  # whole run_trial call
    setup_s: float | None = None  # from the call to the first training step
    started: float = 0.0  # unix time
    finished: float = 0.0  # unix time
    arch_id: str | None = None
    recipe_id: str | None = None
    key: str = ""  # the request's key
    dataset: str | None = None
    # With a parent: the morph in words and the largest |child(x) - parent(x)| at the start.
    inherited: dict[str, Any] | None = None
    weights: bytes | None = field(default=None, repr=False)  # safetensors of the state_dict

    @property
    def ok(self) -> bool:
        return self.state == "complete"

    def to_dict(self) -> dict[str, Any]:
        """Every field but `weights`, as JSON-ready data."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "weights"}
        out["epochs"] = [dict(e) for e in self.epochs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        """Args:
        data: as written by `to_dict()` (a `weights` entry, if bytes, is kept).
        """
        data = dict(known_fields(cls, data, "result"))
        if data.get("state") not in STATES:
            raise ValueError(f"`state` got {data.get('state')!r}; allowed: {' | '.join(STATES)}")
        return cls(**data)
