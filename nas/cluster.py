"""Ray start-up, joining, token authentication and discovery: the only module that calls
into Ray's private modules (the recorded cluster address, a session's directory).

A search starts a Ray of its own unless it is told which cluster to join (`--ray-address
HOST:PORT`, or `auto` for the cluster `nas pool up` / `ray start` recorded on this machine):
several processes on one machine may run Ray, and a search must never train on a cluster
somebody else started for another job.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from nas.errors import UserError


def token_auth() -> None:
    """Ray's token authentication unless RAY_AUTH_MODE says otherwise.

    A driver that joins a cluster started with it (`nas pool up`, the compose stack) must
    send the token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), and Ray reads
    the mode when it is first imported: call this before that. Once Ray is imported this
    does nothing: a mode set later reaches the Ray processes a local `ray.init` starts but
    not this process's client, and then nothing can connect.
    """
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def ensure_auth_token() -> None:
    """Create ~/.ray/auth_token, readable by its owner only, when token authentication is on
    and the person has given no token.

    `ray start` fails on a machine that never ran Ray: it needs a token and makes none;
    `ray.init()` makes one readable by every local user, who could then run code on the
    cluster. The token is what Ray would generate (256 random bits) and is never printed.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the person chose the token; Ray reports it if it is missing
    path = Path.home() / ".ray" / "auth_token"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise UserError(f"cannot create Ray's auth token {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def local_cluster() -> str | None:
    """The address of the Ray cluster `ray start` (or `nas pool up`) recorded on this
    machine, or RAY_ADDRESS; None when there is none or nothing answers there."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        with loopback_only():  # else Ray rewrites a recorded 127.0.0.1 to this machine's IP
            address = canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - another Ray, or a bad record
        return None
    if address is None or os.environ.get("RAY_ADDRESS"):
        return address
    # The record outlives a cluster that died without `ray stop`; Ray would retry it for
    # minutes. Nothing answering on its port means there is no cluster.
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2.0).close()
    except (OSError, ValueError):
        return None
    return address


def resolve_address(address: str | None) -> str | None:
    """None: no cluster (start one). "auto": the cluster recorded on this machine, which
    must exist. Anything else: as given."""
    if address != "auto":
        return address
    found = local_cluster()
    if found is None:
        raise UserError("--ray-address auto: no Ray cluster runs on this machine "
                        "(`nas pool up` starts one; or give the cluster's host:port)")
    return found


def _init_kwargs(cpus_per_trial: float) -> dict[str, Any]:
    from workers.ray_task import training_env

    return dict(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": training_env(cpus_per_trial)},
    )


def start_ray(address: str | None, *, slots: int | None, cpus_per_trial: float) -> str:
    """Join the cluster at `address` (see `resolve_address`), or start a local Ray.

    Returns "joined" or "started" (Ray was initialised here; the caller shuts it down), or
    "" when Ray was already up in this process.
    """
    token_auth()  # before Ray is imported: it reads the mode then
    import ray

    if ray.is_initialized():
        return ""
    kwargs = _init_kwargs(cpus_per_trial)
    address = resolve_address(address)
    if address:
        try:
            with _joining(address):
                ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError...
            raise UserError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}") from None
        return "joined"
    want = int(math.ceil((slots or 0) * cpus_per_trial))
    ensure_auth_token()
    with loopback_only():
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, want), **kwargs)
    return "started"


# A search's own Ray serves this process alone: its servers listen on loopback only and it
# serves no Prometheus metrics (Ray's token auth covers its gRPC and HTTP APIs, not
# /metrics). Ray has no bind-address setting: every server listens on the node's IP, and
# `ray.init` replaces a node IP of 127.0.0.1 by the machine's address unless Ray's "cluster
# mode" is off (services.resolve_ip_for_localhost). The two metrics servers with fixed ports
# (dashboard head 44227, autoscaler 44217) cannot be turned off, only given port -1, which
# they log in their own log files and go on without. Each can be set otherwise in the
# environment by a person who wants Ray's metrics.
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_enable_metrics_collection": "0",
    "DASHBOARD_METRIC_PORT": "-1",
    "AUTOSCALER_METRIC_PORT": "-1",
}


def _joining(address: str) -> Any:
    """What joining `address` needs: a cluster on this machine's loopback (`nas pool up`'s)
    knows its node as 127.0.0.1, and a driver that takes itself for another IP finds no
    raylet of its own there."""
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    return loopback_only() if host in ("127.0.0.1", "localhost", "::1") else contextlib.nullcontext()


@contextlib.contextmanager
def loopback_only() -> Any:
    """While a local Ray starts: `LOOPBACK_ENV` (what the person has not set), which the Ray
    processes started meanwhile inherit; this process's own view is restored after, so that
    it can still join other clusters."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    saved_mode = ray_constants.ENABLE_RAY_CLUSTER
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    # Read when Ray is imported; set here too for a process that imported it already.
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in \
        ("1", "true")
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_mode
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_mode_enabled() -> bool:
    """This process's view of the setting `loopback_only` changes while a local Ray starts
    (Ray's `ENABLE_RAY_CLUSTER`): whether it may start or join a Ray of the usual kind."""
    from ray._private import ray_constants

    return bool(ray_constants.ENABLE_RAY_CLUSTER)


