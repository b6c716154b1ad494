"""Function-preserving morphs: a child grown from a trained parent computes what the parent did."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from search_spaces import build_model, morph_plan, morph_weights
from search_spaces.morph import cell_starts_as_identity, channel_maps, check_morph
from search_spaces.spec import ArchitectureSpec, StageSpec
from tests.search_spaces.helpers import small_spec

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
CELL_OPS_IDENTITY = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
)
CELL_OPS_DOUBLE = "|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|skip_connect~2|"


# -- specs -----------------------------------------------------------------------------------
def grow(spec: ArchitectureSpec, depths=(), widths=(), **options) -> ArchitectureSpec:
    """`spec` with stage i's depth and width replaced where `depths[i]` / `widths[i]` is set."""
    stages = []
    for i, stage in enumerate(spec.stages):
        change = {}
        if i < len(depths) and depths[i]:
            change["depth"] = depths[i]
        if i < len(widths) and widths[i]:
            change["width"] = widths[i]
        stages.append(replace(stage, **change))
    return replace(spec, stages=tuple(stages), **options)


def resnext(**options) -> ArchitectureSpec:
    """Grouped bottlenecks (4 groups of 2 channels at width 16)."""
    stage = StageSpec(depth=2, width=16, block="bottleneck", groups=4, width_per_group=8,
                      expansion=2)
    return ArchitectureSpec(stages=(stage, replace(stage, stride=2)), stem="cifar",
                            stem_width=16, num_classes=5, **options)


def convnext(skip: str = "identity", **options) -> ArchitectureSpec:
    stage = StageSpec(depth=2, width=8, block="convnext", skip=skip, expansion=2)
    return ArchitectureSpec(stages=(stage, replace(stage, width=16, stride=2)), stem="patch_ln",
                            patch_size=2, stem_width=8, num_classes=5, **options)


def transformer(skip: str = "identity", **options) -> ArchitectureSpec:
    stage = StageSpec(depth=2, width=16, block="transformer", skip=skip, expansion=2, heads=2)
    return ArchitectureSpec(stages=(stage, replace(stage, stride=2)), stem="patch",
                            patch_size=2, stem_width=8, num_classes=5, **options)


def cells(ops: str = CELL_OPS_IDENTITY) -> ArchitectureSpec:
    stage = StageSpec(depth=2, width=8, block="cell", ops=ops)
    return ArchitectureSpec(stages=(stage, replace(stage, width=16, stride=2)), stem="cifar",
                            stem_width=8, num_classes=5)


def dense_then_basic() -> ArchitectureSpec:
    return ArchitectureSpec(
        stages=(StageSpec(depth=2, width=4, block="dense"),
                StageSpec(depth=2, width=8, stride=2, block="basic", skip="projection")),
        stem="cifar", stem_width=8, num_classes=5,
    )


def hybrid() -> ArchitectureSpec:
    return ArchitectureSpec(
        stages=(StageSpec(depth=2, width=8, block="basic"),
                StageSpec(depth=2, width=16, stride=2, block="convnext", expansion=2)),
        stem="cifar", stem_width=8, num_classes=5,
    )


