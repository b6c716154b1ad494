"""What every `nas` sub-command module shares: consoles, the --storage option, error handling."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import typer
import typer.core

from nas.consoles import console_for
from nas.errors import UserError

console = console_for()
err_console = console_for(stderr=True)

CONTEXT = {"help_option_names": ["-h", "--help"]}
# Option groups of `nas search --help`.
SEARCH, TRAINING, CLUSTER, OUTPUT = "Search", "Training", "Cluster", "Output"


def shown_default(value: object) -> str:
    """Help-text suffix for an option whose default is decided later (None in the signature)."""
    return f"  \\[default: {value}]"


class _NoBoolMetavar:
    """Typer prints `<bool>` beside every flag, `--help` included; a flag takes no value."""

    def get_help_option(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_NoBoolMetavar, typer.core.TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:  # an argument's name says what it is; `<str>` adds nothing
            if param.param_type_name == "argument":
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]


class Group(_NoBoolMetavar, typer.core.TyperGroup):
    pass


def new_app(**kwargs: Any) -> typer.Typer:
    """A `typer.Typer` with the settings every `nas` command group shares."""
    return typer.Typer(cls=Group, context_settings=CONTEXT, no_args_is_help=True,
                       add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode="rich", **kwargs)


def command(app: typer.Typer, name: str | None = None, *, examples: tuple[str, ...] = (),
            **kwargs: Any):
    """`app.command` with `-h`, flags shown without a metavar and an "Examples" epilog."""
    epilog = None
    if examples:
        epilog = "[bold]Examples[/]\n\n" + "\n\n".join(f"  $ {e}" for e in examples)
    return app.command(name, cls=Command, epilog=epilog, **kwargs)

DEFAULT_STORAGE = "sqlite:///nas.db"
StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage", "-s", envvar="NAS_STORAGE",
        help="Database URL: sqlite:///file.db or postgresql://user:pass@host:5432/db.",
        metavar="URL",
    ),
]

ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts", envvar="NAS_ARTIFACTS", metavar="DIR|s3://BUCKET/PREFIX",
        help="Where trained weights are kept (Optuna's artifact store).  \\[default: where "
             "the store says they were saved, else beside a SQLite file, else "
             "~/.local/share/resnas/artifacts]",
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


def quiet_optuna(*, verbose: bool = False) -> None:
    """Optuna's INFO lines ("A new study created...") and its warnings (experimental
    features, a step reported twice after a retry) say nothing a user of `nas` can act on;
    our own output covers what happened. `verbose` keeps them."""
    import warnings

    import optuna

    if verbose:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna(\.|$)")
