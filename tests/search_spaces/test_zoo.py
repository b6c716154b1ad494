"""The zoo: the published ResNets, expressed exactly by the spec."""

from __future__ import annotations

import pytest
import torch

from search_spaces import build_model, complexity, zoo

# torchvision's parameter counts and GMACs at 224x224 (ImageNet, 1000 classes).
IMAGENET = {
    "resnet18": (11_689_512, 1.814),
    "resnet34": (21_797_672, 3.664),
    "resnet50": (25_557_032, 4.089),
    "resnet101": (44_549_160, 7.801),
    "resnet152": (60_192_808, 11.514),
    "resnext50_32x4d": (25_028_904, 4.230),
    "wide_resnet50_2": (68_883_240, 11.398),
    "resnext101_32x8d": (88_791_336, 16.414),
    "regnet_y_400mf": (4_344_144, 0.402),
    "densenet121": (7_978_856, 2.834),
    "densenet169": (14_149_480, 3.360),
    "densenet201": (20_013_928, 4.291),
    "convnext_tiny": (28_589_128, 4.456),
    "convnext_small": (50_223_688, 8.684),
    "vit_b_16": (86_567_656, 17.564),
}
# He et al. 2016 section 4.2, option A (zero padding), 10 classes.
CIFAR = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "plain20": 269_722,  # option A adds no parameters: the plain net has the same count
    "plain56": 853_018,
}


def counted_params(spec) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_models_have_torchvision_param_counts_and_flops(name):
    params, gmacs = IMAGENET[name]
    spec = zoo.get(name)
    assert spec.num_classes == 1000 and spec.in_channels == 3
    assert zoo.input_size(name) == 224
    assert complexity(spec, 224).params == params
    assert counted_params(spec) == params
    assert complexity(spec, (224, 224)).flops / 1e9 == pytest.approx(gmacs, rel=0.02)


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_cifar_models_have_the_paper_param_counts(name):
    spec = zoo.get(name)
    assert spec.num_classes == 10 and spec.stem == "cifar" and spec.stem_width == 16
    assert complexity(spec, 32).params == CIFAR[name]
    assert counted_params(spec) == CIFAR[name]


def test_cifar_depths_follow_6n_plus_2():
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
        assert zoo.get(name).total_depth == int(name.removeprefix("resnet"))
    assert zoo.get("plain56").stages[0].skip == "none"
    assert zoo.get("resnet56").stages[1].skip == "zero_pad"


def test_preact_resnet18_is_the_cifar_preactivation_net():
    spec = zoo.get("preact_resnet18")
    assert spec.preact and spec.stem == "cifar" and spec.stem_width == 64
    assert [s.width for s in spec.stages] == [64, 128, 256, 512]
    model = build_model(spec)
    assert model.stem.bn is None and model.final_bn is not None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_the_hybrid_reference_is_sized_for_digits():
    spec = zoo.get("hybrid_digits")
    assert (spec.in_channels, spec.num_classes, zoo.input_size("hybrid_digits")) == (1, 10, 8)
    assert [s.block for s in spec.stages] == ["basic", "basic", "transformer"]
    assert counted_params(spec) == complexity(spec, 8).params == 37_370


@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_model_builds_and_runs(name):
    spec = zoo.get(name, num_classes=7, in_channels=1)
    with torch.device("meta"):
        out = build_model(spec)(torch.empty(2, 1, 64, 64))
    assert out.shape == (2, 7)


def test_defaults_and_overrides():
    assert zoo.get("resnet50").num_classes == 1000
    assert zoo.get("resnet56").num_classes == 10
    spec = zoo.get("resnet18", num_classes=10, in_channels=1)
    assert (spec.num_classes, spec.in_channels, spec.name) == (10, 1, "resnet18")
    assert spec.arch_id != zoo.get("resnet18").arch_id


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="`name` got 'resnet9'.*resnet18.*resnet110"):
        zoo.get("resnet9")
    assert "resnet18" in zoo.names() and "plain20" in zoo.names()


def test_cifar_resnet_rejects_depths_that_are_not_6n_plus_2():
    with pytest.raises(ValueError, match="`depth` got 21"):
        zoo.cifar_resnet(21)
