"""User-facing errors: one readable line, no traceback, a non-zero exit."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a flag, a file, a URL); the CLI prints it as one line."""


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, errors and records."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy understands: mask by hand
        head, sep, tail = url.partition("://")
        if sep and "@" in tail:
            cred, _, host = tail.rpartition("@")
            user = cred.split(":", 1)[0]
            return f"{head}://{user}:***@{host}" if ":" in cred else url
        return url
