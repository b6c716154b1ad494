"""Resident runners: trial workers that outlive a search (`nas pool up|status|down`).

A search that starts its own Ray pays, in every fresh worker process, the import of torch and
Lightning (about 5 s per worker on this project's 2-core machine) before its first trial.
`nas pool up` starts a Ray cluster on this machine (or joins one) and leaves one warm
`TrialRunner` per trial slot in it, and one `ReportBroker` the searches share; `nas search`
on this machine (or with `--ray-address` from another node) then trains on those runners,
so the imports are paid once per pool instead of once per search.

A search uses only runners that run the same code as itself (`code_version`) and hold the
CPUs and GPUs per trial it asks for; with none it falls back to Ray tasks and says why.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.errors import UserError

INFO_TIMEOUT_S = 120.0  # a runner answers once its imports are done (seconds, not minutes)


@dataclass
class Pool:
    """The runners one search trains on, and how many trials each has been handed."""

    handles: list[Any]
    broker: Any = None  # the pool's ReportBroker, if it has one
    load: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.load = [0] * len(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    def submit(self, request: dict[str, Any], broker: Any) -> tuple[Any, int]:
        """Start `request` on the least busy runner; returns (result ref, runner index).

        A runner trains one trial at a time; a trial handed to a busy one (a duplicate whose
        original failed, resubmitted while every slot is taken) waits in its queue.
        """
        index = min(range(len(self.load)), key=self.load.__getitem__)
        self.load[index] += 1
        return self.handles[index].run.remote(request, broker), index

    def release(self, index: int | None) -> None:
        if index is not None and self.load[index] > 0:
            self.load[index] -= 1

    def stop(self, index: int) -> None:
        """Stop the trial runner `index` is training: kill its process (Ray restarts it)."""
        import ray

        ray.kill(self.handles[index], no_restart=False)


def runners(timeout_s: float = INFO_TIMEOUT_S) -> list[tuple[str, Any, dict[str, Any] | None]]:
    """(name, handle, info or None if it did not answer) of every runner on the cluster."""
    import ray

    from workers.ray_task import runner, runner_names

    handles = [(name, runner(name)) for name in runner_names()]
    refs = {h.info.remote(): (name, h) for name, h in handles}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    infos: dict[str, dict[str, Any] | None] = {name: None for name, _ in handles}
    for ref in ready:
        try:
            infos[refs[ref][0]] = ray.get(ref)
        except Exception:  # noqa: BLE001 - a runner that died and could not restart
            pass
    return [(name, h, infos[name]) for name, h in handles]


def _fits(info: dict[str, Any] | None, version: str, cpus: float, gpus: float) -> bool:
    """The runner answered, runs this code and holds these resources per trial."""
    return (info is not None and info["version"] == version
            and float(info["cpus"]) == float(cpus) and float(info["gpus"]) == float(gpus))


def usable(infos: list[dict[str, Any] | None], *, version: str, cpus: float, gpus: float
           ) -> tuple[list[int], str | None]:
    """Indexes of the runners a search with these resources can use, and why not, if none."""
    good = [i for i, info in enumerate(infos) if _fits(info, version, cpus, gpus)]
    if good or not infos:
        return good, None
    answered = [i for i in infos if i is not None]
    if not answered:
        why = "no resident runner answered"
    elif all(i["version"] != version for i in answered):
        why = "the resident runners run other code (`nas pool up` renews them)"
    else:
        have = sorted({(i["cpus"], i["gpus"]) for i in answered})
        why = (f"the resident runners hold {', '.join(f'{c:g} CPU/{g:g} GPU' for c, g in have)} "
               f"per trial, this search asks for {cpus:g} CPU/{gpus:g} GPU")
    return [], why


def find_pool(*, cpus: float, gpus: float, limit: int | None) -> tuple[Pool | None, str | None]:
    """The resident runners this search can train on (at most `limit`), or None and why."""
    from workers.ray_task import code_version

    found = runners()
    if not found:
        return None, None
    good, why = usable([info for _, _, info in found], version=code_version(), cpus=cpus,
                       gpus=gpus)
    if not good:
        import ray

        free = ray.available_resources()
        if free.get("CPU", 0.0) < cpus or free.get("GPU", 0.0) < gpus:
            raise UserError(
                f"not using the cluster's {len(found)} resident runner(s): {why}; they hold the "
                f"CPUs/GPUs this search's trials need, so none could start. Renew them with "
                f"`nas pool up --cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}`, or stop "
                f"them with `nas pool down`."
            )
        return None, why
    good = good[:limit] if limit else good
    from workers.ray_task import pool_broker

    return Pool([found[i][1] for i in good], broker=pool_broker()), None


def broker_info(timeout_s: float = 10.0) -> tuple[Any, dict[str, Any] | None]:
    """The pool's report broker and what it says of itself (None if there is none, or it
    does not answer)."""
    import ray

    from workers.ray_task import pool_broker

    handle = pool_broker()
    if handle is None:
        return None, None
    try:
        return handle, ray.get(handle.info.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - dead, or stuck: the search makes its own
        return handle, None


# -- the CLI's side ----------------------------------------------------------------------------
def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def connect(address: str | None, *, start: bool) -> str:
    """Join the Ray cluster at `address` (None or 'auto': the one `ray start`/`nas pool up`
    recorded on this machine); with `start`, start that one first if there is none.
    Returns the address joined."""
    from nas.search import ensure_auth_token, local_cluster, token_auth

    token_auth()  # before Ray is imported (it reads the mode then); `ray start` inherits it
    import ray

    kwargs = dict(log_to_driver=False, configure_logging=False)
    target = local_cluster() if address in (None, "auto") else address
    if target is None:
        if not start:
            raise UserError("no Ray cluster runs on this machine (start one with `nas pool up`)")
        ensure_auth_token()
        cmd = [_ray_cli(), "start", "--head", "--port=0", "--node-ip-address=127.0.0.1",
               "--include-dashboard=false", "--disable-usage-stats"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        target = local_cluster()
        if done.returncode != 0 or target is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"could not start a Ray cluster (`{' '.join(cmd)}`): {tail[0]}")
    try:
        ray.init(address=target, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot join the Ray cluster at {target}: {first}") from None
    return target


def up(*, slots: int | None, cpus: float, gpus: float) -> list[dict[str, Any]]:
    """Make the connected cluster hold `slots` warm runners of these resources.

    Runners that run other code or hold other resources are replaced; extra ones are stopped.
    Returns one row per runner (name, pid, resources, seconds it took to be ready).
    """
    import ray

    from workers.ray_task import (
        BROKER_NAME,
        RUNNER_PREFIX,
        code_version,
        start_broker,
        start_runner,
    )

    if cpus <= 0 and gpus <= 0:
        raise UserError("--cpus-per-trial and --gpus-per-trial are both 0; a runner needs one")
    if slots is None:
        total = ray.cluster_resources()
        by_cpu = int(total.get("CPU", 1) // cpus) if cpus else 1 << 30
        by_gpu = int(total.get("GPU", 0) // gpus) if gpus else 1 << 30
        slots = max(1, min(by_cpu, by_gpu))
    if slots < 1:
        raise UserError(f"--slots {slots}: must be >= 1")
    version = code_version()
    broker, info = broker_info()
    if broker is not None and (info is None or info["version"] != version):
        ray.kill(broker, no_restart=True)
        _wait_gone(BROKER_NAME)
    broker = start_broker()  # ready below, while the runners start
    keep = set()
    for name, handle, info in runners():
        index = name[len(RUNNER_PREFIX):]
        if _fits(info, version, cpus, gpus) and index.isdigit() and int(index) < slots:
            keep.add(int(index))
        else:
            ray.kill(handle, no_restart=True)
            _wait_gone(name)
    t0 = time.time()
    handles = {i: start_runner(i, num_cpus=cpus, num_gpus=gpus) for i in range(slots)}
    rows = []
    refs = {h.info.remote(): i for i, h in handles.items()}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=INFO_TIMEOUT_S)
        if not ready:
            raise UserError(
                f"{len(pending)} runner(s) were not ready after {INFO_TIMEOUT_S:.0f} s; the "
                f"cluster may lack {cpus:g} CPU/{gpus:g} GPU per runner (`ray status` shows it)"
            )
        for ref in ready:
            info = ray.get(ref)
            rows.append({"runner": f"{RUNNER_PREFIX}{refs[ref]}", **info,
                         "ready_s": 0.0 if refs[ref] in keep else time.time() - t0})
    ray.get(broker.info.remote(), timeout=INFO_TIMEOUT_S)
    return sorted(rows, key=lambda r: r["runner"])


def _wait_gone(name: str, timeout_s: float = 30.0) -> None:
    """A killed actor's name is freed asynchronously; wait so the name can be used again."""
    from workers.ray_task import pool_actor_names

    end = time.time() + timeout_s
    while name in pool_actor_names() and time.time() < end:
        time.sleep(0.1)