IMAGE = (3, 8, 8)
PATCHES = (3, 16, 16)
# (id, parent, child, input shape). Stage 0 of `small_spec` is as wide as the stem, so widening
# it turns the parent's identity shortcut into the child's projection.
MORPHS = [
    ("basic-deeper", small_spec(), grow(small_spec(), (3, 4)), IMAGE),
    ("basic-wider", small_spec(), grow(small_spec(), (), (12, 24)), IMAGE),
    ("basic-both", small_spec(), grow(small_spec(), (3, 3), (12, 24)), IMAGE),
    ("basic-zero_pad-both", small_spec("zero_pad"), grow(small_spec("zero_pad"), (3, 3), (0, 24)),
     IMAGE),
    ("basic-zero_pad-both-stages-wider", small_spec("zero_pad", stem_width=4),
     grow(small_spec("zero_pad", stem_width=4), (3, 3), (12, 24)), IMAGE),
    ("basic-projection-both", small_spec("projection"),
     grow(small_spec("projection"), (3, 3), (12, 24)), IMAGE),
    ("basic-gated-both", small_spec("gated"), grow(small_spec("gated"), (3, 3), (12, 24)), IMAGE),
    ("basic-none-both", small_spec("none"), grow(small_spec("none"), (3, 3), (12, 24)), IMAGE),
    ("basic-se-both", small_spec(se_ratio=0.25), grow(small_spec(se_ratio=0.25), (3, 3), (12, 24)),
     IMAGE),
    ("bottleneck-both", small_spec(block="bottleneck"),
     grow(small_spec(block="bottleneck"), (3, 3), (12, 24)), IMAGE),
    ("resnext-both", resnext(), grow(resnext(), (3, 3), (32, 24)), IMAGE),
    ("resnext-se-both", resnext(se_ratio=0.25), grow(resnext(se_ratio=0.25), (3, 3), (32, 24)),
     IMAGE),
    ("resnext-se-inner-both", resnext(se_ratio=0.25, se_position="inner"),
     grow(resnext(se_ratio=0.25, se_position="inner"), (3, 3), (32, 24)), IMAGE),
    ("preact-basic-both", small_spec(preact=True), grow(small_spec(preact=True), (3, 3), (0, 24)),
     IMAGE),
    ("preact-basic-gated-both", small_spec("gated", preact=True),
     grow(small_spec("gated", preact=True), (3, 3), (0, 24)), IMAGE),
    ("preact-basic-projection-wider", small_spec("projection", preact=True),
     grow(small_spec("projection", preact=True), (), (12, 24)), IMAGE),
    ("preact-bottleneck-both", small_spec(block="bottleneck", preact=True),
     grow(small_spec(block="bottleneck", preact=True), (3, 3), (0, 24)), IMAGE),
    ("preact-resnext-se-inner-both", resnext(preact=True, se_ratio=0.25, se_position="inner"),
     grow(resnext(preact=True, se_ratio=0.25, se_position="inner"), (3, 3), (32, 24)), IMAGE),
    ("preact-deeper-child-zero-init", small_spec(preact=True),
     grow(small_spec(preact=True), (3, 3), zero_init_residual=True), IMAGE),
    ("convnext-both", convnext(), grow(convnext(), (3, 3), (0, 32)), PATCHES),
    ("convnext-layer-scale-both", convnext(layer_scale=1e-6),
     grow(convnext(layer_scale=1e-6), (3, 3), (0, 32)), PATCHES),
    ("convnext-gated-both", convnext("gated"), grow(convnext("gated"), (3, 3), (0, 32)), PATCHES),
    ("transformer-both", transformer(), grow(transformer(), (3, 3), (32, 64)), PATCHES),
    ("transformer-token-layer-scale-both", transformer(layer_scale=0.1, pool="token", pos_embed=4),
     grow(transformer(layer_scale=0.1, pool="token", pos_embed=4), (3, 3), (32, 64)), PATCHES),
    ("transformer-gated-both", transformer("gated"), grow(transformer("gated"), (3, 3), (32, 64)),
     PATCHES),
    ("transformer-mlp-wider", transformer(),
     replace(transformer(), stages=(replace(transformer().stages[0], expansion=3),
                                    transformer().stages[1])), PATCHES),
    ("cell-both", cells(), grow(cells(), (3, 3), (0, 24)), IMAGE),
    ("cell-wider", cells(CELL_OPS_DOUBLE), grow(cells(CELL_OPS_DOUBLE), (), (0, 24)), IMAGE),
    ("dense-then-basic-both", dense_then_basic(), grow(dense_then_basic(), (0, 3), (0, 16)), IMAGE),
    ("hybrid-both", hybrid(), grow(hybrid(), (3, 3), (16, 32)), IMAGE),
    ("identical", small_spec(), small_spec(), IMAGE),
]


