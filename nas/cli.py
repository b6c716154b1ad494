"""The `nas` command: search, inspect, export and serve residual-network searches."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

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
pool_app = typer.Typer(
    help="Resident trial runners that stay warm between searches (join with --ray-address auto).",
    no_args_is_help=True,
)
app.add_typer(pool_app, name="pool")
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
    prefetch: Annotated[int | None, typer.Option(help="Trials queued behind each busy worker, so it starts the next at once.  [default: 1 while trials take under 20 s, else 0]")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per trial (the fidelity).")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster (e.g. 10.0.0.5:6379) instead of starting a local one.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler, for reproducible proposals.")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe | random | gp | nsga2 | qmc | grid.  [default: tpe]")] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON line per finished trial, then a JSON summary.")] = False,
) -> None:
    """Run (or resume) a search: propose, train on Ray, record, prune."""
    from nas.config import build_config, load_config_file

    file_values = load_config_file(config_file) if config_file else {}
    flags = {
        "study": study, "storage": storage, "space": space, "trials": trials, "workers": workers,
        "prefetch": prefetch,
        "ray_address": ray_address, "seed": seed, "sampler": sampler, "pruner": pruner,
        "objectives": objectives, "timeout": timeout, "max_compute_hours": max_compute_hours,
        "max_params": max_params, "max_flops": max_flops, "max_retries": max_retries,
        "enqueue": enqueue, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
        "train": {"epochs": epochs, "dataset": dataset, "data_dir": data_dir,
                  "batch_size": batch_size, "lr": lr},
    }
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


# -- export -------------------------------------------------------------------------------------
@app.command("export")
@user_errors
def export_cmd(
    study: Annotated[str, typer.Argument(help="Study to export from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the bundle.")] = Path("exports/model"),
    storage: StorageOpt = DEFAULT_STORAGE,
    trial: Annotated[int | None, typer.Option(help="Export this trial instead of the best.")] = None,
    pareto: Annotated[int | None, typer.Option(help="Export the K-th trial (0-based, by accuracy) of a multi-objective study's Pareto front.")] = None,
    metric: Annotated[str | None, typer.Option(help="Best by this run metric: val_accuracy | best_val_accuracy | val_loss | latency_ms | params | flops.  [default: val_accuracy]")] = None,
    formats: Annotated[str, typer.Option(help="Model formats to write (architecture/recipe/metrics JSON and README always): a subset of safetensors,model_py,onnx,pt2.")] = "safetensors,model_py,onnx,pt2",
) -> None:
    """Write the chosen trial as a bundle (safetensors, standalone model.py, ONNX, torch.export, model card), each format checked against the trained model."""
    from nas.export import FORMAT_FILES, export

    store = open_store(storage)
    report = export(store, study, out, trial=trial, pareto=pareto, metric=metric, formats=formats)
    acc = f"{report.val_accuracy:.4f}" if report.val_accuracy is not None else "-"
    source = "" if report.weights_from_run in (None, report.run_id) else f", weights of run {report.weights_from_run}"
    console.print(
        f"exported trial {report.trial} of `{study}` (val_accuracy {acc}, arch {report.arch_id}"
        f"{source}) to {report.out}/",
        highlight=False, soft_wrap=True,
    )
    for name in report.files:
        console.print(f"  {name}", highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    for fmt, diff in report.max_abs_diff.items():
        console.print(
            f"  parity {fmt:<11} {FORMAT_FILES[fmt]:<17} max |diff| = {diff:.3g} "
            f"(tolerance {report.tolerance[fmt]:g})",
            highlight=False, soft_wrap=True,
        )
    for fmt, why in report.skipped.items():
        console.print(f"  skipped {fmt}: {why}", highlight=False, soft_wrap=True)


# -- retrain ------------------------------------------------------------------------------------
@app.command()
@user_errors
def retrain(
    source: Annotated[str, typer.Argument(help="A study name (its best architecture), or an architecture.json (e.g. from an export bundle).")],
    epochs: Annotated[int | None, typer.Option(help="Training epochs per run (full fidelity).  [default: the recipe default, at least the search's]")] = None,
    seeds: Annotated[int, typer.Option(help="Runs per architecture, with seeds 0..S-1.")] = 3,
    top: Annotated[int | None, typer.Option(help="Retrain the K best distinct architectures of the study and check whether their ranking holds.")] = None,
    trial: Annotated[int | None, typer.Option(help="Retrain this trial's architecture (any state, e.g. pruned).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study to record the runs in.  [default: STUDY.retrain]")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting a local one.")] = None,
    workers: Annotated[int | None, typer.Option(help="Runs in flight at once.  [default: all, as Ray's CPUs allow]")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs reserved per run.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per run; fractions share a GPU.")] = 0.0,
) -> None:
    """Train the chosen architecture(s) at full fidelity with several seeds on Ray; record the runs (weights kept) in STUDY.retrain."""
    from nas.retrain import retrain as run_retrain

    store = open_store(storage)
    report = run_retrain(
        store, source, epochs=epochs, seeds=seeds, top=top, trial=trial, study=study,
        ray_address=ray_address, workers=workers, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, progress=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    console.print(
        f"\n[bold]{report.study}[/]: {len(report.runs)} run(s) of {report.epochs} epochs in "
        f"{report.wall_s:.1f}s",
        highlight=False, soft_wrap=True,
    )
    for a in report.archs:
        origin = a.retrain_of
        where = f"trial {origin['trial']}" if origin.get("trial") is not None else origin.get("file", "file")
        search = (
            f"; search: {a.search_accuracy:.4f} at {a.search_fidelity} epoch(s)"
            if a.search_accuracy is not None else ""
        )
        if a.mean is None:
            console.print(f"  {where} ({a.arch_id}): no run completed{search}", highlight=False, soft_wrap=True)
        else:
            console.print(
                f"  {where} ({a.arch_id}): val_accuracy mean {a.mean:.4f} ± {a.std:.4f} (std over "
                f"{len(a.accuracies)} seed(s)){search}  {a.summary}",
                highlight=False, soft_wrap=True,
            )
    if report.ranking is not None:
        r = report.ranking
        tau = "-" if r["kendall_tau"] is None else f"{r['kendall_tau']:.2f}"
        verdict = "holds (same order)" if r["holds"] else "changes"
        console.print(f"ranking of the {r['n']} architectures at full fidelity {verdict}; Kendall tau {tau}", highlight=False, soft_wrap=True)
    if not any(a.accuracies for a in report.archs):
        err_console.print("error: no retraining run completed; see the reasons above")
        raise typer.Exit(1)
    console.print(f"export the best: nas export {report.study} --storage {storage} --out exports/{report.study}", highlight=False, soft_wrap=True)


# -- analyze ------------------------------------------------------------------------------------
@app.command()
@user_errors
def analyze(
    study: Annotated[str, typer.Argument(help="Study to analyse (it may still be running).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (self-contained, opens offline).")] = Path("report.html"),
    png: Annotated[Path | None, typer.Option(help="Also write each figure as a PNG file in this directory.")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    top: Annotated[int, typer.Option(help="Rows of the top-architectures table.")] = 10,
) -> None:
    """Write an HTML report: history, parameter importance, Pareto front, cost plots, accuracy by depth per skip type, error EDFs, top architectures. Reads only."""
    from db import Store
    from nas.analyze import analyze as write_report

    # migrate=False: analysis never writes; a store behind the code's schema says so instead.
    if storage.startswith("sqlite:///") and storage[len("sqlite:///"):] not in ("", ":memory:"):
        db_file = Path(storage[len("sqlite:///"):].split("?", 1)[0])
        if not db_file.is_file():
            raise UserError(f"no database file at {db_file} (from --storage {storage})")
    data = write_report(Store(storage, migrate=False), study, out, png_dir=png, top=max(1, top))
    c = data["counts"]
    best = data["best"]
    best_text = f"best val_accuracy {best['val_accuracy']:.4f} (trial {best['trial']})" if best else "no complete trial yet"
    console.print(
        f"wrote {out} for `{study}`: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
        f"{c.get('failed', 0)} failed, {c.get('running', 0)} running; {best_text}",
        highlight=False, soft_wrap=True,
    )
    if data["importance"]["note"]:
        console.print(f"  note: {data['importance']['note']}", highlight=False, soft_wrap=True)
    if png is not None:
        console.print(f"  figures also in {png}/", highlight=False, soft_wrap=True)


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
    from nas.search import open_storage

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

    from nas.search import best_trials, open_storage

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


# -- pool ---------------------------------------------------------------------------------------
RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="Ray cluster to use (e.g. 10.0.0.5:6379).  [default: the one on this machine]"),
]


def _print_runners(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("runner", "pid", "CPUs", "GPUs", "code", "ready after", box=None)
    for r in rows:
        table.add_row(r["runner"], str(r["pid"]), f"{r['cpus']:g}", f"{r['gpus']:g}",
                      r["version"], f"{r['ready_s']:.1f} s" if "ready_s" in r else "-")
    console.print(table)


def _print_broker() -> None:
    from nas import pool
    from workers.ray_task import code_version

    _, info = pool.broker_info()
    if info is None:
        console.print("no report broker: each search makes its own (`nas pool up` starts one)")
        return
    stale = "" if info["version"] == code_version() else " [yellow](other code)[/]"
    console.print(f"report broker: pid {info['pid']}, code {info['version']}{stale}, "
                  f"{info['searches']} search(es) served, {info['open']} running")


@pool_app.command("up")
@user_errors
def pool_up(
    ray_address: RayAddressOpt = None,
    slots: Annotated[int | None, typer.Option(help="Runners to keep.  [default: cluster CPUs / CPUs per trial]")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs each runner holds.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs each runner holds.")] = 0.0,
) -> None:
    """Start warm runners (and a Ray cluster on this machine, if none is running)."""
    from nas import pool

    how = pool.connect(ray_address, start=ray_address is None)
    rows = pool.up(slots=slots, cpus=cpus_per_trial, gpus=gpus_per_trial)
    console.print(f"Ray cluster at {how}; {len(rows)} runner(s) ready")
    _print_runners(rows)
    _print_broker()
    console.print(f"`nas search` on this machine now trains on them; from another node of the "
                  f"cluster: nas search --ray-address {how} ...", highlight=False)


@pool_app.command("status")
@user_errors
def pool_status(ray_address: RayAddressOpt = None) -> None:
    """List the resident runners and the code they run."""
    from nas import pool
    from workers.ray_task import code_version

    pool.connect(ray_address, start=False)
    rows = [{"runner": name, **info} for name, _, info in pool.runners(timeout_s=10.0) if info]
    if not rows:
        console.print("no resident runner (start them with `nas pool up`)")
        return
    _print_runners(rows)
    _print_broker()
    stale = sum(1 for r in rows if r["version"] != code_version())
    if stale:
        console.print(f"[yellow]{stale} runner(s) run other code than this nas; "
                      "`nas pool up` renews them[/]")


@pool_app.command("down")
@user_errors
def pool_down(
    ray_address: RayAddressOpt = None,
    stop_ray: Annotated[bool, typer.Option(help="Also stop that Ray cluster's processes on this machine.")] = False,
) -> None:
    """Stop the resident runners."""
    from nas import pool

    joined = pool.connect(ray_address, start=False)
    runners, processes = pool.down(stop_ray=stop_ray, address=joined)
    line = f"stopped {runners} runner(s)"
    if stop_ray:
        line += (f"; stopped the Ray cluster ({processes} processes)" if processes else
                 "; the Ray cluster has no process on this machine: stop it where it runs")
    console.print(line)


def quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created...") and experimental-feature warnings say
    nothing a user of `nas` can act on; our own output covers what happened."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main() -> None:
    from nas.search import token_auth

    token_auth()  # before anything imports Ray (it reads the auth mode at import)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
