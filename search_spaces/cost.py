"""Parameters and multiply-adds of a spec, computed from the data alone (no model is built)."""

from __future__ import annotations

from typing import Any, NamedTuple

from search_spaces.blocks import Stem
from search_spaces.builder import STAGES
from search_spaces.layers import Cost
from search_spaces.spec import ArchitectureSpec


class Complexity(NamedTuple):
    """`params`: trainable parameters; `flops`: multiply-adds (MACs) of one image's forward."""

    params: int
    flops: int


def _size(input_size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(input_size, bool):
        raise ValueError(f"`input_size` got {input_size!r}; allowed: an int or (height, width)")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if (
        not isinstance(input_size, (tuple, list))
        or len(input_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_size)
    ):
        raise ValueError(
            f"`input_size` got {input_size!r}; allowed: a positive int or (height, width)"
        )
    return int(input_size[0]), int(input_size[1])


def stage_costs(spec: ArchitectureSpec, input_size: tuple[int, int] | int) -> list[dict[str, Any]]:
    """Per-part costs: the stem (`stage` 0), each stage (1..n) and the head (`stage` None).

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int for a square image.

    Returns:
        One dict per part: `stage`, `name`, `in_channels`, `out_channels`, `resolution`
        (output `(h, w)`), `depth`, `params`, `flops`.
    """
    h, w = _size(input_size)
    rows: list[dict[str, Any]] = []
    stem = Stem.cost(
        spec.stem, spec.in_channels, spec.stem_width, spec.stem_preact, h, w, spec.patch_size
    )
    rows.append(_row(0, "stem", spec.in_channels, spec.stem_out, None, stem))
    h, w = stem.height, stem.width
    for i, (stage, in_ch) in enumerate(
        zip(spec.stages, spec.stage_in_channels(), strict=True), start=1
    ):
        c = STAGES[stage.block].cost(spec, i - 1, in_ch, h, w)
        rows.append(_row(i, f"stage{i}", in_ch, stage.out_channels(in_ch), stage.depth, c))
        h, w = c.height, c.width
    out = spec.out_channels
    final_norm = 2 * out if spec.final_norm else 0
    head = Cost(final_norm + out * spec.num_classes + spec.num_classes, out * spec.num_classes, 1, 1)
    rows.append(_row(None, "head", out, spec.num_classes, None, head))
    return rows


def _row(stage: int | None, name: str, cin: int, cout: int, depth: int | None, c: Cost) -> dict:
    return {
        "stage": stage,
        "name": name,
        "in_channels": cin,
        "out_channels": cout,
        "resolution": (c.height, c.width),
        "depth": depth,
        "params": c.params,
        "flops": c.flops,
    }


def complexity(spec: ArchitectureSpec, input_size: tuple[int, int] | int) -> Complexity:
    """Trainable parameters and multiply-adds of one forward pass of one image.

    Counts every conv, linear, norm, gate, layer-scale, token and position parameter
    exactly; FLOPs are the multiply-adds of convs, linears and attention's two matrix
    products (what `FlopCounterMode` counts, halved), not of norms, activations, pooling,
    additions or a resized position embedding.

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int for a square image.
    """
    rows = stage_costs(spec, input_size)
    return Complexity(sum(r["params"] for r in rows), sum(r["flops"] for r in rows))
