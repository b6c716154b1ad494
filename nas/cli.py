"""The `nas` command: search, inspect, export and serve residual-network searches."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli_common import (
    DEFAULT_STORAGE,
    StorageOpt,
    console,
    err_console,
    open_store,
    quiet_optuna,
    user_errors,
)
from nas.cli_outputs import analyze, export_cmd, retrain
from nas.cli_pool import pool_app
from nas.errors import UserError

app = typer.Typer(
    name="nas",
    help=(
        "resnas: search residual network topologies with Optuna, train candidates on Ray "
        "with Lightning, keep every result in SQL.\n\n"
        "Start with `nas search` (a real search on the digits data), then `nas export STUDY`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(pool_app, name="pool")


# -- search -------------------------------------------------------------------------------------
@app.command()
@user_errors
def search(
    config_file: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file with any of these options (flags override it).")] = None,
    study: Annotated[str | None, typer.Option(help="Study name; the same name resumes it.  [default: resnas]")] = None,
    storage: Annotated[str | None, typer.Option("--storage", "-s", envvar="NAS_STORAGE", help="Database URL.  [default: sqlite:///nas.db]")] = None,
    space: Annotated[str | None, typer.Option(help="Preset name (see `nas spaces`) or a YAML file.  [default: resnet]")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials the study should hold in total.  [default: 20]")] = None,
    workers: Annotated[int | None, typer.Option(help="Trials in flight at once.  [default: CPU slots]")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per trial (the fidelity).")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster (HOST:PORT, or auto: the one `nas pool up` started here) instead of starting a Ray of its own.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler, for reproducible proposals.")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe | random | gp | nsga2 | qmc | grid | evolution.  [default: tpe]")] = None,
    sampler_options: Annotated[str | None, typer.Option(help="Sampler options as key=value,...  evolution: population, sample_size, mutation (one | per_param); tpe: n_startup_trials.  [default: population=20,sample_size=5,mutation=one; n_startup_trials=8]")] = None,
    pruner: Annotated[str | None, typer.Option(help="asha | hyperband | median | none.  [default: asha when epochs > 1]")] = None,
    objectives: Annotated[str | None, typer.Option(help="accuracy, or accuracy plus costs: accuracy,params | accuracy,flops | accuracy,latency.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop proposing after this many seconds.")] = None,
    max_compute_hours: Annotated[float | None, typer.Option(help="Stop proposing after this much summed trial time.")] = None,
    max_params: Annotated[int | None, typer.Option(help="Never train a candidate with more parameters.")] = None,
    max_flops: Annotated[int | None, typer.Option(help="Never train a candidate with more multiply-adds per image.")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries of a trial whose worker or node died.  [default: 2]")] = None,
    enqueue: Annotated[str | None, typer.Option(help="Comma-separated zoo names or architecture.json files to try first.")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs reserved per trial.  [default: 1]")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial; fractions share a GPU.  [default: 0]")] = None,
    dataset: Annotated[str | None, typer.Option(help="digits | npz:PATH | cifar10 | cifar100 | mnist | fashion_mnist | svhn.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where datasets live.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    replay: Annotated[str | None, typer.Option(help="Answer trials from a table of known results instead of training (simulated time, no Ray): nasbench201:cifar10 | nasbench201:cifar100 | nasbench201:imagenet16-120 | a curve table file (.json.gz) | study:NAME. The space defaults to the table's.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON line per finished trial, then a JSON summary.")] = False,
) -> None:
    """Run (or resume) a search: propose, train on Ray, record, prune."""
    from nas.config import build_config, load_config_file

    file_values = load_config_file(config_file) if config_file else {}
    flags = {
        "study": study, "storage": storage, "space": space, "trials": trials, "workers": workers,
        "ray_address": ray_address, "seed": seed, "sampler": sampler, "pruner": pruner,
        "sampler_options": sampler_options,
        "objectives": objectives, "timeout": timeout, "max_compute_hours": max_compute_hours,
        "max_params": max_params, "max_flops": max_flops, "max_retries": max_retries,
        "enqueue": enqueue, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
        "train": {"epochs": epochs, "dataset": dataset, "data_dir": data_dir,
                  "batch_size": batch_size, "lr": lr},
    }
    flags["replay"] = replay
    if (replay or file_values.get("replay")) and not (space or file_values.get("space")):
        from nas.config import SearchConfig
        from nas.tables import table_space

        flags["space"] = table_space(replay or file_values["replay"], storage=storage
                                     or file_values.get("storage")
                                     or SearchConfig.model_fields["storage"].default)
    source = str(config_file) if config_file else "flags"
    config = build_config(file_values, flags, source)
    quiet_optuna()
    from nas.progress import JsonProgress, QuietProgress, RichProgress
    from nas.search import run_search

    progress = JsonProgress() if json_lines else QuietProgress() if quiet else RichProgress(console)
    try:
        summary = run_search(config, progress=progress)
    except KeyboardInterrupt:  # pragma: no cover - interrupted before the loop began
        err_console.print("interrupted before any trial started")
        raise typer.Exit(130) from None
    if json_lines:
        print(json.dumps({"event": "summary", **summary.__dict__}, default=str))
    else:
        _print_summary(summary, config)
    if summary.status == "interrupted":
        err_console.print(
            f"interrupted: finished trials are saved; in-flight ones are marked and will be "
            f"retried. Resume with the same command (study `{config.study}`)."
        )
        raise typer.Exit(130)


def _print_summary(summary: Any, config: Any) -> None:
    c = summary.counts
    console.print(
        f"\n[bold]{summary.study}[/]: {summary.status} in {summary.wall_s:.1f}s "
        f"(trial compute {summary.compute_s:.1f}s) — this run: {c.get('complete', 0)} complete, "
        f"{c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed, {c.get('cached', 0)} answered "
        f"from the cache, {c.get('infeasible', 0)} over budget; {summary.trials_in_study} trials "
        "in the study",
        highlight=False,
        soft_wrap=True,
    )
    if not summary.best:
        console.print("no complete trial yet")
        return
    label = "best" if len(summary.best) == 1 else f"Pareto front ({len(summary.best)} trials)"
    console.print(f"[bold]{label}[/]:")
    for b in summary.best:
        console.print(
            f"  trial {b['trial']}: val_accuracy {b['val_accuracy']:.4f}, {b['params']:,} params, "
            f"{b['flops']:,} MACs  {b['summary']}  (arch {b['arch_id']})",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"export it: nas export {summary.study} --storage {summary.storage} --out exports/{summary.study}",
        highlight=False,
    )



# Defined in nas.cli_outputs, registered here: `nas --help` lists commands in the order they
# are registered, and this is where they always stood.
app.command("export")(export_cmd)
app.command()(retrain)
app.command()(analyze)

# -- dashboard ----------------------------------------------------------------------------------
@app.command()
@user_errors
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to bind. Only 127.0.0.1 unless you mean it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Serve optuna-dashboard for the storage (127.0.0.1 only unless --host says otherwise)."""
    from nas.errors import mask_url
    from nas.study import open_storage

    optuna_storage = open_storage(storage)  # validates the URL, creates Optuna's tables
    open_store(storage).close()  # and ours (the dashboard itself creates none)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[bold yellow]warning:[/] serving on {host}: optuna-dashboard has no authentication "
            "and its UI can delete studies. Put it behind an authenticating proxy."
        )
    from optuna_dashboard import run_server

    console.print(f"optuna-dashboard for {mask_url(storage)} on http://{host}:{port}/ (Ctrl-C stops)")
    run_server(optuna_storage, host=host, port=port)