# -- helpers ---------------------------------------------------------------------------------
def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere: norms, gates, scales and BN statistics included, so a
    morph that drops or misplaces any of them changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p)
            if p.dim() > 1:
                p.copy_(r / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.3 * r)
            else:
                p.copy_(0.3 * r)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                r = torch.rand(b.shape, generator=g, dtype=torch.float64).to(b)
                if name.endswith("running_mean"):
                    b.copy_(0.4 * (r - 0.5))
                elif name.endswith("running_var"):
                    b.copy_(0.5 + r)


def trained_parent(spec: ArchitectureSpec, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(spec).to(dtype)
    randomise(model)
    return model.eval()


def morphed_child(parent_spec, parent, child_spec, dtype, seed=0) -> torch.nn.Module:
    state = morph_weights(parent_spec, parent.state_dict(), child_spec, seed=seed)
    model = build_model(child_spec).to(dtype)
    model.load_state_dict(state, strict=True)
    return model.eval()


def batch(shape, dtype, n=4):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(dtype)


def max_error(parent_spec, child_spec, shape, dtype, seed=0) -> float:
    parent = trained_parent(parent_spec, dtype)
    child = morphed_child(parent_spec, parent, child_spec, dtype, seed)
    x = batch(shape, dtype)
    with torch.no_grad():
        return (child(x) - parent(x)).abs().max().item()


# -- function preservation -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("parent", "child", "shape"),
                         [pytest.param(p, c, s, id=i) for i, p, c, s in MORPHS])
def test_morphed_child_computes_the_parents_function(parent, child, shape, dtype):
    assert morph_plan(parent, child) is not None
    assert max_error(parent, child, shape, dtype) <= TOLERANCE


def test_every_case_grows_what_its_name_says():
    for name, parent, child, _ in MORPHS:
        plan = morph_plan(parent, child)
        assert plan.deeper == ("deeper" in name or "both" in name), name
        assert plan.wider == ("wider" in name or "both" in name), name


def test_new_blocks_go_at_the_end_and_say_how_they_start():
    plan = morph_plan(small_spec(), grow(small_spec(), (3, 4)))
    assert plan.new_blocks == ("stages.0.2", "stages.1.2", "stages.1.3")
    assert [s.identity_start for s in plan.stages] == ["last BN zeroed"] * 2
    assert plan.describe()[0] == "stages[0]: 2 -> 3 blocks (new blocks: last BN zeroed)"
    preact = morph_plan(small_spec(preact=True), grow(small_spec(preact=True), (3,)))
    assert preact.stages[0].identity_start == "last conv zeroed"


def test_identical_child_is_the_empty_morph_and_copies_the_weights():
    parent = trained_parent(small_spec(), torch.float32)
    plan = morph_plan(small_spec(), small_spec())
    assert not plan.deeper and not plan.wider
    state = morph_weights(small_spec(), parent.state_dict(), small_spec())
    assert all(torch.equal(state[k], v) for k, v in parent.state_dict().items())


def test_training_settings_may_differ():
    child = replace(small_spec(), zero_init_residual=True)
    assert morph_plan(small_spec(), child) is not None
    assert morph_plan(convnext(), replace(convnext(), drop_path=0.1)) is not None


def test_seed_picks_the_copies_and_every_seed_preserves_the_function():
    parent, child = small_spec(), grow(small_spec(), (), (12, 24))
    plan = morph_plan(parent, child)
    first, second = channel_maps(plan, 0)["stages.1"], channel_maps(plan, 1)["stages.1"]
    assert first.source[:16] == second.source[:16] == tuple(range(16))
    assert first.source != second.source
    assert max_error(parent, child, IMAGE, torch.float64, seed=1) <= TOLERANCE


