"""The Ray edge: `run_trial` as a Ray task or on a resident runner, and the broker that
carries per-epoch reports back.

Only plain data crosses this boundary: request dicts in, result dicts out. The broker holds no
database handle and no Optuna object; the orchestrator drains its reports, decides "stop" or
"continue", and posts the decision back, so workers never need database credentials.

Resident runners (`nas pool up`) are detached actors in the Ray namespace `resnas` that have
imported torch and Lightning once and train trial after trial, for every search that joins
the cluster. A fresh Ray worker spends about 5 s on those imports on this project's 2-core
machine (bench/README.md), which is most of what a short search loses to start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

POOL_NAMESPACE = "resnas"
RUNNER_PREFIX = "resnas-runner-"
BROKER_NAME = "resnas-broker"  # the pool's ReportBroker, shared by the searches on it

# How long a worker waits for the owner's pruning decision before it carries on training.
# The owner answers within milliseconds; this only matters if the owner is gone.
DECISION_TIMEOUT_S = 120.0
# How often a worker tells the broker it is alive while it trains (from a thread beside the
# training, so a long epoch or a compile still beats; a frozen process does not).
BEAT_S = 5.0


def channel_of(key: str) -> str:
    """The search a trial key belongs to: keys are `<channel>:<anything>`."""
    return key.split(":", 1)[0]


@ray.remote(num_cpus=0, max_restarts=0)
class ReportBroker:
    """Mailbox between workers (who report epochs) and the owners (who decide pruning).

    Each search is a channel: its trial keys start with `<channel>:`, and it reads only its
    own reports. A search on a fresh Ray makes a broker for itself; the searches on resident
    runners share the pool's (`nas pool up` starts it), which saves each of them a fresh Ray
    worker process, about 1 s of CPU on this project's 2-core machine (bench/README.md).
    """

    def __init__(self, channel: str | None = None) -> None:
        """`channel`: the one search this broker serves, open from the start."""
        self._pending: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
        self._beats: dict[str, set[str]] = {}  # channel -> keys that beat since the last read
        self._new: dict[str, asyncio.Event] = {}
        self._decisions: dict[tuple[str, int], bool] = {}
        self._events: dict[tuple[str, int], asyncio.Event] = {}
        self._opened = 0
        if channel is not None:
            self._open(channel)

    def _open(self, channel: str) -> None:
        self._opened += 1
        self._pending.setdefault(channel, [])
        self._beats.setdefault(channel, set())
        self._new.setdefault(channel, asyncio.Event())

    async def open(self, channel: str) -> str:
        """Called by a search before its first trial; returns the code version the broker
        runs (the search uses it only if it runs the same)."""
        self._open(channel)
        return code_version()

    async def close(self, channel: str) -> None:
        """Called by a search when it ends: forget its keys, and tell any worker still
        waiting for one of its decisions to stop."""
        self._pending.pop(channel, None)
        self._beats.pop(channel, None)
        self._new.pop(channel, None)
        mine = [k for k in self._events if channel_of(k[0]) == channel]
        for k in mine:
            self._decisions[k] = True
            self._events[k].set()

    def info(self) -> dict[str, Any]:
        return {"version": code_version(), "pid": os.getpid(), "searches": self._opened,
                "open": len(self._new)}

    def _add(self, key: str, epoch: int, metrics: dict[str, Any]) -> bool:
        channel = channel_of(key)
        if channel not in self._new:  # its search has ended: nobody will read it
            return False
        self._pending[channel].append((key, epoch, metrics))
        self._new[channel].set()
        return True

    async def report(self, key: str, epoch: int, metrics: dict[str, Any]) -> bool:
        """Called by a worker after each epoch; returns True when the trial must stop."""
        if not self._add(key, epoch, metrics):
            return True
        event = asyncio.Event()
        self._events[(key, epoch)] = event
        try:
            await asyncio.wait_for(event.wait(), timeout=DECISION_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False
        finally:
            self._events.pop((key, epoch), None)
        return self._decisions.pop((key, epoch), False)

    async def post(self, key: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Called by a worker of a search that never prunes: the epoch, without waiting."""
        self._add(key, epoch, metrics)

    async def beat(self, key: str) -> None:
        """Called by a worker's beat thread while it trains: the trial's process is alive."""
        beats = self._beats.get(channel_of(key))
        if beats is not None:
            beats.add(key)

    async def next_reports(
        self, channel: str, timeout: float
    ) -> tuple[list[tuple[str, int, dict[str, Any]]], list[str]]:
        """Called by an owner: waits until at least one report of its channel is pending (or
        `timeout`); returns the reports and the keys that beat since the last call."""
        new = self._new.get(channel)
        if new is None:
            return [], []
        if not self._pending[channel]:
            new.clear()
            try:
                await asyncio.wait_for(new.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
        pending = self._pending.get(channel, [])
        if pending:
            self._pending[channel] = []
        beats = self._beats.get(channel, set())
        self._beats[channel] = set()
        return pending, sorted(beats)

    async def decide(self, decisions: list[tuple[str, int, bool]]) -> None:
        """Called by the owner: wakes each waiting worker with its decision."""
        for key, epoch, stop in decisions:
            event = self._events.get((key, epoch))
            if event is not None:  # a posted epoch has nobody waiting for its decision
                self._decisions[(key, epoch)] = stop
                event.set()


class BrokerReporter:
    """The `Reporter` a Ray worker hands to `run_trial`: forwards epochs to the broker.

    With `wait` it blocks for the owner's decision each epoch (pruning). Without (a search
    that never prunes) it posts the epoch and trains on: the round trip through the owner,
    who records the epoch first, had each trial wait ~20-30 ms an epoch on 2 busy cores.
    """

    def __init__(self, broker: Any, key: str, *, wait: bool = True) -> None:
        self.broker = broker
        self.key = key
        self.wait = wait

    def report(self, epoch: int, metrics: dict[str, Any]) -> bool:
        metrics = {**metrics, "pid": os.getpid()}
        if not self.wait:
            self.broker.post.remote(self.key, epoch, metrics)
            return False
        return bool(ray.get(self.broker.report.remote(self.key, epoch, metrics)))


def _execute(request: dict[str, Any], broker: Any, threads: int) -> dict[str, Any]:
    request = dict(request)
    wait = request.pop("prunable", True)  # the Ray edge's, not run_trial's
    import torch

    from workers import run_trial

    torch.set_num_threads(max(1, threads))
    reporter = BrokerReporter(broker, request.get("key", ""), wait=wait) if broker is not None else None
    with _beating(broker, request.get("key", "")):
        result = run_trial(request, reporter=reporter)
    data = result.to_dict()
    data["weights"] = result.weights
    data["node_id"] = ray.get_runtime_context().get_node_id()
    data["worker_pid"] = os.getpid()  # which process trained it (a resident runner's pid)
    return data


@contextlib.contextmanager
def _beating(broker: Any, key: str) -> Iterator[None]:
    """Beat to the broker every `BEAT_S` while the block runs (the owner's liveness check)."""
    if broker is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(BEAT_S):
            try:
                broker.beat.remote(key)
            except Exception:  # noqa: BLE001 - the broker is gone: its search has ended
                return

    thread = threading.Thread(target=beat, name="resnas-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


_remote_execute = ray.remote(_execute)


def threads_for(num_cpus: float) -> int:
    """Torch and OpenMP threads for a trial that holds `num_cpus` CPUs (at least one)."""
    return max(1, int(num_cpus)) if num_cpus else 1


def submit_trial(
    request: dict[str, Any],
    *,
    broker: Any = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
) -> ray.ObjectRef:
    """Start one trial as a Ray task with its CPU/GPU share; returns the ref of its result dict.

    Ray's own retries are off (`max_retries=0`): a retried task would silently re-run the same
    trial; the orchestrator decides retries and records them as new, linked trials.
    """
    threads = threads_for(num_cpus)
    return _remote_execute.options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_retries=0,
        retry_exceptions=False,
    ).remote(request, broker, threads)


@functools.cache
def code_version() -> str:
    """A digest of the code a runner executes (the `workers` and `search_spaces` packages).

    A resident runner keeps the code it started with; the orchestrator uses it only while this
    digest matches its own, so a search never trains with code older than the one it runs.
    """
    digest = hashlib.sha256()
    for package in ("workers", "search_spaces"):
        root = Path(__file__).resolve().parent.parent / package
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".yaml", ".yml") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root.parent)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@ray.remote(max_restarts=-1, max_task_retries=0)
class TrialRunner:
    """A resident worker: imports the trainer once, then runs one trial per `run` call.

    Ray restarts it if its process dies (a trial that ran out of memory, a kill): the restart
    pays the imports again, the runner's name and resources stay.
    """

    def __init__(self, num_cpus: float, num_gpus: float) -> None:
        import torch

        import workers.trial  # noqa: F401 - the import is the warm-up

        self._threads = threads_for(num_cpus)
        self._resources = (float(num_cpus), float(num_gpus))
        torch.set_num_threads(self._threads)

    def info(self) -> dict[str, Any]:
        """What the orchestrator checks before it hands this runner trials."""
        return {"version": code_version(), "pid": os.getpid(), "threads": self._threads,
                "cpus": self._resources[0], "gpus": self._resources[1],
                "node_id": ray.get_runtime_context().get_node_id()}

    def run(self, request: dict[str, Any], broker: Any) -> dict[str, Any]:
        return _execute(request, broker, self._threads)