# -- spaces, show -------------------------------------------------------------------------------
@app.command()
@user_errors
def spaces() -> None:
    """List the packaged search spaces."""
    from rich.table import Table

    from search_spaces import list_spaces

    table = Table("space", "description")
    for name, description in list_spaces():
        table.add_row(name, description)
    console.print(table)


@app.command()
@user_errors
def show(
    arch: Annotated[str, typer.Argument(help="A zoo name (resnet50, resnet20, ...) or an architecture.json.")],
    input_size: Annotated[int, typer.Option(help="Input resolution for FLOPs (0: the size a bundle's architecture.json records, else the zoo model's own: 224, 32 or 8).")] = 0,
) -> None:
    """Print an architecture's stage table with params and FLOPs per stage."""
    from search_spaces import ArchitectureSpec, zoo
    from search_spaces.describe import render_text

    path = Path(arch)
    size = (input_size, input_size) if input_size else None
    try:
        if path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise UserError(f"architecture file `{arch}` does not exist")
            data = json.loads(path.read_text())
            spec = ArchitectureSpec.from_dict(data.get("spec", data))
            recorded = data.get("input") if isinstance(data.get("input"), dict) else {}
            if size is None and recorded.get("height") and recorded.get("width"):
                size = (int(recorded["height"]), int(recorded["width"]))  # what it trained on
            native = zoo.default_input_size(spec)
        else:
            spec = zoo.get(arch)
            native = zoo.input_size(arch)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{arch}: {exc}") from None
    console.print(render_text(spec, size or (native, native)), highlight=False)


# -- store views --------------------------------------------------------------------------------
@app.command()
@user_errors
def trials(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = DEFAULT_STORAGE,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    state: Annotated[list[str] | None, typer.Option(help="Only these states (repeatable): complete, pruned, failed.")] = None,
    top: Annotated[int | None, typer.Option(help="Only the K best by validation accuracy.")] = None,
) -> None:
    """List a study's trials from the store."""
    from nas.store_commands import print_trials

    if fmt not in ("table", "csv", "json"):
        raise UserError(f"`--format` got {fmt!r}; allowed: table | csv | json")
    print_trials(open_store(storage), study, fmt=fmt, states=state, top=top)


@app.command()
@user_errors
def status(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """One line per study in the store: trials by state, best accuracy, running searches."""
    from nas.store_commands import print_status

    print_status(open_store(storage))


@app.command()
@user_errors
def best(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """The best trial, or the Pareto front of a multi-objective study."""
    import optuna

    quiet_optuna()

    from nas.study import best_trials, open_storage

    store = open_store(storage)
    try:
        st = optuna.load_study(study_name=study, storage=open_storage(storage))
    except KeyError:
        known = ", ".join(s["name"] for s in store.studies()) or "none"
        raise UserError(f"unknown study `{study}`; studies in the store: {known}") from None
    objectives = st.user_attrs.get("resnas", {}).get("objectives", ["accuracy"])
    rows = best_trials(st, store, objectives)
    if not rows:
        raise UserError(f"study `{study}` has no complete trial yet")
    for b in rows:
        console.print(
            f"trial {b['trial']}: val_accuracy {b['val_accuracy']:.4f}, {b['params']:,} params, "
            f"{b['flops']:,} MACs, latency {b['latency_ms'] or 0:.2f} ms  {b['summary']}",
            highlight=False,
        )


@db_app.command("upgrade")
@user_errors
def db_upgrade(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """Apply the store's migrations (also done automatically on first use)."""
    from db import current_revision, upgrade
    from nas.errors import mask_url

    upgrade(storage)
    console.print(f"{mask_url(storage)}: schema at revision {current_revision(storage)}")


def main() -> None:
    from nas.cluster import token_auth

    token_auth()  # before anything imports Ray (it reads the auth mode at import)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
