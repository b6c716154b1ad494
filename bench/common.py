"""What every benchmark shares: the machine and versions, fresh databases, Ray, result files.

Benchmarks are not tests: they measure and report, they assert nothing about speed. Every
figure a benchmark prints is a ratio of two things measured in the same run, on the same
machine, because absolute seconds on a shared 2-core box mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = Path(os.environ.get("RESNAS_BENCH_RESULTS", BENCH_DIR / "results"))
PG_ADMIN_URL = os.environ.get(
    "RESNAS_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SPACE = "resnet-cifar"
# The recipe every search benchmark trains with: the default digits recipe, shortened to
# 4 epochs and batches of 128 so that a trial takes seconds on one core (ASHA rungs 1, 3).
RECIPE: dict[str, Any] = {"dataset": "digits", "epochs": 4, "batch_size": 128, "seed": 0}


# -- machine and versions --------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "load_average_1m": round(load[0], 2) if load[0] is not None else None,
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "optuna", "ray", "lightning", "sqlalchemy"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            out[name] = None
    return out


def write_result(name: str, data: dict[str, Any], *, started: float, argv: list[str]) -> Path:
    """`bench/results/<name>.json` with the command, machine, versions and timing added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": "python -m bench." + name + (" " + " ".join(argv) if argv else ""),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bench_wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "load_average_1m_at_start": data.pop("_load_at_start", None),
        "versions": versions(),
        **data,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, float):
        return o
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def header(title: str) -> None:
    m, v = machine(), versions()
    print(f"== {title}")
    print(
        f"   machine: {m['cores']} cores, {m['cpu_model']}, {m['ram_gib']} GiB RAM, "
        f"load(1m) {m['load_average_1m']}"
    )
    print("   versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))


def quiet() -> None:
    """Silence Optuna's per-trial info lines and Ray/Lightning chatter."""
    import warnings

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
    warnings.filterwarnings("ignore")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    for name in ("ray", "ray.tune", "ray.train", "lightning", "lightning.pytorch", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)


# -- stats ---------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose `key` is the median (the lower of the middle two for an even count)."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fake_accuracy(spec: dict[str, Any]) -> float:
    """A deterministic stand-in for a trained accuracy: the same architecture always gets the
    same value, with a smooth trend in depth and width (so TPE has something to learn)."""
    text = json.dumps(spec, sort_keys=True, default=str)
    noise = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    stages = spec.get("stages") or []
    depth = sum(int(s.get("depth", 1)) for s in stages)
    width = sum(int(s.get("width", 16)) for s in stages)
    return round(0.80 + 0.1 * min(depth, 12) / 12 + 0.05 * min(width, 200) / 200 + 0.04 * noise, 6)


# -- databases -------------------------------------------------------------------------------
def pg_available() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@contextlib.contextmanager
def fresh_db(backend: str) -> Iterator[str]:
    """A new, empty database for one measurement (SQLite file or PostgreSQL database),
    removed afterwards. Every measurement gets its own: `Store.find_finished` answers
    duplicates from *any* study in the database, which would leak results between runs."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="resnas-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    if backend != "postgresql":
        raise ValueError(f"backend {backend!r}; allowed: sqlite | postgresql")
    import sqlalchemy as sa

    name = f"resnas_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- Ray ------------------------------------------------------------------------------------
def start_ray(num_cpus: int = 2) -> float:
    """A fresh local Ray (no dashboard); returns its start-up seconds (never in a timing)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(
        address="local",  # never a cluster running on this machine (`nas pool up`)
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={
            "env_vars": {
                "OMP_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore",
                # so that Ray workers import `bench` (Tune's trainable lives here)
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(BENCH_DIR.parent), os.environ.get("PYTHONPATH")) if p
                ),
            }
        },
    )
    return time.perf_counter() - t0


if "ray" not in sys.modules:  # as `nas` does (nas.search.token_auth): only before Ray's import
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def start_pool(slots: int = 2) -> tuple[float, str, bool]:
    """Warm resident runners (`nas pool up`) on the Ray cluster of this machine, started here
    if there is none, with this process joined to it. Returns (seconds it took, never in a
    timing; the cluster's address; whether it was started here)."""
    from nas import pool
    from nas.cluster import local_cluster

    stop_ray()
    started = local_cluster() is None
    t0 = time.perf_counter()
    address = pool.connect(None, start=True)
    pool.up(slots=slots, cpus=1.0, gpus=0.0)
    return time.perf_counter() - t0, address, started


def stop_pool(address: str, started: bool) -> None:
    """Stop the runners, and the cluster if `start_pool` started it."""
    from nas import pool

    pool.down(stop_ray=started, address=address)
    stop_ray()


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def search_config(url: str, study: str, **overrides: Any) -> Any:
    """A validated `SearchConfig` the way the CLI builds it (`build_config(..., "flags")`)."""
    from nas.config import build_config

    flags: dict[str, Any] = {
        "study": study,
        "storage": url,
        "space": SPACE,
        "workers": 2,
        "train": dict(RECIPE),
    }
    train = overrides.pop("train", None)
    flags.update(overrides)
    if train:
        flags["train"] = {**flags["train"], **train}
    return build_config({}, flags, "flags")


def run_id_of(argv: list[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)


@dataclass
class TrialCountRun:
    """What a benchmark sized by a trial count starts from (see `trial_count_run`)."""

    args: argparse.Namespace
    argv: list[str]
    trials: int
    mode: str  # full | quick | smoke
    started: float
    load_at_start: float | None


def trial_count_run(
    prog: str,
    description: str,
    argv: list[str] | None,
    *,
    full: int,
    quick: int,
    smoke: int,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> TrialCountRun:
    """The shared command line of the trial-count benchmarks (`--quick`, `--smoke`,
    `--trials N`), with logging quietened and the start time and load recorded."""
    argv = run_id_of(argv)
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--quick", action="store_true", help=f"{quick} trials")
    ap.add_argument("--smoke", action="store_true", help=f"{smoke} trials (tests)")
    ap.add_argument("--trials", type=int)
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    quiet()
    started = time.time()
    load0 = machine()["load_average_1m"]
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    n = args.trials or {"smoke": smoke, "quick": quick, "full": full}[mode]
    return TrialCountRun(args, argv, n, mode, started, load0)
