"""DenseNet, ConvNeXt and Transformer blocks: what they compute, how they start, their ids."""

from __future__ import annotations

import statistics
from dataclasses import replace

import optuna
import pytest
import torch
import torch.nn.functional as F

from search_spaces import build_model, complexity, load_space, zoo
from search_spaces.space import SearchSpace, SpaceError
from search_spaces.spec import ArchitectureSpec, StageSpec
from tests.search_spaces.test_cost import assert_matches
from tests.search_spaces.test_space import sample

optuna.logging.set_verbosity(optuna.logging.WARNING)


def token_spec(block: str, skip: str = "identity", depth: int = 2, **options) -> ArchitectureSpec:
    """One convnext or transformer stage of width 32 on a 1x1 patch stem (8x8 -> 64 tokens)."""
    stage = StageSpec(depth=depth, width=32, block=block, skip=skip, heads=4, expansion=2)
    stem = "patch_ln" if block == "convnext" else "patch"
    values = {"stem": stem, "patch_size": 1, "stem_width": 32, "num_classes": 10, **options}
    return ArchitectureSpec(stages=(stage,), **values)


def mixed_spec(**options) -> ArchitectureSpec:
    """Every family in one net: dense, basic, convnext, transformer (the last hands tokens)."""
    stages = (
        StageSpec(depth=2, width=8, block="dense", expansion=2),
        StageSpec(depth=1, width=16, stride=2, block="basic"),
        StageSpec(depth=1, width=24, stride=2, block="convnext", expansion=2),
        StageSpec(depth=2, width=24, block="transformer", heads=3, expansion=2),
    )
    return ArchitectureSpec(stages=stages, stem_width=8, num_classes=5, **options)


# -- what the blocks compute ---------------------------------------------------------------------
def test_dense_layers_concatenate_onto_their_input_and_transitions_compress_and_halve():
    spec = ArchitectureSpec(
        stages=(
            StageSpec(depth=3, width=4, block="dense"),
            StageSpec(depth=2, width=4, stride=2, block="dense", compression=0.5),
        ),
        stem_width=8,
        preact=True,
    )
    assert spec.stage_in_channels() == [8, 20] and spec.out_channels == 10 + 2 * 4
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        stem_out = model.stem(x)
        first = model.stages[0](stem_out)
        second = model.stages[1](first)
    assert first.shape == (2, 20, 9, 9)
    assert torch.equal(first[:, :8], stem_out)  # the input travels on untouched
    assert second.shape == (2, 18, 5, 5)  # 20 -> 10 channels, 9 -> 5 (odd sizes round up)
    assert model.final_bn is not None  # DenseNet's norm5 before the head


@pytest.mark.parametrize("block", ["convnext", "transformer"])
@pytest.mark.parametrize("layer_scale", [0.0, 1e-6])
def test_zero_init_residual_modern_blocks_start_as_the_identity(block, layer_scale):
    spec = token_spec(block, depth=3, zero_init_residual=True, layer_scale=layer_scale)
    torch.manual_seed(0)
    model = build_model(spec)
    stage = model.stages[0]
    x = torch.randn(4, 32, 8, 8)
    tokens = x.flatten(2).transpose(1, 2)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            out = stage.blocks(x if block == "convnext" else tokens)
        assert torch.equal(out, x if block == "convnext" else tokens)


@pytest.mark.parametrize("block", ["convnext", "transformer"])
def test_gated_modern_blocks_start_as_the_identity_and_their_gates_learn(block):
    spec = token_spec(block, skip="gated")
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.randn(4, 32, 8, 8)
    inner = x if block == "convnext" else x.flatten(2).transpose(1, 2)
    with torch.no_grad():
        assert torch.equal(model.stages[0].blocks(inner), inner)
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.arange(4)).backward()
    gates = [p for n, p in model.named_parameters() if n.endswith(".gate")]
    assert len(gates) == (2 if block == "convnext" else 4)  # a transformer block has 2 branches
    assert all(float(g.grad.abs()) > 0 for g in gates)


