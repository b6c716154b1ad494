"""What every `nas` sub-command module shares: consoles, the --storage option, error handling."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import typer
from rich.console import Console

from nas.errors import UserError

console = Console()
err_console = Console(stderr=True)

DEFAULT_STORAGE = "sqlite:///nas.db"
StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage", "-s", envvar="NAS_STORAGE",
        help="Database URL: sqlite:///file.db or postgresql://user:pass@host:5432/db.",
    ),
]


def user_errors(func):
    """Turn errors a user can fix into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from db import StoreError

        try:
            return func(*args, **kwargs)
        except (UserError, StoreError) as exc:
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def open_store(url: str):
    from db import Store

    return Store(url)


def quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created...") and experimental-feature warnings say
    nothing a user of `nas` can act on; our own output covers what happened."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