def pool_actor_names() -> list[str]:
    """Names of the pool's actors (runners and broker) on the connected cluster."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == POOL_NAMESPACE]


def runner_names() -> list[str]:
    """Names of the resident runners on the connected cluster, in order."""
    names = [n for n in pool_actor_names() if n.startswith(RUNNER_PREFIX)]
    return sorted(names, key=lambda n: int(n[len(RUNNER_PREFIX):]) if n[len(RUNNER_PREFIX):].isdigit() else 1 << 30)


def runner(name: str) -> Any:
    return ray.get_actor(name, namespace=POOL_NAMESPACE)


# Ray lowers every worker process's priority by 15 (`RAY_worker_niceness`, read by the
# worker when it starts): right for background work, wrong for ours, where training IS the
# job and the broker sits on its critical path. At +15 any process at the normal priority
# (the search's driver above all) preempts a trial at once; on 2 busy cores that stretched
# the hand-over between two trials on a runner to 14-40 ms whenever the driver was
# proposing, and held up the last trials' claims. At the node's own priority the driver
# shares the core instead (bench/README.md: hand-over time per runner halved). The pool's
# actors get it in their runtime env, a search's own Ray jobs in the job's.
WORKER_ENV = {"RAY_worker_niceness": "0"}


def training_env(num_cpus: float) -> dict[str, str]:
    """The environment of a process that trains trials holding `num_cpus` CPUs each: the
    node's priority and as many OpenMP threads as CPUs."""
    return {**WORKER_ENV, "OMP_NUM_THREADS": str(threads_for(num_cpus))}


def start_runner(index: int, *, num_cpus: float, num_gpus: float) -> Any:
    """Create (or find) resident runner `index`; it lives until `nas pool down` or `ray stop`."""
    return TrialRunner.options(
        name=f"{RUNNER_PREFIX}{index}", namespace=POOL_NAMESPACE, lifetime="detached",
        get_if_exists=True, num_cpus=num_cpus, num_gpus=num_gpus,
        runtime_env={"env_vars": training_env(num_cpus)},
    ).remote(num_cpus, num_gpus)


def on_this_node() -> Any:
    """Ray's scheduling strategy for an actor pinned to the caller's node (a broker placed on
    another node would die with that node)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                          soft=False)


def start_broker() -> Any:
    """Create (or find) the pool's report broker, on this node; it lives as the runners do."""
    return ReportBroker.options(
        name=BROKER_NAME, namespace=POOL_NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=on_this_node(), runtime_env={"env_vars": WORKER_ENV},
    ).remote()


def pool_broker() -> Any:
    """The pool's report broker on the connected cluster, or None."""
    try:
        return ray.get_actor(BROKER_NAME, namespace=POOL_NAMESPACE)
    except ValueError:
        return None