def test_plain_modern_blocks_have_no_shortcut():
    torch.manual_seed(0)
    model = build_model(token_spec("convnext", skip="none", depth=1, zero_init_residual=True))
    assert model.stages[0].blocks[0].zero_init_residual is False  # nothing to start as
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model.stages[0].blocks(x), x)


def test_the_class_token_and_positions_match_vit():
    with torch.device("meta"):
        model = build_model(zoo.get("vit_b_16"))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["stem.conv.weight"] == (768, 3, 16, 16) and "stem.conv.bias" in shapes
    assert shapes["stages.0.token"] == (1, 1, 768)
    assert shapes["stages.0.pos"] == (1, 197, 768)  # 14 x 14 patches + the class token
    assert shapes["stages.0.blocks.11.attn.qkv.weight"] == (3 * 768, 768)
    assert shapes["final_norm.weight"] == (768,) and shapes["fc.weight"] == (1000, 768)


def test_position_embedding_is_resized_for_another_grid():
    spec = zoo.get("hybrid_digits")  # learned for 4x4 positions
    torch.manual_seed(0)
    model = build_model(spec).eval()
    stage = model.stages[2]
    assert stage.pos.shape == (1, 16, 32) and stage.returns_tokens
    assert torch.equal(stage.positions(4, 4), stage.pos)
    assert stage.positions(8, 6).shape == (1, 48, 32)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        assert model(torch.randn(2, 1, 16, 12)).shape == (2, 10)  # 8x6 positions, resized


def test_a_transformer_stage_inside_the_net_hands_a_map_to_the_next_stage():
    spec = ArchitectureSpec(
        stages=(
            StageSpec(depth=1, width=16, block="transformer", heads=2),
            StageSpec(depth=1, width=16, stride=2, block="basic"),
        ),
        stem_width=8,
    )
    model = build_model(spec).eval()
    with torch.no_grad():
        assert model.stages[0](torch.randn(2, 8, 6, 6)).shape == (2, 16, 6, 6)
        assert model(torch.randn(2, 3, 6, 6)).shape == (2, 10)


def test_stochastic_depth_rises_linearly_and_acts_only_in_training():
    spec = zoo.get("convnext_tiny")
    rates = [r for stage in spec.drop_path_rates() for r in stage]
    assert len(rates) == 18 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates == sorted(rates)
    small = token_spec("convnext", depth=4, drop_path=0.5)
    torch.manual_seed(0)
    model = build_model(small)
    x = torch.randn(8, 3, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "spec_fn",
    [
        pytest.param(lambda: mixed_spec(), id="mixed"),
        pytest.param(lambda: mixed_spec(pool="token", pos_embed=2, layer_scale=0.1), id="token"),
        pytest.param(lambda: token_spec("convnext", skip="gated", zero_init_residual=True), id="convnext"),
        pytest.param(lambda: zoo.get("hybrid_digits"), id="hybrid"),
    ],
)
def test_mixed_families_train_and_round_trip_through_dict_and_state_dict(spec_fn):
    spec = spec_fn()
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(8, spec.in_channels, 9, 9)
    y = torch.randint(0, spec.num_classes, (8,))
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    again = ArchitectureSpec.from_json(spec.to_json())
    assert again == spec and again.arch_id == spec.arch_id
    rebuilt = build_model(again)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_regnet_y_puts_its_squeeze_excitation_after_the_3x3_conv():
    with torch.device("meta"):
        model = build_model(zoo.get("regnet_y_400mf"))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["stem.conv.weight"] == (32, 3, 3, 3) and model.stem.pool is None
    block = model.stages[1][1]  # 104 channels in, groups of 8
    assert block.se is None and block.conv2.groups == 13
    # squeeze to round(0.25 x 104) = 26 channels of the 104-wide 3x3 output
    assert shapes["stages.1.1.se_inner.reduce.weight"] == (26, 104, 1, 1)
    assert [s.inner_width for s in zoo.get("regnet_y_400mf").stages] == [48, 104, 208, 440]


def test_se_position_matters_only_where_a_bottleneck_has_se():
    spec = zoo.get("regnet_y_400mf")
    assert replace(spec, se_position="branch").arch_id != spec.arch_id
    basic = zoo.get("resnet18")
    assert replace(basic, se_position="inner").arch_id == basic.arch_id  # no se_ratio
    with_se = replace(basic, se_ratio=0.25)
    assert replace(with_se, se_position="inner").arch_id == with_se.arch_id  # no bottleneck
    assert "se_position" not in zoo.get("resnet50").to_dict()


