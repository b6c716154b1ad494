"""Fixtures for the worker tests: tiny specs, npz writers, and a stand-in for the builder
should `search_spaces.build_model` / `complexity` be missing (they are developed in parallel).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from search_spaces.spec import ArchitectureSpec, StageSpec

_HAVE_BUILDER = all(
    importlib.util.find_spec(m) is not None for m in ("search_spaces.builder", "search_spaces.cost")
)


def tiny_spec(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> ArchitectureSpec:
    """Two one-block stages: ~5k parameters, trains on digits in about a second."""
    return ArchitectureSpec(
        stages=(
            StageSpec(depth=1, width=width),
            StageSpec(depth=1, width=2 * width, stride=2, skip="projection"),
        ),
        stem_width=width,
        in_channels=in_channels,
        num_classes=num_classes,
    )


@pytest.fixture
def spec() -> ArchitectureSpec:
    return tiny_spec()


@pytest.fixture(autouse=True)
def _builder_stand_in(monkeypatch):
    """Until search_spaces.builder/cost exist, train a small conv net of the spec's I/O."""
    if _HAVE_BUILDER:
        yield
        return
    import torch
    from torch import nn

    import workers.trial as trial

    def build(spec):
        w = spec.stem_width
        return nn.Sequential(
            nn.Conv2d(spec.in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(w, spec.num_classes),
        )

    class _Cost:
        def __init__(self, params, flops):
            self.params, self.flops = params, flops

    def cost(spec, size):
        net = build(spec)
        return _Cost(sum(p.numel() for p in net.parameters()), 0)

    monkeypatch.setattr(trial, "build_model", build)
    monkeypatch.setattr(trial, "complexity", cost)
    torch.manual_seed(0)
    yield


def write_npz(path, x_train, y_train, x_val=None, y_val=None, **extra) -> str:
    """Write an npz dataset; returns the `npz:PATH` dataset string."""
    arrays = {"x_train": x_train, "y_train": y_train, **extra}
    if x_val is not None:
        arrays["x_val"] = x_val
    if y_val is not None:
        arrays["y_val"] = y_val
    np.savez(path, **arrays)
    return f"npz:{path}"
