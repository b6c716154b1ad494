"""Errors of the workers package that callers may want to catch (stdlib only)."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset cannot be loaded or is malformed; the message says what to fix."""
