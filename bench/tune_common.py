"""The Ray Tune side of the comparisons, set up the way its documentation shows.

`Tuner` + `OptunaSearch` (a define-by-run function that calls the same
`SearchSpace.suggest`) + `ASHAScheduler`, and a function trainable that calls the same
`workers.run_trial` with a reporter forwarding every epoch to `tune.report`. Tune's own
defaults are kept (notably `reuse_actors=False`: one actor per trial), except that
concurrency is capped at the same 2 trials resnas runs and each trial asks for 1 CPU.

A trial's compute is measured the way resnas measures it: seconds inside `run_trial`
(`compute_s`, reported with every epoch, and `duration_s` written by the trainable when the
trial was not stopped early), so actor start-up and imports are not counted as compute.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher


def trainable(config: dict[str, Any]) -> None:
    """Train `config["spec"]` with `config["recipe"]` through `run_trial`; report each epoch."""
    import torch
    from ray import tune

    from workers import run_trial

    torch.set_num_threads(1)
    t0 = time.perf_counter()

    class TuneReporter:
        def report(self, epoch: int, metrics: dict[str, Any]) -> bool:
            tune.report(
                {
                    "val_accuracy": float(metrics.get("val_accuracy") or 0.0),
                    "val_loss": float(metrics.get("val_loss") or 0.0),
                    "epoch": int(epoch),
                    "compute_s": time.perf_counter() - t0,
                }
            )
            return False  # Tune stops a trial itself (the scheduler ends the actor)

    result = run_trial({"spec": config["spec"], "config": config["recipe"]}, reporter=TuneReporter())
    log_dir = config.get("log_dir")
    if log_dir:
        record = {
            "state": result.state,
            "val_accuracy": result.val_accuracy,
            "duration_s": result.duration_s,
            "started": result.started,
            "finished": result.finished,
            "arch_id": result.arch_id,
            "epochs": len(result.epochs),
        }
        Path(log_dir, f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))


class BudgetSearcher(Searcher):
    """Wraps a searcher; stops suggesting once finished trials hold `budget_s` of compute.

    The same rule as resnas's `--max-compute-hours`: trials in flight when the budget is
    reached run to their end."""

    def __init__(self, inner: Searcher, budget_s: float) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.budget_s = budget_s
        self.spent_s = 0.0
        self._last: dict[str, float] = {}

    def set_search_properties(self, metric, mode, config, **spec):  # noqa: ANN001
        ok = self.inner.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.inner.metric, self.inner.mode
        return ok

    def suggest(self, trial_id: str):  # noqa: ANN201
        if self.spent_s >= self.budget_s:
            return Searcher.FINISHED
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = float(result.get("compute_s") or 0.0)
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        last = self._last.pop(trial_id, 0.0)
        if result and result.get("compute_s") is not None:
            last = max(last, float(result["compute_s"]))
        self.spent_s += last
        self.inner.on_trial_complete(trial_id, result=result, error=error)


def run_tuner(
    *,
    param_space: dict[str, Any] | None = None,
    search_alg: Searcher | None = None,
    scheduler: Any = None,
    num_samples: int = 1,
    max_concurrent: int = 2,
    metric: str = "val_accuracy",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float]:
    """Run a Tuner with `trainable`; returns (each trial's last metrics, the trainable's own
    records of unstopped trials, wall_s, time.time() at the start). Temporary directories
    are removed.

    Wall time counts from the call of `Tuner.fit` to its return (Ray is already up)."""
    from ray import tune

    log_dir = tempfile.mkdtemp(prefix="resnas-bench-tune-log-")
    storage = tempfile.mkdtemp(prefix="resnas-bench-tune-")
    space = dict(param_space or {})
    space["log_dir"] = log_dir
    t0, t0_epoch = time.perf_counter(), time.time()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=f"bench-{uuid.uuid4().hex[:8]}", storage_path=storage, verbose=0,
        ),
    )
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    records = [json.loads(p.read_text()) for p in Path(log_dir).glob("*.json")]
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        metrics.pop("config", None)
        metrics["error"] = None if result.error is None else type(result.error).__name__
        trials.append(metrics)
    for d in (log_dir, storage):
        shutil.rmtree(d, ignore_errors=True)
    return trials, records, wall, t0_epoch
