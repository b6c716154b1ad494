"""JSON files a user hands us (architecture.json, recipe.json, metrics.json), read with
bounds: a size cap, and a nesting cap well above any real file (Python's own parser would
otherwise die with RecursionError on a hostile one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.errors import UserError

MAX_JSON_BYTES = 16 * 2**20  # an architecture.json of ResNet-152 is ~3 KB
MAX_JSON_DEPTH = 32  # a spec nests 4 levels


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`; UserError naming the file for anything unreadable or
    beyond `MAX_JSON_BYTES` / `MAX_JSON_DEPTH`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {size:,} bytes; JSON files here are at most "
                            f"{MAX_JSON_BYTES:,}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise UserError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise UserError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
    return value
