"""The builder: every skip type builds and trains, names are stable, and the residual claims."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from search_spaces import build_model, zoo
from search_spaces.builder import ResNet
from search_spaces.spec import SKIP_TYPES, ArchitectureSpec, StageSpec
from tests.search_spaces.helpers import small_spec

VARIANTS = [
    pytest.param(skip, block, preact, id=f"{skip}-{block}{'-preact' if preact else ''}")
    for skip in SKIP_TYPES
    for block in ("basic", "bottleneck")
    for preact in (False, True)
]


@pytest.mark.parametrize(("skip", "block", "preact"), VARIANTS)
def test_every_skip_type_builds_runs_forward_and_backward(skip, block, preact):
    spec = small_spec(skip, block, preact=preact, se_ratio=0.25, zero_init_residual=True)
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.randn(4, 3, 9, 9)  # odd size: strided shortcuts must agree with strided convs
    out = model(x)
    assert out.shape == (4, 5)
    F.cross_entropy(out, torch.arange(4)).backward()
    assert model.stem.conv.weight.grad is not None
    assert torch.isfinite(model.stem.conv.weight.grad).all()
    assert model.fc.in_features == spec.out_channels


@pytest.mark.parametrize("skip", SKIP_TYPES)
def test_trained_model_round_trips_through_spec_dict_and_state_dict(skip):
    spec = small_spec(skip, "basic", se_ratio=0.25)
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    rebuilt = build_model(ArchitectureSpec.from_dict(spec.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    if skip == "gated":
        gates = [p for n, p in model.named_parameters() if n.endswith(".gate")]
        assert len(gates) == spec.total_blocks and any(float(g.detach()) != 0 for g in gates)


def test_layout_is_deterministic_and_weights_follow_the_seed():
    spec = zoo.get("resnet20")
    torch.manual_seed(1)
    a = build_model(spec).state_dict()
    torch.manual_seed(1)
    b = build_model(spec).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parameter_names_are_plain_and_stable():
    names = [n for n, _ in build_model(small_spec("identity")).named_parameters()]
    assert names[:3] == ["stem.conv.weight", "stem.bn.weight", "stem.bn.bias"]
    assert "stages.0.0.conv1.weight" in names
    assert "stages.1.0.shortcut.conv.weight" in names
    assert "stages.1.0.shortcut.bn.weight" in names
    assert names[-2:] == ["fc.weight", "fc.bias"]
    gated = [n for n, _ in build_model(small_spec("gated")).named_parameters()]
    assert "stages.0.1.gate" in gated


def test_torchvision_layout_for_imagenet_models():
    with torch.device("meta"):
        model = build_model(zoo.get("resnet50"))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["stem.conv.weight"] == (64, 3, 7, 7)
    # torchvision v1.5: the stride sits on the 3x3 conv of the bottleneck.
    assert model.stages[1][0].conv2.stride == (2, 2)
    assert model.stages[1][0].conv1.stride == (1, 1)
    assert shapes["stages.3.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc.weight"] == (1000, 2048)


def test_shortcut_kinds_match_the_resnet_options():
    def shortcuts(skip):
        model = build_model(small_spec(skip))
        return [type(block.shortcut).__name__ for stage in model.stages for block in stage]

    # Stage 1: 8 -> 8 channels (stem 8), stage 2: 8 -> 16 with stride 2.
    assert shortcuts("identity") == ["Identity", "Identity", "Projection", "Identity"]  # "B"
    assert shortcuts("zero_pad") == ["Identity", "Identity", "ZeroPad", "Identity"]  # "A"
    assert shortcuts("projection") == ["Projection"] * 4  # "C"
    assert shortcuts("gated") == ["Identity", "Identity", "Projection", "Identity"]
    assert shortcuts("dense") == ["Identity", "Identity", "AvgPool2d", "Identity"]
    assert shortcuts("none") == ["NoneType"] * 4


def test_zero_pad_and_none_shortcuts_have_no_parameters():
    counts = {
        s: sum(p.numel() for p in build_model(small_spec(s)).parameters()) for s in SKIP_TYPES
    }
    assert counts["zero_pad"] == counts["none"]
    assert counts["identity"] > counts["zero_pad"]
    assert counts["gated"] == counts["identity"] + 4  # one scalar gate per block


def test_dense_stage_concatenates_its_input():
    spec = ArchitectureSpec(stages=(StageSpec(depth=3, width=4, skip="dense"),), stem_width=8)
    model = build_model(spec).eval()
    assert spec.out_channels == 8 + 3 * 4
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        stem_out = model.stem(x)
        features = model.stages(stem_out)
    assert features.shape[1] == 20
    # The first channels are the stem output, untouched (it is post-ReLU, so the ReLU keeps it).
    assert torch.equal(features[:, :8], stem_out)


def test_zero_init_residual_block_is_identity_at_init():
    spec = ArchitectureSpec(
        stages=(StageSpec(depth=2, width=16, skip="identity"),),
        stem_width=16,
        zero_init_residual=True,
    )
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.relu(torch.randn(4, 16, 8, 8))  # a block's input is post-ReLU
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            assert torch.equal(model.stages(x), x)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_zero_init_residual_preact_block_is_identity_at_init(block):
    spec = ArchitectureSpec(
        stages=(StageSpec(depth=2, width=16, block=block, expansion=1),),
        stem_width=16,
        preact=True,
        zero_init_residual=True,
        se_ratio=0.25,
    )
    model = build_model(spec)
    x = torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.stages(x), x)


def test_zero_init_leaves_plain_and_dense_branches_alone():
    model = build_model(small_spec("none", zero_init_residual=True))
    assert all(
        float(b.bn2.weight.detach().abs().sum()) > 0 for stage in model.stages for b in stage
    )


def test_build_model_rejects_a_dict():
    with pytest.raises(TypeError, match="`spec`"):
        build_model(small_spec().to_dict())
    assert isinstance(build_model(small_spec()), ResNet)


def _first_over_last_gradient(name: str, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = build_model(zoo.get(name))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    first = model.stem.conv.weight.grad.norm()
    last = model.stages[-1][-1].conv2.weight.grad.norm()
    return float(first / last)


def test_residual_connections_keep_gradients_of_a_110_layer_net_in_scale():
    """He et al. 2016: identity shortcuts make 110 layers trainable where a plain net is not.

    At initialisation in training mode (batch statistics), the plain 110-layer net's gradient
    at the first conv is ~10^7 times its gradient at the last conv: it explodes through 108
    BN-ReLU-conv layers (Yang et al. 2019, "A Mean Field Theory of Batch Normalization").
    The residual net with the same layers keeps that ratio near 30.
    """
    residual = _first_over_last_gradient("resnet110")
    plain = _first_over_last_gradient("plain110")
    message = f"first/last gradient norm: resnet110 {residual:.3g}, plain110 {plain:.3g}"
    assert residual < 300, message
    assert plain / residual > 1e4, message
