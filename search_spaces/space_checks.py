"""What only the whole space shows: every sample builds, and `zero_pad` never shrinks channels."""

from __future__ import annotations

import itertools
import math

from search_spaces.space_schema import Choice, SpaceError
from search_spaces.spec import BLOCK_FIELDS, StageSpec

# Enumerations done at load time to prove every sample builds; past this we trust suggest().
MAX_CHECKED_COMBINATIONS = 100_000
Stage = dict[str, Choice]


def check_samples(source: str, globals_: Stage, shared: Stage, stages: list[Stage]) -> None:
    """Run after the `SpaceFile` models passed; raises SpaceError naming `source` and the key.

    Args:
        source: the space's file, for messages.
        globals_: the top-level choices; shared: those of `shared`; stages: each stage's own.
    """
    _check_stages(source, shared, stages)
    _check_channels(source, globals_, shared, stages)


def _check_stages(source: str, shared: Stage, stages: list[Stage]) -> None:
    """Every per-stage combination of block, width, skip and the block's own fields is a
    valid StageSpec (e.g. bottleneck groups divide the inner width, heads divide a
    transformer's width, convnext and transformer blocks get a skip they take). A cell stage
    builds at every width: its skip is always identity, its ops checked by the schema."""
    for i, stage in enumerate(stages):
        c = {**stage, **shared}
        for block in c["block"].values:
            if block == "cell":
                continue
            keys = ("width", "skip", *BLOCK_FIELDS[block])
            if math.prod(len(c[k].values) for k in keys) > MAX_CHECKED_COMBINATIONS:
                continue
            for combo in itertools.product(*(c[k].values for k in keys)):
                values = dict(zip(keys, combo, strict=True))
                try:
                    StageSpec(depth=1, block=block, **values)
                except ValueError as exc:
                    shown = ", ".join(f"{k}={v}" for k, v in values.items())
                    raise SpaceError(
                        f"{source}: `stages[{i}]` can sample an invalid {block} "
                        f"stage ({shown}): {exc}"
                    ) from None


def _check_channels(source: str, globals_: Stage, shared: Stage, stages: list[Stage]) -> None:
    """No sample puts `zero_pad` where channels shrink (it cannot remove channels).

    Propagates the set of reachable channel counts stage by stage, for each combination
    of the values that every stage shares (stem width, shared fields).
    """
    shared_keys = [
        k
        for k in ("width", "block", "expansion", "skip", "depth", "stride", "compression")
        if k in shared
    ]
    outer = list(
        itertools.product(
            globals_["stem"].values,
            globals_["stem_width"].values,
            *(shared[k].values for k in shared_keys),
        )
    )
    if len(outer) > MAX_CHECKED_COMBINATIONS:
        return
    for stem, stem_width, *shared_values in outer:
        picked = {k: Choice((v,)) for k, v in zip(shared_keys, shared_values, strict=True)}
        reachable: set[int | None] = {None if stem == "none" else stem_width}
        for i, stage in enumerate(stages):
            c = {**stage, **picked}
            outs: set[int | None] = set()
            combos = itertools.product(
                c["width"].values, c["block"].values, c["expansion"].values, c["skip"].values
            )
            for width, block, expansion, skip in combos:
                branch = width * (expansion if block == "bottleneck" else 1)
                resnet = block in ("basic", "bottleneck")
                for channels in reachable:
                    if resnet and skip == "zero_pad" and channels is not None and branch < channels:
                        raise SpaceError(
                            f"{source}: `stages[{i}].skip` can be 'zero_pad' where "
                            f"channels shrink ({channels} -> {branch}); allowed: zero_pad "
                            "only where channels never shrink (make widths non-decreasing "
                            "or share the skip/block choice across stages)"
                        )
                    outs.update(_outs(c, block, skip, branch, channels))
                if len(outs) * len(reachable) > MAX_CHECKED_COMBINATIONS:
                    return
            reachable = outs


def _outs(c: Stage, block: str, skip: str, branch: int, channels: int | None) -> set[int | None]:
    """Channel counts a stage can hand on, entered with `channels` (None: unknown)."""
    if block == "dense":
        entered = {
            None if channels is None else (int(channels * r) if stride == 2 else channels)
            for stride in c["stride"].values
            for r in c["compression"].values
        }
    elif block in ("basic", "bottleneck") and skip == "dense":
        entered = {channels}
    else:
        return {branch}
    return {
        None if e is None else e + depth * branch for e in entered for depth in c["depth"].values
    }
