"""`nas show|trials|status|best|stop|delete`: what the store holds, and study management.
Registered as commands of `nas` in `nas.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli_common import (
    DEFAULT_STORAGE,
    ArtifactsOpt,
    StorageOpt,
    console,
    open_store,
    quiet_optuna,
    user_errors,
)
from nas.errors import UserError
from nas.jsonfile import read_json


@user_errors
def show(
    arch: Annotated[str, typer.Argument(metavar="ARCH", help="A zoo name (resnet50, resnet20, ...), an architecture.json, an arch id from `nas trials`, or a study name with --trial.")],
    trial: Annotated[int | None, typer.Option(metavar="N", help="With a study name: the architecture of this trial.  \\[default: none]")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    input_size: Annotated[int, typer.Option(metavar="PIXELS", help="Input resolution for FLOPs. 0: the size the architecture was searched at (recorded in an architecture.json or the store), else the zoo model's own (224, 32 or 8).")] = 0,
) -> None:
    """Print an architecture's stage table with params and FLOPs per stage."""
    from search_spaces import ArchitectureSpec, zoo
    from search_spaces.describe import render_text

    path = Path(arch)
    size = (input_size, input_size) if input_size else None
    try:
        if trial is not None or (not path.suffix and not path.exists() and arch not in zoo.names()):
            spec, recorded = _stored_architecture(arch, trial, storage)
            size = size or recorded
            native = zoo.default_input_size(spec)
        elif path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise UserError(f"architecture file `{arch}` does not exist")
            data = read_json(path)
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


def _stored_architecture(ref: str, trial: int | None, storage: str) -> tuple[Any, Any]:
    """The spec and recorded input size of an arch id, or of trial `trial` of study `ref`."""
    import difflib

    from search_spaces import ArchitectureSpec, zoo

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):].split("?")[0]).is_file():
        close = difflib.get_close_matches(ref, zoo.names(), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise UserError(f"`{ref}` is not a zoo name, an architecture.json or an arch id; {hint}"
                        f"zoo names: {', '.join(zoo.names())} (arch ids and --trial read the "
                        f"store, and there is no database at {storage})")
    store = open_store(storage)
    try:
        arch_id = ref
        if trial is not None:
            studies = store.study_names()
            if ref not in studies:
                raise UserError(f"no study `{ref}` in {store.display_url}; studies: "
                                f"{', '.join(studies) or 'none'}")
            run = store.run_for_trial(ref, trial)
            if run is None:
                raise UserError(f"study `{ref}` has no trial {trial} in the store (`nas trials "
                                f"{ref}` lists them)")
            arch_id = run.arch_id
        spec = store.architecture(arch_id)
        if spec is None:
            raise UserError(
                f"`{ref}` is not a zoo name ({', '.join(zoo.names())}), an architecture.json "
                f"or an arch id in {store.display_url}; a study's trial takes --trial N")
        return ArchitectureSpec.from_dict(spec), store.input_size(arch_id)
    finally:
        store.close()


# -- store views --------------------------------------------------------------------------------
TRIAL_STATES = ("complete", "pruned", "failed", "running")


@user_errors
def trials(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    storage: StorageOpt = DEFAULT_STORAGE,
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="table | csv | json")] = "table",
    state: Annotated[list[str] | None, typer.Option(metavar="STATE", help="Only these states (repeatable): complete | pruned | failed | running.  \\[default: all]")] = None,
    top: Annotated[int | None, typer.Option(metavar="K", help="Only the K best by validation accuracy.  \\[default: all]")] = None,
) -> None:
    """List a study's trials from the store."""
    from nas.store_commands import print_trials

    if fmt not in ("table", "csv", "json"):
        raise UserError(f"`--format` got {fmt!r}; allowed: table | csv | json")
    for s in state or ():
        if s not in TRIAL_STATES:
            hint = (" (candidates over a budget are never trained and have no row here; "
                    "`nas status` counts them)" if s == "infeasible" else "")
            raise UserError(f"`--state` got {s!r}; allowed: {' | '.join(TRIAL_STATES)}{hint}")
    if top is not None and top < 1:
        raise UserError(f"`--top` got {top}; allowed: an integer >= 1")
    print_trials(open_store(storage), study, fmt=fmt, states=state, top=top)