# -- the residual claim, per family --------------------------------------------------------------
def _first_layer_gradient(block: str, skip: str, depth: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model(token_spec(block, skip, depth=depth))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    return float(model.stem.conv.weight.grad.norm())


@pytest.mark.parametrize(
    ("block", "residual_range", "plain_below"),
    [("convnext", (0.5, 2.0), 0.35), ("transformer", (0.5, 15.0), 0.3)],
)
def test_shortcuts_keep_the_first_layers_gradient_through_96_pre_norm_blocks(
    block, residual_range, plain_below
):
    """Gradient at the stem of a 96-block stack over that of a 2-block stack, median of 5 seeds.

    Measured at initialisation: convnext with identity shortcuts 0.86-1.25 (median 0.95),
    without 0.21-0.49 (median 0.22); transformer with 3.4-8.7 (median 5.2: the sum of branches
    grows), without 0.0003-1.3 (median 0.09). LayerNorm in every block keeps the plain stacks
    from exploding the way plain BN-ReLU stacks do (see the resnet110 test): they fade.
    """

    def median_ratio(skip: str) -> float:
        return statistics.median(
            _first_layer_gradient(block, skip, 96, s) / _first_layer_gradient(block, skip, 2, s)
            for s in range(5)
        )

    residual, plain = median_ratio("identity"), median_ratio("none")
    message = f"{block}: deep/shallow first-layer gradient, residual {residual:.3g}, plain {plain:.3g}"
    assert residual_range[0] <= residual <= residual_range[1], message
    assert plain < plain_below, message


# -- identities --------------------------------------------------------------------------------
def test_resnet_family_ids_and_dicts_are_unchanged_by_the_new_fields():
    # arch_ids as the spec computed them before the DenseNet/ConvNeXt/Transformer fields.
    before = {
        "resnet20": "65312b89c5875231",
        "resnet50": "097aa5efe788e557",
        "resnext50_32x4d": "2acb1f31980440c2",
        "preact_resnet18": "8efeccc171e8a6f2",
        "plain20": "97c3a3cec55fd64a",
        "wide_resnet50_2": "df9205bc2e96641b",
    }
    for name, arch_id in before.items():
        assert zoo.get(name).arch_id == arch_id, name
        data = zoo.get(name).to_dict()
        assert not {"patch_size", "layer_scale", "drop_path", "pos_embed", "pool"} & set(data)
        assert not {"heads", "compression"} & set(data["stages"][0])
    mixed = ArchitectureSpec(
        stages=(
            StageSpec(depth=2, width=8, skip="dense"),
            StageSpec(depth=1, width=16, stride=2, block="bottleneck", groups=2, skip="projection"),
        ),
        se_ratio=0.25,
        zero_init_residual=True,
        preact=True,
    )
    assert mixed.arch_id == "3224c7f4236cc93c"


def test_zero_init_leaves_gated_blocks_alive_and_out_of_the_id():
    """A gated branch starts at 0 through its gate; zeroing its end too left both the gate and
    the branch with zero gradient for good (the id of such a spec was 83f1258dc7069a2c: it
    named a network that could not learn, and it now names the one that can)."""
    for block, stem in (("basic", "cifar"), ("convnext", "patch_ln"), ("transformer", "patch")):
        stage = StageSpec(depth=2, width=8, block=block, skip="gated", heads=2)
        spec = ArchitectureSpec(stages=(stage,), stem=stem, patch_size=1, stem_width=8,
                                zero_init_residual=True)
        assert spec.arch_id == replace(spec, zero_init_residual=False).arch_id
        torch.manual_seed(0)
        model = build_model(spec)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        gates = [float(p.detach()) for n, p in model.named_parameters() if n.endswith("gate")]
        assert gates and all(g != 0.0 for g in gates), block


def test_a_dense_transition_must_keep_a_channel():
    stage = StageSpec(depth=1, width=4, stride=2, block="dense", compression=0.5)
    with pytest.raises(ValueError, match=r"`stages\[0\]\.compression`.*at least 1 of the 1"):
        ArchitectureSpec(stages=(stage,), stem="none", in_channels=1)


def test_a_dense_block_always_concatenates():
    assert StageSpec(depth=1, width=8, block="dense", skip="none").skip == "dense"
    assert StageSpec(depth=1, width=8, block="dense").to_dict()["skip"] == "dense"


def test_fields_a_block_ignores_do_not_change_its_id():
    dense = ArchitectureSpec(stages=(StageSpec(depth=2, width=8, block="dense"),), stem="imagenet")
    same = [
        replace(dense, stages=(replace(dense.stages[0], skip="none", groups=2, heads=4),)),
        replace(dense, se_ratio=0.25, layer_scale=1e-6, drop_path=0.1, pos_embed=4, preact=True),
    ]
    assert all(s.arch_id == dense.arch_id for s in same)
    assert replace(dense, stages=(replace(dense.stages[0], compression=1.0, stride=2),)).arch_id != (
        replace(dense, stages=(replace(dense.stages[0], stride=2),)).arch_id
    )
    # without a transition (stride 1) there is nothing to compress
    assert replace(dense, stages=(replace(dense.stages[0], compression=1.0),)).arch_id == (
        dense.arch_id
    )
    cnx = token_spec("convnext")
    assert replace(cnx, preact=True, se_ratio=0.5).arch_id == cnx.arch_id
    assert replace(cnx, stages=(replace(cnx.stages[0], skip="zero_pad"),)).arch_id == cnx.arch_id
    assert replace(cnx, layer_scale=1e-6).arch_id != cnx.arch_id
    assert replace(cnx, patch_size=2).arch_id != cnx.arch_id
    plain = token_spec("convnext", skip="none")
    assert replace(plain, layer_scale=1e-6, drop_path=0.2).arch_id == plain.arch_id
    one_block = token_spec("convnext", depth=1)  # the first block's rate is always 0
    assert replace(one_block, drop_path=0.3).arch_id == one_block.arch_id
    assert replace(cnx, drop_path=0.3).arch_id != cnx.arch_id


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: StageSpec(depth=1, width=30, block="transformer", heads=4), "`heads`"),
        (lambda: StageSpec(depth=1, width=8, block="convnext", skip="projection"), "`skip`"),
        (lambda: StageSpec(depth=1, width=8, block="transformer", skip="dense"), "`skip`"),
        (lambda: StageSpec(depth=1, width=8, block="dense", compression=0), "`compression`"),
        (lambda: StageSpec(depth=1, width=8, block="dense", compression=1.5), "`compression`"),
        (lambda: StageSpec(depth=100_000, width=8), "`depth`"),
        (lambda: StageSpec(depth=1, width=10**8), "`width`"),
        (lambda: token_spec("convnext", pool="token"), "`pool`"),
        (lambda: token_spec("transformer", pos_embed=-1), "`pos_embed`"),
        (lambda: token_spec("transformer", drop_path=1.0), "`drop_path`"),
        (lambda: token_spec("transformer", patch_size=0), "`patch_size`"),
        (lambda: token_spec("transformer", stem="vit"), "`stem`"),
        (lambda: token_spec("transformer", se_position="middle"), "`se_position`"),
    ],
)
def test_invalid_new_fields_name_the_field_and_what_is_allowed(make, named):
    with pytest.raises(ValueError, match=named) as info:
        make()
    assert "allowed" in str(info.value)


