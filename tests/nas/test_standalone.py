"""model.py is the builder's own source: for every family it builds the same network."""

from __future__ import annotations

import sys
import types
import uuid

import pytest
import torch

from nas.standalone import check_imports, render
from search_spaces import build_model, zoo
from search_spaces.spec import ArchitectureSpec, StageSpec


def _load(source: str) -> types.ModuleType:
    name = f"_model_py_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        exec(compile(source, "model.py", "exec"), module.__dict__)  # noqa: S102 - our own text
    finally:
        sys.modules.pop(name, None)
    return module


@pytest.mark.parametrize("name", zoo.names())
def test_model_py_lays_out_every_zoo_model_as_the_builder_does(name):
    spec = zoo.get(name)
    source = render(spec)
    check_imports(source)
    module = _load(source)
    with torch.device("meta"):
        ours = {n: tuple(p.shape) for n, p in build_model(spec).named_parameters()}
        theirs = {n: tuple(p.shape) for n, p in module.build().named_parameters()}
    assert theirs == ours


SMALL = {
    "regnet": ArchitectureSpec(
        stages=(zoo.regnet_stage(1, 16, 8), zoo.regnet_stage(2, 24, 8)),
        stem="regnet", stem_width=8, se_ratio=0.25, se_position="inner", num_classes=5,
    ),
    "vit": ArchitectureSpec(
        stages=(StageSpec(depth=2, width=16, block="transformer", heads=2),),
        stem="patch", patch_size=2, stem_width=16, pos_embed=4, pool="token", num_classes=5,
    ),
    "hybrid": ArchitectureSpec(
        stages=(
            StageSpec(depth=2, width=4, block="dense", expansion=2),
            StageSpec(depth=1, width=16, stride=2, block="convnext", skip="gated"),
            StageSpec(depth=1, width=16, block="transformer", heads=4),
        ),
        stem_width=8, layer_scale=0.1, drop_path=0.2, pos_embed=2, num_classes=5,
    ),
    # NAS-Bench-201's cell: every op, a reduction block, and its conv-BN stem.
    "cell": ArchitectureSpec(
        stages=(
            StageSpec(depth=1, width=8, block="cell", ops=(
                "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none",
                "nor_conv_3x3")),
            StageSpec(depth=2, width=16, stride=2, block="cell", ops=(
                "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none",
                "nor_conv_3x3")),
        ),
        stem_width=8, num_classes=5,
    ),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_py_computes_what_the_builder_computes(name):
    spec = SMALL[name]
    module = _load(render(spec))
    torch.manual_seed(0)
    ours = build_model(spec).eval()
    theirs = module.build()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))
