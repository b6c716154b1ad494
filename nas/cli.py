"""The `nas` command: search, inspect, export and serve residual-network searches."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nas import cli_store
from nas.cli_common import (
    CLUSTER,
    DEFAULT_STORAGE,
    OUTPUT,
    SEARCH,
    TRAINING,
    ArtifactsOpt,
    StorageOpt,
    command,
    console,
    err_console,
    new_app,
    open_store,
    quiet_optuna,
    shown_default,
    user_errors,
)
from nas.cli_outputs import analyze, export_cmd, retrain
from nas.cli_pool import pool_app

app = new_app(
    name="nas",
    help=(
        "resnas: search residual network topologies with Optuna, train candidates on Ray "
        "with Lightning, keep every result in SQL.\n\n"
        "Start with `nas search` (a real search on the digits data), then `nas export STUDY`."
    ),
    epilog=(
        "[bold]Examples[/]\n\n  $ nas search --trials 12 --epochs 8\n\n"
        "  $ nas status\n\n  $ nas export resnas --out exports/best"
    ),
)
db_app = new_app(help="Manage the store's schema.")
app.add_typer(db_app, name="db")
app.add_typer(pool_app, name="pool")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"resnas {version('resnas')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          metavar="", help="Print the version and exit.")] = False,
) -> None:
    """(`--version`; the group's help is `app`'s.)"""


def _opt(*names: str, help: str, panel: str, metavar: str | None = None,
         default: object = None, **kw: Any) -> Any:
    """An option of `nas search`; `default` is what applies when neither flag nor file sets it."""
    text = help + (shown_default(default) if default is not None else "")
    return typer.Option(*names, help=text, rich_help_panel=panel, metavar=metavar, **kw)


# -- search -------------------------------------------------------------------------------------
@command(app, examples=(
    "nas search --trials 12 --epochs 8                # the digits data, the resnet space",
    "nas search --study big --space resnet_bottleneck --dataset npz:data.npz --epochs 20",
    "nas search --objectives accuracy,params --trials 30   # a Pareto front of size vs accuracy",
    "nas search --replay nasbench201:cifar10 --trials 100  # answers from a table, no training",
    "nas search --config search.yaml --ray-address auto    # on the cluster `nas pool up` runs",
))
@user_errors
def search(
    config_file: Annotated[Path | None, _opt("--config", "-c", panel=SEARCH, metavar="FILE.yaml", default="none", help="YAML file with any of these options (flags override it; `train:` holds the training ones).")] = None,
    study: Annotated[str | None, _opt(panel=SEARCH, metavar="NAME", default="resnas", help="Study name; the same name resumes it.")] = None,
    storage: Annotated[str | None, _opt("--storage", "-s", panel=SEARCH, metavar="URL", envvar="NAS_STORAGE", default="sqlite:///nas.db", help="Database URL: sqlite:///file.db or postgresql://user:pass@host/db.")] = None,
    space: Annotated[str | None, _opt(panel=SEARCH, metavar="NAME|FILE.yaml", default="resnet", help="Preset (see `nas spaces`) or a space YAML file.")] = None,
    trials: Annotated[int | None, _opt(panel=SEARCH, metavar="N", default=20, help="Trials the study holds when this run ends: a new study runs N, a resume only the missing ones. Candidates over --max-params/--max-flops are skipped without training and not counted.")] = None,
    sampler: Annotated[str | None, _opt(panel=SEARCH, metavar="NAME", default="tpe", help="tpe | random | gp | nsga2 | qmc | grid | evolution.")] = None,
    sampler_options: Annotated[str | None, _opt(panel=SEARCH, metavar="KEY=VALUE,...", default="population=20,sample_size=5,mutation=one for evolution; n_startup_trials=8 for tpe", help="Sampler options. evolution: population, sample_size, mutation (one | per_param | grow: a depth or width grows, for --inherit); tpe: n_startup_trials.")] = None,
    pruner: Annotated[str | None, _opt(panel=SEARCH, metavar="NAME", default="asha when epochs > 1, else none", help="asha | hyperband | median | none. A rung prunes only once 6 trials reached it.")] = None,
    objectives: Annotated[str | None, _opt(panel=SEARCH, metavar="LIST", default="accuracy", help="accuracy, or accuracy plus costs: accuracy,params | accuracy,flops | accuracy,latency.")] = None,
    seed: Annotated[int | None, _opt(panel=SEARCH, metavar="N", default="none (random)", help="Seed of the sampler, for reproducible proposals.")] = None,
    max_params: Annotated[int | None, _opt(panel=SEARCH, metavar="N", default="the space's limit, else 100,000,000", help="Never train a candidate with more parameters.")] = None,
    max_flops: Annotated[int | None, _opt(panel=SEARCH, metavar="N", default="the space's limit", help="Never train a candidate with more multiply-adds per image.")] = None,
    timeout: Annotated[float | None, _opt(panel=SEARCH, metavar="SECONDS", default="none", help="Stop proposing after this many seconds.")] = None,
    max_compute_hours: Annotated[float | None, _opt(panel=SEARCH, metavar="HOURS", default="none", help="Stop proposing after this much summed trial time.")] = None,
    enqueue: Annotated[str | None, _opt(panel=SEARCH, metavar="NAMES|FILES", default="none", help="Comma-separated zoo names or architecture.json files to try first.")] = None,
    replay: Annotated[str | None, _opt(panel=SEARCH, metavar="TABLE", default="none (train)", help="Answer trials from a table of known results instead of training (simulated time, no Ray): nasbench201:cifar10 | nasbench201:cifar100 | nasbench201:imagenet16-120 | a curve table file (.json.gz) | study:NAME. The space defaults to the table's.")] = None,
    inherit: Annotated[bool | None, _opt("--inherit/--no-inherit", panel=SEARCH, metavar="", default="off", help="Grow, don't restart: start each candidate from the best trained architecture in the store (same data and recipe, any study) that it extends by blocks or width, with the parent's function preserved, and train it for --inherit-epochs.")] = None,
    inherit_epochs: Annotated[int | None, _opt(panel=SEARCH, metavar="N", default="a quarter of --epochs, at least 1", help="Epochs a candidate that inherits trains.")] = None,
    artifacts: Annotated[str | None, _opt(panel=SEARCH, metavar="DIR|s3://BUCKET/PREFIX", envvar="NAS_ARTIFACTS", default="where the store recorded, else beside a SQLite file, else ~/.local/share/resnas/artifacts", help="Where trained weights are kept (Optuna's artifact store; optuna-dashboard lists them per trial).")] = None,
    epochs: Annotated[int | None, _opt(panel=TRAINING, metavar="N", default="8, or the space's recipe", help="Training epochs per trial (the fidelity).")] = None,
    dataset: Annotated[str | None, _opt(panel=TRAINING, metavar="NAME", default="digits", help="digits | npz:PATH (see README, \"Your own data\") | cifar10 | cifar100 | mnist | fashion_mnist | svhn.")] = None,
    data_dir: Annotated[str | None, _opt(panel=TRAINING, metavar="DIR", default="~/.cache/resnas/data", help="Where the torchvision datasets live.")] = None,
    batch_size: Annotated[int | None, _opt(panel=TRAINING, metavar="N", default=64, help="Training batch size.")] = None,
    lr: Annotated[float | None, _opt(panel=TRAINING, metavar="RATE", default="0.1, or the space's recipe", help="Peak learning rate.")] = None,
    workers: Annotated[int | None, _opt(panel=CLUSTER, metavar="N", default="the CPU (or GPU) slots", help="Trials in flight at once.")] = None,
    ray_address: Annotated[str | None, _opt(panel=CLUSTER, metavar="HOST:PORT|auto", default="none: a Ray of its own, on this machine", help="Join this Ray cluster (auto: the one `nas pool up` started here).")] = None,
    cpus_per_trial: Annotated[float | None, _opt(panel=CLUSTER, metavar="N", default=1, help="CPUs reserved per trial.")] = None,
    gpus_per_trial: Annotated[float | None, _opt(panel=CLUSTER, metavar="N", default=0, help="GPUs per trial; fractions share a GPU.")] = None,
    max_retries: Annotated[int | None, _opt(panel=CLUSTER, metavar="N", default=2, help="Retries of a trial whose worker or node died.")] = None,
    quiet: Annotated[bool, _opt("--quiet", "-q", panel=OUTPUT, metavar="", help="Print only the summary.")] = False,
    json_lines: Annotated[bool, _opt("--json", panel=OUTPUT, metavar="", help="One JSON line per finished trial, then a JSON summary.")] = False,
    verbose: Annotated[bool, _opt("--verbose", "-v", panel=OUTPUT, metavar="", help="Also show Optuna's logs and warnings (workers keep Lightning's advice and Ray's logs to themselves).")] = False,
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
        "inherit": inherit, "inherit_epochs": inherit_epochs, "artifacts": artifacts,
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
    quiet_optuna(verbose=verbose)
    from nas.inputs import resolve_inputs
    from nas.progress import JsonProgress, QuietProgress, RichProgress

    inputs = resolve_inputs(config)  # a bad space, recipe or dataset: reported before torch loads
    if not (quiet or json_lines):
        from nas.errors import mask_url

        what = ("replaying " + config.replay) if config.replay else f"training on {inputs.recipe.dataset}"
        console.print(
            f"[bold]nas search[/] study [bold]{config.study}[/] in {mask_url(config.storage)}: "
            f"space {config.space}, {config.trials} trials in the study, sampler "
            f"{config.sampler}, {what} …", highlight=False, soft_wrap=True)
    progress = JsonProgress() if json_lines else QuietProgress() if quiet else RichProgress(console)
    from nas.search import run_search

    try:
        summary = run_search(config, progress=progress, inputs=inputs)
    except KeyboardInterrupt:  # pragma: no cover - interrupted before the loop began
        err_console.print("interrupted before any trial started")
        raise typer.Exit(130) from None
    if json_lines:
        print(json.dumps({"event": "summary", **summary.__dict__}, default=str))
    else:
        _print_summary(summary, config)
    if summary.status == "stopped":
        err_console.print(f"stopped by `nas stop`: every finished trial is saved. Resume with the "
                          f"same command (study `{config.study}`).", highlight=False)
    if summary.status == "interrupted":
        err_console.print(
            f"interrupted: finished trials are saved; in-flight ones are marked and will be "
            f"retried. Resume with the same command (study `{config.study}`)."
        )
        raise typer.Exit(130)


def _print_summary(summary: Any, config: Any) -> None:
    c = summary.counts
    skipped = c.get("infeasible", 0)
    console.print(
        f"\n[bold]{summary.study}[/]: {summary.status} in {summary.wall_s:.1f}s "
        f"(trial compute {summary.compute_s:.1f}s) — this run: {c.get('complete', 0)} complete, "
        f"{c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed"
        + (f" ({c['retried']} more lost and retried)" if c.get("retried") else "")
        + f", {c.get('cached', 0)} answered from the cache"
        + (f", {skipped} candidate(s) over budget skipped (never trained, not counted)"
           if skipped else "")
        + f"; the study counts {summary.counted} of {config.trials} trials",
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
command(app, "export", examples=(
    "nas export resnas --out exports/best",
    "nas export resnas --trial 7 --formats safetensors,onnx",
    "nas export resnas --pareto 1 --out exports/small   # a multi-objective study"))(export_cmd)
command(app, examples=("nas retrain resnas --seeds 3", "nas retrain resnas --top 5 --epochs 30",
                       "nas retrain exports/best/architecture.json"))(retrain)
command(app, examples=("nas analyze resnas --out report.html",
                       "nas analyze resnas --png figures/"))(analyze)

# -- dashboard ----------------------------------------------------------------------------------
@command(app, examples=("nas dashboard", "nas dashboard --storage sqlite:///nas.db --port 8081"))
@user_errors
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to bind. Only 127.0.0.1 unless you mean it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port.")] = 8080,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Serve optuna-dashboard for the storage (127.0.0.1 only unless --host says otherwise)."""
    from nas.errors import mask_url
    from nas.study import open_storage
    from nas.weights import Artifacts

    optuna_storage = open_storage(storage, retry_s=None)  # validates the URL, creates Optuna's tables
    store = open_store(storage)  # and ours (the dashboard itself creates none)
    try:
        # The trials' weights, which the dashboard lists and downloads from here.
        artifact_store = Artifacts.open(store.url, store, artifacts).backend
    finally:
        store.close()
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[bold yellow]warning:[/] serving on {host}: optuna-dashboard has no authentication "
            "and its UI can delete studies. Put it behind an authenticating proxy."
        )
    from optuna_dashboard import run_server

    console.print(f"optuna-dashboard for {mask_url(storage)} on http://{host}:{port}/ (Ctrl-C stops)")
    run_server(optuna_storage, host=host, port=port, artifact_store=artifact_store)