def test_grouped_copies_stay_inside_their_groups():
    plan = morph_plan(resnext(), grow(resnext(), (), (32,)))
    m = channel_maps(plan)["stages.0.0.conv2"]
    per_parent, per_child = m.parent // m.groups, m.child // m.groups
    assert m.groups == 4
    assert all(m.source[j] // per_parent == j // per_child for j in range(m.child))


def test_layer_norm_spaces_copy_every_channel_equally_often():
    plan = morph_plan(convnext(), grow(convnext(), (), (0, 32)))
    assert set(channel_maps(plan)["stages.1"].counts) == {2}


def test_the_plan_needs_no_torch():
    code = (
        "import sys\n"
        "from search_spaces import morph_plan\n"
        "from tests.search_spaces.helpers import small_spec\n"
        "from dataclasses import replace\n"
        "child = replace(small_spec(), stages=(small_spec().stages[0],"
        " replace(small_spec().stages[1], depth=3, width=24)))\n"
        "assert morph_plan(small_spec(), child).wider\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# -- pairs that are not morphs ---------------------------------------------------------------
NOT_MORPHS = [
    ("fewer-blocks", grow(small_spec(), (3,)), small_spec(), "depth shrinks"),
    ("narrower", grow(small_spec(), (), (0, 24)), small_spec(), "width shrinks"),
    ("other-skip", small_spec("identity"), small_spec("projection"), "skip differs"),
    ("other-block", small_spec(block="basic"), small_spec(block="bottleneck"), "block differs"),
    ("other-stride", small_spec(),
     replace(small_spec(), stages=(small_spec().stages[0],
                                   replace(small_spec().stages[1], stride=1))), "stride differs"),
    ("other-stem", small_spec(), replace(small_spec(), stem_width=16), "`stem_width` differs"),
    ("other-head", small_spec(), replace(small_spec(), num_classes=7), "`num_classes` differs"),
    ("other-preact", small_spec(), small_spec(preact=True), "`preact` differs"),
    ("more-stages", small_spec(),
     replace(small_spec(), stages=(*small_spec().stages, small_spec().stages[1])), "stages"),
    ("other-groups", resnext(),
     replace(resnext(), stages=(replace(resnext().stages[0], groups=2, width_per_group=16),
                                resnext().stages[1])), "groups differs"),
    ("zero_pad-stage-widens-beside-the-stem", small_spec("zero_pad"),
     grow(small_spec("zero_pad"), (), (12,)), "zero_pad builds an identity"),
    ("zero_pad-pads-fewer", small_spec("zero_pad", stem_width=4),
     grow(small_spec("zero_pad", stem_width=4), (), (12, 16)), "the child pads 4 zero channels"),
    ("preact-projection-deeper", small_spec("projection", preact=True),
     grow(small_spec("projection", preact=True), (3,)), "cannot deepen"),
    ("preact-identity-becomes-projection", small_spec(preact=True),
     grow(small_spec(preact=True), (), (12,)), "relu(bn1(x))"),
    ("preact-none-deeper", small_spec("none", preact=True),
     grow(small_spec("none", preact=True), (3,)), "cannot deepen"),
    ("bottleneck-none-deeper", small_spec("none", "bottleneck"),
     grow(small_spec("none", "bottleneck"), (3,)), "cannot deepen"),
    ("basic-none-se-deeper", small_spec("none", se_ratio=0.25),
     grow(small_spec("none", se_ratio=0.25), (3,)), "cannot deepen"),
    ("convnext-none-deeper", convnext("none"), grow(convnext("none"), (3,)), "cannot deepen"),
    ("layer-norm-widened-unevenly", convnext(), grow(convnext(), (), (0, 24)),
     "copied equally often"),
    ("hybrid-widened-unevenly", hybrid(), grow(hybrid(), (), (12,)), "copied equally often"),
    ("convnext-entry-appears", convnext(), grow(convnext(), (), (16, 32)), "entry layer"),
    ("transformer-other-heads", transformer(),
     replace(transformer(), stages=(replace(transformer().stages[0], heads=4),
                                    transformer().stages[1])), "heads differs"),
    ("cell-without-identity-deeper", cells(CELL_OPS_DOUBLE), grow(cells(CELL_OPS_DOUBLE), (3,)),
     "cannot deepen"),
    ("cell-other-ops", cells(), cells(CELL_OPS_DOUBLE), "ops differ"),
    ("cell-reduction-appears", cells(), grow(cells(), (), (12,)), "reduction block"),
    ("dense-deeper", dense_then_basic(), grow(dense_then_basic(), (3,)), "concatenates"),
    ("dense-after-a-widened-stage",
     replace(dense_then_basic(), stages=tuple(reversed(dense_then_basic().stages))),
     grow(replace(dense_then_basic(), stages=tuple(reversed(dense_then_basic().stages))),
          (), (16,)), "cannot follow a widened stage"),
]


@pytest.mark.parametrize(("parent", "child", "reason"),
                         [pytest.param(p, c, r, id=i) for i, p, c, r in NOT_MORPHS])
def test_a_pair_that_is_not_a_morph_is_refused_with_a_reason(parent, child, reason):
    assert morph_plan(parent, child) is None
    with pytest.raises(ValueError) as caught:
        check_morph(parent, child)
    assert reason in str(caught.value)
    state = build_model(parent).state_dict()
    with pytest.raises(ValueError, match="differ|shrinks|narrows|cannot|copied|entry|ops|"
                                         "reduction|concatenates|stages|zero_pad|relu"):
        morph_weights(parent, state, child)


def test_a_state_dict_of_another_network_is_refused():
    state = build_model(grow(small_spec(), (), (0, 24))).state_dict()
    with pytest.raises(ValueError, match="`parent_state`.*wrong shape"):
        morph_weights(small_spec(), state, grow(small_spec(), (3,)))
    del state["fc.bias"]
    with pytest.raises(ValueError, match="missing `fc.bias`"):
        morph_weights(grow(small_spec(), (), (0, 24)), state, grow(small_spec(), (3,), (0, 24)))


def test_cell_identity_start_counts_the_skip_paths():
    assert cell_starts_as_identity(cells().stages[0].ops)
    assert not cell_starts_as_identity(cells(CELL_OPS_DOUBLE).stages[0].ops)  # x + x
    pooled = "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"
    assert cell_starts_as_identity(cells(pooled).stages[0].ops)  # the pool feeds nothing used
    pooled_out = "|skip_connect~0|+|none~0|none~1|+|none~0|avg_pool_3x3~1|none~2|"
    assert not cell_starts_as_identity(cells(pooled_out).stages[0].ops)


# -- the child trains ------------------------------------------------------------------------
TRAINS = ["basic-both", "basic-none-both", "basic-gated-both", "resnext-se-both",
          "preact-bottleneck-both", "preact-deeper-child-zero-init", "convnext-layer-scale-both",
          "convnext-both", "transformer-gated-both", "transformer-both", "cell-both"]


@pytest.mark.parametrize("case", TRAINS)
def test_morphed_child_trains_and_its_new_blocks_learn(case):
    _, parent_spec, child_spec, shape = next(m for m in MORPHS if m[0] == case)
    parent = trained_parent(parent_spec, torch.float32)
    child = morphed_child(parent_spec, parent, child_spec, torch.float32).train()
    plan = morph_plan(parent_spec, child_spec)
    x = batch(shape, torch.float32, n=8)
    y = torch.arange(8) % child_spec.num_classes
    params = dict(child.named_parameters())
    new = {prefix: [k for k in params if k.startswith(f"{prefix}.")] for prefix in plan.new_blocks}
    starts = {k for k, _ in plan.starts if k in params}
    reached: set[str] = set()
    optimizer = torch.optim.SGD(child.parameters(), lr=0.05)
    losses = []
    for step in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(child(x), y)
        loss.backward()
        if step == 0:
            # The identity start itself (zeroed BN gamma, zero gate or scale, zeroed last conv
            # or linear) must get a gradient at once, in every new block.
            for prefix, keys in new.items():
                assert any(params[k].grad.abs().sum() > 0 for k in keys if k in starts), prefix
        reached |= {k for k, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    dead = [k for keys in new.values() for k in keys if k not in reached]
    assert not dead, f"parameters of new blocks that never got a gradient: {dead}"
