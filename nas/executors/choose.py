"""Which Ray executor a search or retrain trains on: resident runners when the cluster it was
told to use has usable ones, else one Ray task per trial."""

from __future__ import annotations

from nas.cluster import slots_of, start_ray
from nas.executors.base import Executor
from nas.executors.pool import PoolExecutor, find_runners
from nas.executors.ray_tasks import RayTaskExecutor


def ray_executor(*, address: str | None, workers: int | None, cpus_per_trial: float,
                 gpus_per_trial: float) -> tuple[Executor, str, str | None]:
    """Start or join Ray (`nas.cluster.start_ray`) and pick the executor. Returns it, how Ray
    came up ("started": shut it down after; "joined"; "": already up in this process), and
    why the cluster's resident runners are not used, if it has some."""
    how = start_ray(address, slots=workers, cpus_per_trial=cpus_per_trial)
    try:
        return _choose(how, workers=workers, cpus_per_trial=cpus_per_trial,
                       gpus_per_trial=gpus_per_trial)
    except BaseException:
        if how == "started":  # nobody else will shut it down
            import ray

            ray.shutdown()
        raise


def _choose(how: str, *, workers: int | None, cpus_per_trial: float,
            gpus_per_trial: float) -> tuple[Executor, str, str | None]:
    note = None
    if how != "started":  # a cluster we were told to use may hold warm runners
        from workers.ray_task import pool_broker  # imports Ray

        handles, note = find_runners(cpus=cpus_per_trial, gpus=gpus_per_trial, limit=workers)
        if handles:
            return PoolExecutor(handles, broker=pool_broker()), how, None
    slots = slots_of(workers=workers, cpus_per_trial=cpus_per_trial,
                     gpus_per_trial=gpus_per_trial)
    return RayTaskExecutor(slots=slots, cpus=cpus_per_trial, gpus=gpus_per_trial), how, note
