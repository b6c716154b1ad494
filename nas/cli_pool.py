"""`nas pool up|status|down`: the resident trial runners, as a sub-command group of `nas`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nas.cli_common import command, console, new_app, user_errors

pool_app = new_app(
    help="Resident trial runners that stay warm between searches (join with --ray-address auto).",
)
RayAddressOpt = Annotated[
    str | None,
    typer.Option(metavar="HOST:PORT", help="Ray cluster to use (e.g. 10.0.0.5:6379).  \\[default: the one on this machine]"),
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


@command(pool_app, "up", examples=("nas pool up", "nas search --ray-address auto"))
@user_errors
def pool_up(
    ray_address: RayAddressOpt = None,
    slots: Annotated[int | None, typer.Option(metavar="N", help="Runners to keep.  \\[default: cluster CPUs / CPUs per trial]")] = None,
    cpus_per_trial: Annotated[float, typer.Option(metavar="N", help="CPUs each runner holds.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(metavar="N", help="GPUs each runner holds.")] = 0.0,
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


@command(pool_app, "status", examples=("nas pool status",))
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


@command(pool_app, "down", examples=("nas pool down", "nas pool down --stop-ray"))
@user_errors
def pool_down(
    ray_address: RayAddressOpt = None,
    stop_ray: Annotated[bool, typer.Option(metavar="", help="Also stop that Ray cluster's processes on this machine.")] = False,
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