def test_summary_and_total_depth_of_the_new_families():
    assert zoo.get("densenet121").total_depth == 121
    assert zoo.get("densenet201").total_depth == 201
    text = zoo.get("hybrid_digits").summary()
    assert text.endswith("2x32 transformer(h4,x2) identity")
    assert "6x32 dense(x4,c0.5) dense" in zoo.get("densenet121").summary()


# -- search spaces that mix them -------------------------------------------------------------
def test_a_mixed_space_asks_each_stage_only_what_its_block_reads():
    space = load_space("hybrid")
    asked: list[set[str]] = []
    blocks_seen = set()
    for trial, spec in sample(space, 60, in_channels=1):
        blocks_seen.update(s.block for s in spec.stages)
        for i, stage in enumerate(spec.stages, 1):
            if stage.block == "dense":
                assert f"stage{i}.skip" not in trial.params  # a dense block always concatenates
        asked.append(set(trial.params))
        assert complexity(spec, 8).params <= space.constraints["max_params"]
    assert blocks_seen == {"basic", "dense", "transformer"}
    assert len({frozenset(a) for a in asked}) > 1  # conditional labels


BAD_MIXES = {
    "heads-not-dividing": (
        "stages:\n  - {depth: 1, width: [32, 30], block: [basic, transformer], heads: 4}\n",
        r"`stages\[0\]`.*transformer.*width=30",
    ),
    "heads-without-transformer": (
        "stages:\n  - {depth: 1, width: 8, heads: [1, 2]}\n",
        r"`stages\[0\]\.heads`.*transformer",
    ),
    "token-without-final-transformer": (
        "pool: token\nstages:\n  - {depth: 1, width: 8, block: [basic, transformer]}\n",
        r"`pool`.*always a transformer",
    ),
    "skip-choice-on-dense": (
        "stages:\n  - {depth: 1, width: 8, block: dense, skip: [identity, none]}\n",
        r"`stages\[0\]\.skip`.*dense block always concatenates",
    ),
    "train-not-a-mapping": ("train: [adamw]\nstages:\n  - {depth: 1, width: 8}\n", r"`train`"),
}


