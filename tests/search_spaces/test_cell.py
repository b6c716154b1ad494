"""NAS-Bench-201's cell network: its layers, parameter counts, ops, spec and preset."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from torch import nn

from search_spaces import SearchSpace, SpaceError, build_model, complexity, load_space
from search_spaces.cell import Cell, ReductionBlock, ReLUConvBN, Zero, nb201_key, nb201_spec
from search_spaces.describe import render_text
from search_spaces.spec import (
    CELL_EDGES,
    CELL_OPS,
    ArchitectureSpec,
    StageSpec,
    cell_arch_str,
    parse_cell_arch_str,
)
from tests.search_spaces.test_cost import assert_matches

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXAMPLE = ("avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_1x1", "skip_connect",
           "skip_connect")
EXAMPLE_STR = ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|"
               "+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")


def n_params(spec: ArchitectureSpec) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(spec).parameters())


# What every NAS-Bench-201 network has whatever its cell, with 10 classes:
#   stem       conv 3*16*9 = 432, BN 2*16 = 32                                      =    464
#   16 -> 32   conv_a 16*32*9 + 2*32 = 4672, conv_b 32*32*9 + 2*32 = 9280,
#              downsample 1x1 conv 16*32 = 512                                      = 14,464
#   32 -> 64   conv_a 32*64*9 + 2*64 = 18560, conv_b 64*64*9 + 2*64 = 36992,
#              downsample 32*64 = 2048                                              = 57,600
#   head       BN 2*64 = 128, linear 64*10 + 10 = 650                               =    778
#                                                                           total     73,306
# A cell adds, per conv edge at C channels, C*C*k*k + 2C (k = 1 or 3), in 5 cells at each of
# C = 16, 32, 64. All six edges nor_conv_3x3 ("333333"):
#   5 * 6 * ((9*256 + 32) + (9*1024 + 64) + (9*4096 + 128)) = 30 * 48608 = 1,458,240
#   + 73,306 = 1,531,546 (the table's largest model, 1.531546 MB).
# All 1x1 ("222222"): 30 * ((256 + 32) + (1024 + 64) + (4096 + 128)) = 168,000 -> 241,306.
# Three 3x3 edges ("030303"): half of 1,458,240 = 729,120 -> 802,426.
# 100 classes instead of 10: the linear head has 64*100 + 100 = 6,500 (not 650).
KNOWN_PARAMS = [
    ("421211", 10, 129_306),
    ("421211", 120, 136_456),
    ("000000", 10, 73_306),
    ("111111", 10, 73_306),  # skips and pools weigh nothing
    ("444444", 100, 73_306 - 650 + 6_500),
    ("333333", 10, 1_531_546),
    ("222222", 10, 241_306),
    ("030303", 10, 802_426),
]


@pytest.mark.parametrize(("key", "classes", "params"), KNOWN_PARAMS)
def test_parameter_counts_are_nasbench201_model_sizes(key, classes, params):
    spec = nb201_spec(key, classes)
    assert n_params(spec) == params
    assert complexity(spec, 32).params == params
    assert complexity(spec, 16).params == params  # sizes do not change weights


@pytest.mark.parametrize("key", ["421211", "333333", "000000", "104243"])
@pytest.mark.parametrize("size", [32, 16, 9])
def test_complexity_agrees_with_the_built_network_and_torchs_flop_counter(key, size):
    assert_matches(nb201_spec(key, 10), size)  # 9: odd sizes round up in both branches


def _conv(m: nn.Module, cin: int, cout: int, k: int, stride: int) -> None:
    assert isinstance(m, nn.Conv2d) and m.bias is None
    assert (m.in_channels, m.out_channels) == (cin, cout)
    assert m.kernel_size == (k, k) and m.stride == (stride, stride) and m.padding == (k // 2,) * 2


def _relu_conv_bn(m: nn.Module, cin: int, cout: int, k: int, stride: int = 1) -> None:
    assert isinstance(m, ReLUConvBN)
    relu, conv, bn = m.op
    assert isinstance(relu, nn.ReLU) and not relu.inplace
    _conv(conv, cin, cout, k, stride)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == cout
    assert bn.affine and bn.track_running_stats


def test_a_cell_is_the_reference_infercell_layer_for_layer():
    ops = ("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
    cell = Cell(ops, 32)
    assert [type(m).__name__ for m in cell.layers] == [
        "ReLUConvBN", "Identity", "Zero", "AvgPool2d", "ReLUConvBN", "ReLUConvBN"]
    _relu_conv_bn(cell.layers[0], 32, 32, 3)
    pool = cell.layers[3]
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 1, 1)
    assert pool.count_include_pad is False
    _relu_conv_bn(cell.layers[4], 32, 32, 1)
    _relu_conv_bn(cell.layers[5], 32, 32, 3)


def test_the_network_is_the_reference_tinynetwork_in_order():
    model = build_model(nb201_spec("421211", 10))
    stem = model.stem
    _conv(stem.conv, 3, 16, 3, 1)
    assert isinstance(stem.bn, nn.BatchNorm2d) and stem.relu is False  # conv-BN, no ReLU
    widths = [16, 32, 64]
    for i, stage in enumerate(model.stages):
        assert len(stage.cells) == 5 and all(isinstance(c, Cell) for c in stage.cells)
        assert all(len(c.layers) == 6 for c in stage.cells)
        if i == 0:
            assert stage.entry is None
            continue
        block = stage.entry
        assert isinstance(block, ReductionBlock)
        _relu_conv_bn(block.conv_a, widths[i - 1], widths[i], 3, stride=2)
        _relu_conv_bn(block.conv_b, widths[i], widths[i], 3)
        pool, conv = block.downsample
        assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride) == (2, 2)
        _conv(conv, widths[i - 1], widths[i], 1, 1)
    assert model.final_bn.num_features == 64
    assert (model.fc.in_features, model.fc.out_features) == (64, 10)


@pytest.mark.parametrize("classes", [10, 100, 120])
@pytest.mark.parametrize("size", [32, 16])
def test_forward_gives_one_logit_per_class(classes, size):
    model = build_model(nb201_spec("314203", classes)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, classes)


def test_a_cell_sums_each_nodes_edges_and_returns_node_3():
    torch.manual_seed(0)
    ops = ("nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", "none")
    cell = Cell(ops, 4).eval()
    x = torch.randn(2, 4, 6, 6)
    op = cell.layers
    with torch.no_grad():
        n1 = op[0](x)
        n2 = op[1](x) + op[2](n1)
        n3 = op[3](x) + op[4](n1) + op[5](n2)
        assert torch.equal(cell(x), n3)


def test_every_op_computes_what_nasbench201_defines():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    ops = {name: Cell((name,) * 6, 4).layers[0].eval() for name in CELL_OPS}
    with torch.no_grad():
        none = ops["none"](x)
        assert isinstance(ops["none"], Zero) and none.shape == x.shape and not none.any()
        assert torch.equal(ops["skip_connect"](x), x)
        ones = torch.ones(1, 1, 5, 5)
        # The border averages only real pixels (count_include_pad=False): ones stay ones.
        assert torch.equal(ops["avg_pool_3x3"](ones), ones)
        before = x.clone()
        for name in ("nor_conv_1x1", "nor_conv_3x3"):
            out = ops[name](x)
            assert out.shape == x.shape
            assert torch.equal(out, ops[name](x.clamp(min=0)))  # it starts with a ReLU
        assert x.min() < 0 and torch.equal(x, before)  # ... that leaves the input alone


def test_a_cell_stage_with_a_new_width_and_stride_1_uses_a_1x1_shortcut():
    spec = ArchitectureSpec(
        stages=(StageSpec(depth=1, width=12, block="cell", ops=EXAMPLE),), stem_width=8,
    )
    block = build_model(spec).stages[0].entry
    _relu_conv_bn(block.downsample, 8, 12, 1)
    assert_matches(spec, 9)


# -- the spec -------------------------------------------------------------------------------
def test_arch_strings_are_nasbench201s_and_parse_back():
    assert cell_arch_str(EXAMPLE) == EXAMPLE_STR
    assert parse_cell_arch_str(EXAMPLE_STR) == EXAMPLE
    assert StageSpec(depth=1, width=8, block="cell", ops=EXAMPLE_STR).ops == EXAMPLE


def test_a_cell_spec_round_trips_and_keeps_its_id():
    spec = nb201_spec("421211", 10)
    data = spec.to_dict()
    assert data["stages"][0]["ops"] == list(EXAMPLE)
    again = ArchitectureSpec.from_json(spec.to_json())
    assert again == spec and again.arch_id == spec.arch_id == "7295f6d4068a46bd"
    assert ArchitectureSpec.from_dict(data).to_dict() == data
    assert spec.canonical_dict()["stages"][1]["ops"] == list(EXAMPLE)
    # Lists are taken and kept as tuples.
    assert StageSpec(depth=1, width=8, block="cell", ops=list(EXAMPLE)).ops == EXAMPLE


def test_only_cell_stages_write_ops():
    basic = StageSpec(depth=1, width=8)
    assert "ops" not in basic.to_dict()
    assert "ops" not in ArchitectureSpec(stages=(basic,)).canonical_dict()["stages"][0]


def test_isomorphic_cells_keep_their_own_ids():
    # x -skip-> node1 -conv-> node3 computes what x -conv-> node3 does; the table measured both.
    a = ("skip_connect", "none", "none", "none", "nor_conv_3x3", "none")
    b = ("none", "none", "none", "nor_conv_3x3", "none", "none")
    ids = {ArchitectureSpec(stages=(StageSpec(depth=1, width=8, block="cell", ops=o),)).arch_id
           for o in (a, b)}
    assert len(ids) == 2


def test_summary_depth_and_norms_of_a_cell_network():
    spec = nb201_spec("421211", 10)
    # one cell shared by every cell stage is written once, at the end
    assert spec.summary() == f"cifar16 | 5x16 cell | 5x32/2 cell | 5x64/2 cell | cell {EXAMPLE_STR}"
    mixed = ArchitectureSpec(stages=(StageSpec(depth=1, width=8, block="cell", ops=("none",) * 6),
                                     StageSpec(depth=1, width=8, block="cell",
                                               ops=("skip_connect",) * 6)))
    assert mixed.summary().count("cell(|") == 2  # different cells: each on its stage
    # stem + 2 convs per reduction block + the convs of each cell's longest path + head
    assert spec.total_depth == 1 + 2 * 2 + 15 * 1 + 1
    assert nb201_spec("333333", 10).total_depth == 1 + 4 + 15 * 3 + 1
    assert nb201_spec("000000", 10).total_depth == 1 + 4 + 0 + 1  # no path reaches node 3
    assert spec.final_norm == "bn" and spec.total_blocks == 15
    # The stem before a cell is conv-BN whatever `preact` says: preact shapes nothing here.
    preact = ArchitectureSpec.from_dict({**spec.to_dict(), "preact": True})
    assert preact.arch_id == spec.arch_id and build_model(preact).stem.bn is not None


def test_nas_show_describes_the_cell():
    text = render_text(nb201_spec("421211", 10), 32)
    assert f"cell({EXAMPLE_STR})" in text and "cell edges" in text
    assert "params 129,306" in text


@pytest.mark.parametrize(
    ("stage", "named"),
    [
        (dict(ops=("none",) * 5), "`ops` got"),
        (dict(ops=("none",) * 5 + ("conv_3x3",)), "`ops[3<-2]` got 'conv_3x3'; allowed: none |"),
        (dict(ops=None), "`ops` got None; allowed: 6 ops"),
        (dict(ops=("none",) * 6, skip="none"), "`skip` got 'none'; allowed: identity for a cell"),
        (dict(ops="|none~0|+|none~0|"), "3 nodes joined by +"),
        (dict(ops="|none~0|+|none~1|none~0|+|none~0|none~1|none~2|"), "must read ~0"),
    ],
)
def test_invalid_cells_name_the_field_and_what_is_allowed(stage, named):
    with pytest.raises(ValueError, match="allowed") as info:
        StageSpec(depth=1, width=8, block="cell", **stage)
    assert named in str(info.value)


def test_ops_belong_to_cell_stages_only():
    with pytest.raises(ValueError, match="`ops` got .*allowed: none \\(empty\\) unless `block` is cell"):
        StageSpec(depth=1, width=8, ops=EXAMPLE)


# -- table keys -----------------------------------------------------------------------------
def test_nb201_key_and_spec_are_inverse():
    assert nb201_key(nb201_spec("421211", 10).to_dict()) == "421211"
    for key in ("000000", "444444", "012340"):
        for classes in (10, 100, 120):
            spec = nb201_spec(key, classes)
            assert nb201_key(spec.to_dict()) == key and nb201_key(spec) == key
            assert spec.stages[0].ops == tuple(CELL_OPS[int(c)] for c in key)


def test_nb201_key_is_none_for_any_other_network():
    data = nb201_spec("421211", 10).to_dict()
    mixed = {**data, "stages": [*data["stages"][:2], {**data["stages"][2], "ops": ["none"] * 6}]}
    narrower = {**data, "stages": [{**s, "width": s["width"] // 2} for s in data["stages"]]}
    deeper = {**data, "stages": [{**s, "depth": 6} for s in data["stages"]]}
    basic = ArchitectureSpec(stages=(StageSpec(depth=1, width=8),)).to_dict()
    for other in (mixed, narrower, deeper, basic, {**data, "stem_width": 8}, {"stages": "x"}):
        assert nb201_key(other) is None


@pytest.mark.parametrize("key", ["42121", "4212111", "421215", "42121a", 421211])
def test_nb201_spec_refuses_a_bad_key(key):
    with pytest.raises(ValueError, match="`key` got .*allowed: 6 digits 0-4"):
        nb201_spec(key, 10)


# -- the preset -----------------------------------------------------------------------------
def test_the_preset_asks_the_six_edges_and_is_a_15625_point_grid():
    space = load_space("nasbench201")
    assert space.labels() == list(CELL_EDGES)
    grid = space.grid()
    assert list(grid) == list(CELL_EDGES) and all(v == list(CELL_OPS) for v in grid.values())
    assert math.prod(len(v) for v in grid.values()) == 15_625
    assert "NAS-Bench-201" in space.description
    assert space.constraints == {"max_params": None, "max_flops": None}


def test_the_preset_suggests_nasbench201s_network_and_finds_it_again():
    space = load_space("nasbench201")
    params = dict(zip(CELL_EDGES, EXAMPLE, strict=True))
    spec = space.suggest(optuna.trial.FixedTrial(params), in_channels=3, num_classes=10)
    assert all(s.block == "cell" and s.ops == EXAMPLE for s in spec.stages)
    assert spec.arch_id == nb201_spec("421211", 10).arch_id
    assert nb201_key(spec.to_dict()) == "421211" and n_params(spec) == 129_306
    assert space.params_for(spec) == params
    assert space.params_for(nb201_spec("034120", 120)) == dict(
        zip(CELL_EDGES, [CELL_OPS[int(c)] for c in "034120"], strict=True))
    different = nb201_spec("421211", 10).to_dict()
    different["stages"][2]["ops"] = ["none"] * 6  # one cell per network: not in the space
    assert space.params_for(ArchitectureSpec.from_dict(different)) is None


CELL_SPACE = """
name: cells
stem_width: 8
cell:
  "1<-0": [none, nor_conv_3x3]
  "2<-0": skip_connect
  "2<-1": [avg_pool_3x3, nor_conv_1x1]
  "3<-0": none
  "3<-1": skip_connect
  "3<-2": nor_conv_3x3