# -- spaces, show -------------------------------------------------------------------------------
@command(app, examples=("nas spaces", "nas search --space resnext"))
@user_errors
def spaces() -> None:
    """List the packaged search spaces."""
    from rich.table import Table

    from search_spaces import list_spaces

    table = Table("space", "description")
    for name, description in list_spaces():
        table.add_row(name, description)
    console.print(table)


# Defined in nas.cli_store (the store's views and study management), registered here.
for _func, _examples in (
    (cli_store.show, ("nas show resnet50", "nas show exports/best/architecture.json",
                      "nas show 6b9413116cf968da --storage sqlite:///nas.db",
                      "nas show resnas --trial 3")),
    (cli_store.trials, ("nas trials resnas", "nas trials resnas --state complete --top 5",
                        "nas trials resnas --format csv > trials.csv")),
    (cli_store.status, ("nas status", "nas status --storage postgresql://nas@db-host/nas")),
    (cli_store.best, ("nas best resnas",)),
    (cli_store.stop, ("nas stop resnas", "nas stop resnas --storage postgresql://nas@db-host/nas")),
    (cli_store.delete, ("nas delete old-study", "nas delete old-study --yes")),
):
    command(app, examples=_examples)(_func)


@command(db_app, "upgrade", examples=("nas db upgrade --storage postgresql://nas@db-host/nas",))
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
