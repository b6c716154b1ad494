"""User-facing errors: one readable line, no traceback, a non-zero exit."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a flag, a file, a URL); the CLI prints it as one line."""


def mask_url(url: str) -> str:
    """The URL with its password and secret parameters replaced by ***, for logs, errors and
    records: `db.engine.display_url`, the one masking function (SQLAlchemy loads on use)."""
    from db.engine import display_url

    return display_url(url)


def one_line(exc: BaseException) -> str:
    """What a failed command records: a user or store error's own words, else the type and
    message, on one line."""
    from db import StoreError

    text = str(exc) if isinstance(exc, UserError | StoreError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:2000]
