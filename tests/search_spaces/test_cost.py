"""Complexity from the spec alone agrees with the built model and torch's FLOP counter; the
training-memory estimate bounds what a real training step keeps, from above and closely."""

from __future__ import annotations

import time
from dataclasses import replace

import optuna
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import build_model, complexity, load_space, training_memory, zoo
from search_spaces.cell import nb201_spec
from search_spaces.cost import saved_activations, stage_costs
from search_spaces.spec import BLOCK_TYPES, SKIP_TYPES, STEM_TYPES, ArchitectureSpec, StageSpec
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


# -- training memory ---------------------------------------------------------------------------
def measured_training_memory(spec, size: int, batch: int, optimizer: str) -> tuple[int, int]:
    """(bytes of one real training step, bytes of the tensors it saved for the backward pass).

    The saved tensors are what autograd's pack hook sees in one forward pass, each storage
    once and parameters left out; the rest is the parameters, their gradients and the
    optimizer's state after one step, counted on the tensors themselves.
    """
    torch.manual_seed(0)
    model = build_model(spec)
    params = list(model.parameters())
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(batch, spec.in_channels, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long))
    loss.backward()
    opt.step()

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    saved = sum(kept.values())
    return nbytes(params) + nbytes(p.grad for p in params) + nbytes(state) + saved, saved


# Small real models of every block family, stem and skip kind: (spec, input size, optimizer).
MEMORY_CASES = {
    "resnet20": (zoo.get("resnet20"), 32, "sgd"),
    "resnet18-imagenet-stem": (replace(zoo.get("resnet18"), num_classes=10), 33, "sgd"),
    "bottleneck-preact-se-inner-projection": (
        small_spec("projection", "bottleneck", preact=True, se_ratio=0.25, se_position="inner"),
        9,
        "adamw",
    ),
    "basic-gated-se": (small_spec("gated", "basic", se_ratio=0.25), 9, "sgd"),
    "basic-dense-skip-regnet-stem": (small_spec("dense", "basic", stem="regnet"), 9, "sgd"),
    "basic-zero-pad-preact": (small_spec("zero_pad", "basic", preact=True), 9, "sgd"),
    "plain-bottleneck": (small_spec("none", "bottleneck"), 9, "adamw"),
    "basic-no-stem": (small_spec("identity", "basic", stem="none"), 9, "sgd"),
    "nasbench201": (nb201_spec("333333", 10), 16, "sgd"),
    **{
        name: (ArchitectureSpec(stem_width=8, num_classes=5, **MODERN[name]), 9, "adamw")
        for name in sorted(MODERN)
    },
}


@pytest.mark.parametrize("name", sorted(MEMORY_CASES))
def test_training_memory_bounds_a_real_training_step_from_above_within_3x(name):
    spec, size, optimizer = MEMORY_CASES[name]
    batch = 4
    real, saved = measured_training_memory(spec, size, batch, optimizer)
    states = {"sgd": 1, "adamw": 2}[optimizer]
    estimate = training_memory(spec, size, batch, optimizer_states=states)
    assert real <= estimate.total <= 3 * real, (name, real, estimate)
    # The layer-by-layer count of kept tensors is itself close, and never below.
    assert saved <= estimate.activations <= 1.5 * saved, (name, saved, estimate.activations)
    assert estimate.weights == estimate.gradients == complexity(spec, size).params * 4
    assert estimate.optimizer == states * estimate.weights


def test_memory_cases_cover_every_block_type_and_stem():
    specs = [spec for spec, _, _ in MEMORY_CASES.values()]
    assert {s.block for spec in specs for s in spec.stages} == set(BLOCK_TYPES)
    assert {spec.stem for spec in specs} == set(STEM_TYPES)


def test_training_memory_grows_with_batch_size_and_width():
    spec = zoo.get("resnet20")
    totals = [training_memory(spec, 32, b).total for b in (1, 2, 8, 64, 256)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    activations = [training_memory(spec, 32, b).activations for b in (1, 2, 8)]
    assert activations[1] == 2 * activations[0] and activations[2] == 8 * activations[0]

    def widened(k: int) -> ArchitectureSpec:
        return replace(
            spec,
            stem_width=16 * k,
            stages=tuple(replace(s, width=s.width * k) for s in spec.stages),
        )

    totals = [training_memory(widened(k), 32, 8).total for k in (1, 2, 4)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    assert training_memory(spec, 64, 8).total > training_memory(spec, 32, 8).total
    adam = training_memory(spec, 32, 8, optimizer_states=2)
    assert adam.total > training_memory(spec, 32, 8).total


def test_a_huge_candidate_is_priced_in_hundreds_of_gigabytes_in_milliseconds():
    spec = ArchitectureSpec(
        stages=(StageSpec(depth=2, width=4096), StageSpec(depth=2, width=4096, stride=2)),
        stem="imagenet",
        stem_width=4096,
    )
    start = time.perf_counter()
    estimate = training_memory(spec, 224, 256)
    assert time.perf_counter() - start < 0.05
    assert estimate.total > 256 * 2**30  # beyond any one GPU: the worker refuses it
    _, _, largest = saved_activations(spec, 224)
    assert largest == 4096 * 112 * 112  # the stem's conv output


def test_training_memory_rejects_bad_arguments():
    spec = zoo.get("resnet20")
    for kwargs in ({"batch_size": 0}, {"batch_size": True}, {"batch_size": 2.0}):
        with pytest.raises(ValueError, match="`batch_size`"):
            training_memory(spec, 32, **kwargs)
    with pytest.raises(ValueError, match="`optimizer_states`"):
        training_memory(spec, 32, 8, optimizer_states=-1)
    with pytest.raises(ValueError, match="`eval_batch_size`"):
        training_memory(spec, 32, 8, eval_batch_size=0)
    with pytest.raises(ValueError, match="`input_size`"):
        training_memory(spec, 0, 8)