@pytest.mark.parametrize("case", sorted(BAD_MIXES))
def test_space_load_rejects_a_block_field_combination_that_cannot_build(tmp_path, case):
    text, pattern = BAD_MIXES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=pattern) as info:
        load_space(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("preset", "model"),
    [("densenet-imagenet", "densenet121"), ("densenet-imagenet", "densenet201"),
     ("convnext-imagenet", "convnext_tiny"), ("convnext-imagenet", "convnext_small")],
)
def test_imagenet_presets_hold_the_zoo_models(preset, model):
    space = load_space(preset)
    spec = zoo.get(model)
    params = space.params_for(spec)
    assert params is not None
    again = space.suggest(optuna.trial.FixedTrial(params), in_channels=3, num_classes=1000)
    assert again.arch_id == spec.arch_id


def test_presets_carry_their_familys_recipe():
    assert load_space("convnext").train == {"optimizer": "adamw", "lr": 0.003}
    assert load_space("hybrid").train["optimizer"] == "adamw"
    assert load_space("densenet").train == {} and load_space("resnet").train == {}


ALL_FIVE = """
name: all-five
stem: cifar
stem_width: 8
pos_embed: 2
shared:
  block: [basic, bottleneck, dense, convnext, transformer]
  skip: [identity, gated, none]
  expansion: [1, 2]
  heads: [1, 2]
stages:
  - {stride: 1, depth: [1, 2], width: [8, 16]}
  - {stride: 2, depth: [1, 2], width: [16, 32]}
"""


def test_all_five_blocks_mix_in_one_space_and_every_sample_builds(tmp_path):
    path = tmp_path / "all-five.yaml"
    path.write_text(ALL_FIVE)
    space = load_space(str(path))
    blocks = set()
    for trial, spec in sample(space, 40):
        blocks.update(s.block for s in spec.stages)
        assert_matches(spec, 8)
        assert "heads" not in trial.params or spec.stages[0].block == "transformer"
    assert blocks == {"basic", "bottleneck", "dense", "convnext", "transformer"}


def test_a_space_finds_its_spec_when_a_dense_stage_comes_before_a_shared_skip():
    space = SearchSpace.from_dict({
        "name": "t", "stem_width": 8, "shared": {"skip": ["identity", "projection"]},
        "stages": [{"depth": 1, "width": 8, "block": "dense"},
                   {"depth": 1, "width": 16, "stride": 2, "block": "basic"}],
    })
    spec = ArchitectureSpec(
        stages=(StageSpec(depth=1, width=8, block="dense"),
                StageSpec(depth=1, width=16, stride=2, skip="projection")),
        stem_width=8,
    )
    assert space.params_for(spec) == {"skip": "projection"}
