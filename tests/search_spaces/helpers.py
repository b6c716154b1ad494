"""Small specs of every kind for the search_spaces tests."""

from __future__ import annotations

from search_spaces.spec import ArchitectureSpec, StageSpec


def small_spec(skip: str = "identity", block: str = "basic", **options) -> ArchitectureSpec:
    """Two stages (the second strided and wider) so every shortcut kind is exercised."""
    stage_options = {"expansion": 2} if block == "bottleneck" else {}
    values = {"stem": "cifar", "stem_width": 8, "in_channels": 3, "num_classes": 5, **options}
    return ArchitectureSpec(
        stages=(
            StageSpec(depth=2, width=8, stride=1, block=block, skip=skip, **stage_options),
            StageSpec(depth=2, width=16, stride=2, block=block, skip=skip, **stage_options),
        ),
        **values,
    )