def slots_of(*, workers: int | None, cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials the connected cluster runs at once: `workers`, else what its CPUs (and GPUs)
    hold."""
    if workers:
        return workers
    import ray

    resources = ray.cluster_resources()
    by_cpu = max(1, int(resources.get("CPU", 1) // cpus_per_trial)) if cpus_per_trial else 1 << 30
    if gpus_per_trial:
        gpus = resources.get("GPU", 0)
        if gpus <= 0:
            raise UserError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has no GPU")
        return max(1, min(by_cpu, int(gpus // gpus_per_trial)))
    return by_cpu


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def connect(address: str | None, *, start: bool) -> str:
    """Join the Ray cluster at `address` (None or 'auto': the one recorded on this machine);
    with `start`, start that one first if there is none (`nas pool up`). Returns the
    address joined."""
    token_auth()  # before Ray is imported (it reads the mode then); `ray start` inherits it
    import ray

    target = local_cluster() if address in (None, "auto") else address
    if target is None:
        if not start:
            raise UserError("no Ray cluster runs on this machine (start one with `nas pool up`)")
        ensure_auth_token()
        cmd = [_ray_cli(), "start", "--head", "--port=0", "--node-ip-address=127.0.0.1",
               "--include-dashboard=false", "--disable-usage-stats"]
        env = {**LOOPBACK_ENV, **os.environ}  # as a search's own Ray: see LOOPBACK_ENV
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        target = local_cluster()
        if done.returncode != 0 or target is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"could not start a Ray cluster (`{' '.join(cmd)}`): {tail[0]}")
    try:
        with _joining(target):
            ray.init(address=target, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError...
        raise UserError(f"cannot join the Ray cluster at {target}: {_first_line(exc)}") from None
    return target


def session_dir() -> str | None:
    """The session directory of the Ray this process is connected to (None if unknown)."""
    try:
        import ray

        context = ray.get_runtime_context()
        return os.path.join(context.get_temp_dir(), context.get_session_name())
    except Exception:  # noqa: BLE001 - another Ray
        return None


def forget_address(address: str | None) -> None:
    """What `ray stop` does besides stopping: forget the recorded address, if it is this one."""
    with contextlib.suppress(Exception):
        from ray._common.utils import reset_ray_address
        from ray._private.utils import read_ray_address

        if address is not None and read_ray_address() == address:
            reset_ray_address()


def stop_processes(session: str, grace_s: float = 10.0) -> int:
    """Terminate the processes started for Ray session `session` (their command lines name
    its directory); kill those still there after `grace_s`. Never `ray stop`: that would
    take every Ray on the machine down, a test session's or another user's included."""
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
