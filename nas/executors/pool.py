"""Trials on resident runners (`nas pool up`): warm `TrialRunner` actors that have imported
torch and Lightning once and train trial after trial, for every search that joins them.

A search uses only runners that run the same code as itself (`code_version`) and hold the
CPUs and GPUs per trial it asks for; with none it falls back to Ray tasks and says why.
"""

from __future__ import annotations

from typing import Any

from nas.errors import UserError
from nas.executors.base import Job
from nas.executors.ray_tasks import RayExecutor

INFO_TIMEOUT_S = 120.0  # a runner answers once its imports are done (seconds, not minutes)


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


def fits(info: dict[str, Any] | None, version: str, cpus: float, gpus: float) -> bool:
    """The runner answered, runs this code and holds these resources per trial."""
    return (info is not None and info["version"] == version
            and float(info["cpus"]) == float(cpus) and float(info["gpus"]) == float(gpus))


def usable(infos: list[dict[str, Any] | None], *, version: str, cpus: float, gpus: float
           ) -> tuple[list[int], str | None]:
    """Indexes of the runners a search with these resources can use, and why not, if none."""
    good = [i for i, info in enumerate(infos) if fits(info, version, cpus, gpus)]
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


def find_runners(*, cpus: float, gpus: float, limit: int | None) -> tuple[list[Any], str | None]:
    """Handles of the resident runners a search can train on (at most `limit`), and why
    there are none when the cluster has some."""
    from workers.ray_task import code_version

    found = runners()
    if not found:
        return [], None
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
        return [], why
    good = good[:limit] if limit else good
    return [found[i][1] for i in good], None


class PoolExecutor(RayExecutor):
    """One trial at a time on each resident runner; `capacity` = the runners."""

    kind = "resident runners"

    def __init__(self, handles: list[Any], *, broker: Any = None) -> None:
        super().__init__(broker=broker)
        self.handles = handles
        self.busy: dict[str, int] = {}  # key -> runner index
        # Runners restarting after their process died or was killed: index -> their `info`
        # call, which answers once the restart (the imports) is done. Until then a call to
        # one fails at once, and each would burn a trial's retry.
        self.resting: dict[int, Any] = {}
        self.gone: set[int] = set()  # runners that will not come back

    def _rest(self, index: int) -> None:
        self.resting[index] = self.handles[index].info.remote()

    def _wake(self) -> None:
        if not self.resting:
            return
        ready, _ = self._ray.wait(list(self.resting.values()), num_returns=len(self.resting),
                                  timeout=0)
        for index, ref in list(self.resting.items()):
            if ref in ready:
                del self.resting[index]
                try:
                    self._ray.get(ref)
                except self._ray.exceptions.ActorUnavailableError:
                    self._rest(index)  # still restarting: ask again next turn
                except Exception:  # noqa: BLE001 - dead for good (its node is gone)
                    self.gone.add(index)
        if len(self.gone) == len(self.handles):
            raise UserError("every resident runner of the pool is gone (`nas pool status` "
                            "shows them; `nas pool up` starts new ones)")

    @property
    def capacity(self) -> int:
        self._wake()
        return len(self.handles) - len(self.resting) - len(self.gone)

    @property
    def info(self) -> dict[str, Any]:
        return {"executor": self.kind, "slots": len(self.handles), "runners": len(self.handles)}

    def idle_runner(self) -> int:
        taken = set(self.busy.values()) | set(self.resting) | self.gone
        free = [i for i in range(len(self.handles)) if i not in taken]
        if not free:
            raise RuntimeError("every resident runner is busy")  # the loop keeps to capacity
        return free[0]

    def _start(self, request: Job) -> Any:
        index = self.idle_runner()
        self.busy[request.key] = index
        return self.handles[index].run.remote(self._payload(request), self.broker)

    def _worker_lost(self, key: str) -> None:
        if key in self.busy:
            self._rest(self.busy[key])

    def _released(self, key: str) -> None:
        super()._released(key)
        self.busy.pop(key, None)

    def _stop(self, key: str, ref: Any) -> None:
        """An actor's call cannot be force-cancelled: kill the runner's process (Ray
        restarts it, paying the imports again)."""
        index = self.busy.get(key)
        if index is None:
            return
        try:
            self._ray.kill(self.handles[index], no_restart=False)
        except Exception:  # noqa: BLE001 - the runner may be gone already
            pass
        self._rest(index)
