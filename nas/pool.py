"""`nas pool up|status|down`: keep resident trial runners warm on a Ray cluster.

A search that starts its own Ray pays, in every fresh worker process, the import of torch and
Lightning (about 5 s per worker on this project's 2-core machine) before its first trial.
`nas pool up` starts a Ray cluster on this machine (or joins one) and leaves one warm
`TrialRunner` per trial slot in it, and one `ReportBroker` the searches share; `nas search
--ray-address auto` on this machine (or `--ray-address HOST:PORT` from another node) then
trains on those runners (`nas.executors.pool`), so the imports are paid once per pool.
"""

from __future__ import annotations

import time
from typing import Any

from nas.cluster import connect, forget_address, session_dir, stop_processes
from nas.errors import UserError
from nas.executors.pool import INFO_TIMEOUT_S, fits, runners

__all__ = ["broker_info", "connect", "down", "runners", "up"]


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
        if fits(info, version, cpus, gpus) and index.isdigit() and int(index) < slots:
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
        session = session_dir()
        ray.shutdown()
        if session is None:
            raise UserError("cannot tell which Ray processes belong to this cluster; "
                            "stop it with `ray stop`")
        stopped = stop_processes(session)
        forget_address(address)
    return len(found), stopped