stages:
  - {depth: 1, width: 8, block: [basic, cell], skip: [identity, none]}
  - {depth: 1, width: 16, stride: 2, block: cell}
"""


def test_a_space_mixes_cells_with_other_blocks_and_asks_only_varied_edges(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text(CELL_SPACE)
    space = load_space(str(path))
    assert space.labels() == ["stage1.block", "stage1.skip", "1<-0", "2<-1"]
    assert space.grid() is None  # a cell first stage asks no skip
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=3, num_classes=5)
        assert space.params_for(spec) == trial.params
        assert ("stage1.skip" in trial.params) == (spec.stages[0].block == "basic")
        assert spec.stages[1].ops[CELL_EDGES.index("3<-2")] == "nor_conv_3x3"
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d["cell"].pop("3<-2"), r"`cell.3<-2` got None; allowed: .*required: every edge"),
        (lambda d: d["cell"].update({"4<-0": "none"}), r"`cell.4<-0` got 'none'; did you mean `3<-0`\? allowed: an edge"),
        (lambda d: d["cell"].update({"1<-0": ["none", "conv"]}), r"`cell.1<-0\[1\]` got 'conv'"),
        (lambda d: d.pop("cell"), r"`stages\[0\].block` got \['cell'\]; allowed: a cell only with"),
        (lambda d: d["shared"].update(block="basic"), r"`cell` got .*allowed: no `cell` where"),
        (lambda d: d["stages"][0].update(skip="none"), r"`stages\[0\].skip` got 'none'; allowed: identity"),
        (lambda d: d["stages"][0].update(ops=["none"] * 6), r"`stages\[0\].ops` .*top-level `cell`"),
        (lambda d: d.update(cell=5), r"`cell` got 5; allowed: a mapping of the edges"),
    ],
)
def test_bad_cell_spaces_are_refused_naming_the_key(edit, pattern):
    data = yaml.safe_load(Path(load_space("nasbench201").source).read_text(encoding="utf-8"))
    edit(data)
    with pytest.raises(SpaceError, match=pattern):
        SearchSpace.from_dict(data, source="nb.yaml")