def down(*, stop_ray: bool, address: str | None = None) -> tuple[int, int]:
    """Stop every resident runner and, with `stop_ray`, the Ray cluster this process joined
    (its processes on this machine only: `ray stop` would take every Ray here down, a test
    session's or another user's included). Returns (runners, Ray processes) stopped."""
    import ray

    from workers.ray_task import pool_broker

    found = runners(timeout_s=5.0)
    for _, handle, _ in found:
        ray.kill(handle, no_restart=True)
    broker = pool_broker()
    if broker is not None:
        ray.kill(broker, no_restart=True)
    stopped = 0
    if stop_ray:
        session = _session_dir()
        ray.shutdown()
        if session is None:
            raise UserError("cannot tell which Ray processes belong to this cluster; "
                            "stop it with `ray stop`")
        stopped = _stop_processes(session)
        with contextlib.suppress(Exception):  # what `ray stop` does: forget its address
            from ray._common.utils import reset_ray_address
            from ray._private.utils import read_ray_address

            if address is not None and read_ray_address() == address:
                reset_ray_address()
    return len(found), stopped


def _session_dir() -> str | None:
    try:
        import ray

        return ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - another Ray
        return None


def _stop_processes(session: str, grace_s: float = 10.0) -> int:
    """Terminate the processes started for Ray session `session` (their command lines name
    its directory); kill those still there after `grace_s`."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(session in part for part in proc.info["cmdline"] or ()):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(mine, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return len(mine)
