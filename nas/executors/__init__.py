"""Where and how trials run: the `Executor` protocol and its implementations.

- `ray_tasks.RayTaskExecutor`: one Ray task per trial (the default);
- `pool.PoolExecutor`: the resident runners of `nas pool up`;
- `local.LocalExecutor`: in-process, scripted trials on a controllable clock (tests);
- `choose.ray_executor`: which of the Ray ones a search or retrain gets.
"""

from nas.executors.base import Epoch, Executor, Job, Lost, Result

__all__ = ["Epoch", "Executor", "Lost", "Result", "Job"]
