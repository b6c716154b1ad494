"""Complexity from the spec alone agrees with the built model and torch's FLOP counter."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import build_model, complexity, load_space, zoo
from search_spaces.cost import stage_costs
from search_spaces.spec import SKIP_TYPES, ArchitectureSpec, StageSpec
from tests.search_spaces.helpers import small_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
PRESETS = {
    "resnet": (1, 8),
    "resnet-cifar": (3, 32),
    "resnext": (3, 32),
    "skip-ablation": (3, 32),
    "densenet": (1, 8),
    "convnext": (1, 8),
    "hybrid": (1, 8),
    "nasbench201": (3, 16),  # ImageNet16-120's size: a quarter of CIFAR's arithmetic
    # ImageNet-size presets are priced on the meta device (shapes only) at 64x64.
    "densenet-imagenet": (3, 64),
    "convnext-imagenet": (3, 64),
}


def measured(spec, size: int, device: str = "cpu") -> tuple[int, int]:
    """(parameters, multiply-adds) of the real model, counted by torch.

    Small models run faster on the CPU than on the meta device (less dispatch overhead). The
    FLOP counter sees no multiply-adds in the CPU kernel of scaled_dot_product_attention, so
    networks with attention are counted on the meta device, where it counts them.
    """
    if any(s.block == "transformer" for s in spec.stages):
        device = "meta"
    with torch.device(device):
        model = build_model(spec)
        x = torch.zeros(1, spec.in_channels, size, size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def assert_matches(spec, size: int, device: str = "cpu") -> None:
    params, macs = measured(spec, size, device)
    predicted = complexity(spec, size)
    assert predicted.params == params, spec.summary()
    assert predicted.flops == pytest.approx(macs, rel=0.01), spec.summary()


@pytest.mark.parametrize("name", zoo.names())
def test_complexity_matches_the_zoo_models(name):
    spec = zoo.get(name)
    if spec.num_classes == 1000:
        # Shapes only (no weights, no arithmetic): the full 224x224 forward costs nothing.
        assert_matches(spec, 224, device="meta")
    else:
        assert_matches(spec, 32)


@pytest.mark.parametrize("skip", SKIP_TYPES)
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("se_position", ["branch", "inner"])
def test_complexity_matches_every_block_option_on_cpu(skip, block, preact, se_position):
    spec = small_spec(skip, block, preact=preact, se_ratio=0.25, se_position=se_position)
    assert_matches(spec, 9)  # odd size: strided layers round up
    assert_matches(replace(spec, stem="regnet"), 9)


MODERN = {
    "dense-stride1": dict(stages=(StageSpec(depth=3, width=4, block="dense"),)),
    "dense-transition": dict(
        stages=(
            StageSpec(depth=2, width=4, block="dense", expansion=2),
            StageSpec(depth=2, width=6, stride=2, block="dense", compression=0.7),
        ),
        preact=True,
    ),
    "convnext-entries": dict(
        stages=(
            StageSpec(depth=1, width=12, block="convnext", skip="gated"),
            StageSpec(depth=2, width=16, stride=2, block="convnext", expansion=3),
        ),
        stem="patch_ln",
        patch_size=2,
        layer_scale=0.5,
    ),
    "transformer-token": dict(
        stages=(
            StageSpec(depth=1, width=8, stride=2, block="basic"),
            StageSpec(depth=2, width=12, block="transformer", heads=3, skip="gated"),
        ),
        pool="token",
        pos_embed=3,
        layer_scale=0.1,
    ),
    "transformer-inside": dict(
        stages=(
            StageSpec(depth=1, width=12, stride=2, block="transformer", heads=2),
            StageSpec(depth=1, width=16, block="convnext", skip="none"),
            StageSpec(depth=1, width=16, stride=2, block="dense"),
        ),
        stem="patch",
        patch_size=2,
        pos_embed=2,
    ),
}


@pytest.mark.parametrize("name", sorted(MODERN))
def test_complexity_matches_the_new_families_at_odd_sizes(name):
    spec = ArchitectureSpec(stem_width=8, num_classes=5, **MODERN[name])
    assert_matches(spec, 9)  # odd: transitions and 2x2/2 entries round up, patches pad
    assert_matches(spec, 12)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_complexity_matches_50_random_specs_of_each_preset(name):
    in_channels, size = PRESETS[name]
    space = load_space(name)
    device = "meta" if name.endswith("-imagenet") else "cpu"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    checked = set()
    for _ in range(50):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=in_channels, num_classes=10)
        if spec.arch_id not in checked:  # each distinct network of the 50 samples once
            assert_matches(spec, size, device)
            checked.add(spec.arch_id)
        study.tell(trial, 0.0)


def test_stage_costs_add_up_and_describe_resolutions():
    spec = zoo.get("resnet50")
    rows = stage_costs(spec, 224)
    assert [r["name"] for r in rows] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [r["resolution"] for r in rows[1:5]] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [r["out_channels"] for r in rows[1:5]] == [256, 512, 1024, 2048]
    total = complexity(spec, 224)
    assert sum(r["params"] for r in rows) == total.params
    assert sum(r["flops"] for r in rows) == total.flops


def test_rectangular_inputs_and_bad_sizes():
    spec = zoo.get("resnet20")
    assert complexity(spec, (32, 16)).flops < complexity(spec, 32).flops
    assert_matches(spec, 32)
    for bad in (0, (32,), "32", True, (32, -1)):
        with pytest.raises(ValueError, match="`input_size`"):
            complexity(spec, bad)
