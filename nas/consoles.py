"""Rich consoles for `nas` output: whole values when piped or redirected (rich would cut a
table at 80 columns in a file), the terminal's width otherwise."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console

PIPED_WIDTH = 10_000


def console_for(file: TextIO | None = None, *, stderr: bool = False) -> Console:
    """A console on `file` (default stdout, or stderr)."""
    plain = Console(file=file, stderr=stderr)
    return plain if plain.is_terminal else Console(file=file, stderr=stderr, width=PIPED_WIDTH)