@user_errors
def status(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """One line per study in the store: trials by state, best accuracy, running searches."""
    from nas.store_commands import print_status

    store = open_store(storage)
    print_status(store, queue=store.optuna_queue())


@user_errors
def best(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """The best trial, or the Pareto front of a multi-objective study (with the index
    `nas export --pareto` takes)."""
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
    front = len(objectives) > 1
    if front:
        console.print(f"Pareto front of {', '.join(objectives)}: {len(rows)} trial(s); "
                      f"export one with `nas export {study} --pareto K`", highlight=False)
    for k, b in enumerate(rows):
        lead = f"  [K={k}] " if front else ""
        console.print(
            f"{lead}trial {b['trial']}: val_accuracy {b['val_accuracy']:.4f}, {b['params']:,} params, "
            f"{b['flops']:,} MACs, latency {b['latency_ms'] or 0:.2f} ms  {b['summary']}",
            highlight=False, soft_wrap=True,
        )


# -- study management ---------------------------------------------------------------------------
@user_errors
def stop(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study whose running searches should stop.")],
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Ask every running search of a study to stop cleanly, from any machine that reaches the
    database: each finishes the trials it trains, records them and exits (resume with the
    same `nas search` command)."""
    store = open_store(storage)
    ids = store.request_stop(study)
    if not ids:
        console.print(f"study `{study}` has no running search; nothing to stop", highlight=False)
        return
    console.print(f"asked search(es) {', '.join(f'#{i}' for i in ids)} of study `{study}` to "
                  "stop: each sees it at its next heartbeat and finishes the trials it trains "
                  "first (`nas status` shows it stopping)", highlight=False)


@user_errors
def delete(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study to delete.")],
    storage: StorageOpt = DEFAULT_STORAGE,
    yes: Annotated[bool, typer.Option("--yes", "-y", metavar="", help="Do not ask for confirmation.")] = False,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Delete even while a search of the study looks alive (its driver may be gone without a trace).")] = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Delete a study: its trials in Optuna, its runs, epochs and weights in the store, and
    its weights in the artifact store (architectures other studies share are kept). Refused
    while a search of it runs."""
    import optuna

    from nas.study import open_storage
    from nas.weights import Artifacts

    quiet_optuna()
    store = open_store(storage)
    weights = Artifacts.open(store.url, store, artifacts)  # a bad location: before any deletion
    optuna_storage = open_storage(storage)
    stored = store.study_names()
    ours = study in stored  # a study may live on only one of the two sides
    names = set(stored) | set(optuna.study.get_all_study_names(optuna_storage))
    if study not in names:
        raise UserError(f"no study `{study}` in {store.display_url}; studies: "
                        f"{', '.join(sorted(names)) or 'none'}")
    runs = store.runs(study) if ours else []
    if not yes and not typer.confirm(
            f"delete study `{study}` ({len(runs)} run(s)) from {store.display_url}?", default=False):
        raise typer.Exit(1)
    # The store refuses while a live search holds the study; the artifacts go once it has
    # agreed (the rows that named them are gone then), and Optuna's side last.
    counts = store.delete_study(study, force=force) if ours else {}
    if any(r.weights_artifact for r in runs):
        counts["artifacts"] = sum(weights.remove(r) for r in runs)
    try:
        optuna.delete_study(study_name=study, storage=optuna_storage)
    except KeyError:
        pass  # only our side had it (e.g. runs recorded by `nas retrain`)
    rows = ", ".join(f"{n} {t}" for t, n in counts.items() if n) or "no rows of ours"
    console.print(f"deleted study `{study}` (Optuna's trials; from the store: {rows})",
                  highlight=False)
