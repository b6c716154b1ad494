"""What a residual network is: spec, blocks, builder, cost, search spaces and the zoo.

`search_spaces.spec` is plain data (stdlib only); the torch-backed names below load lazily so
that `import search_spaces.spec` (the store does this) never pulls torch in.
"""

from __future__ import annotations

import importlib
from typing import Any

from search_spaces.spec import (
    BLOCK_TYPES,
    SKIP_TYPES,
    STEM_TYPES,
    ArchitectureSpec,
    StageSpec,
)

_LAZY = {
    "build_model": "search_spaces.builder",
    "Complexity": "search_spaces.cost",
    "complexity": "search_spaces.cost",
    "MemoryEstimate": "search_spaces.cost",
    "training_memory": "search_spaces.cost",
    "SearchSpace": "search_spaces.space",
    "SpaceError": "search_spaces.space",
    "load_space": "search_spaces.space",
    "list_spaces": "search_spaces.space",
    "zoo": "search_spaces.zoo",
    "morph_plan": "search_spaces.morph",
    "morph_weights": "search_spaces.morph",
}

__all__ = [
    "ArchitectureSpec",
    "StageSpec",
    "BLOCK_TYPES",
    "SKIP_TYPES",
    "STEM_TYPES",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")
    mod = importlib.import_module(module)
    return mod if name == "zoo" else getattr(mod, name)
