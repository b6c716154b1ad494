"""What a dead driver left behind: trials RUNNING in Optuna, with or without their run row."""

from __future__ import annotations

import math
from typing import Any

import optuna

from db import Store
from nas.losses import lost_trials
from nas.proposer import Proposer
from nas.recorder import Recorder, Subject
from nas.study import close_dead_searches, counted_trials, fail_trial

TrialState = optuna.trial.TrialState


def close_orphan(t: optuna.trial.FrozenTrial, *, study: optuna.Study, store: Store,
                 recorder: Recorder, proposer: Proposer, recipe: Any, max_retries: int) -> None:
    """Close trial `t`, which a dead driver left RUNNING.

    If its run row was written (the driver died between the store and the tell), Optuna is
    told what the row says and the row stays. Otherwise the trial gets a failed
    `driver_lost` row and a retry while it has retries left.
    """
    row = store.run_for_trial(study.study_name, t.number)
    if row is not None and row.state in ("complete", "pruned"):
        acc = row.val_accuracy
        if row.state == "pruned":
            study.tell(t.number, state=TrialState.PRUNED)
            return
        if acc is not None and math.isfinite(acc):
            study.tell(t.number, proposer.values_of(row.params or 0, row.flops or 0, acc,
                                                    row.latency_ms))
            return
    if row is None or row.state == "running":
        subject = subject_of(t, proposer, recipe)
        if subject is not None:
            recorder.lost(subject, "driver_lost", [])
    fail_trial(study, t.number, t.params, t.user_attrs, max_retries=max_retries)


def subject_of(t: optuna.trial.FrozenTrial, proposer: Proposer, recipe: Any) -> Subject | None:
    """The run row's subject for a trial of an earlier driver, from its parameters."""
    found = proposer.spec_of(t.params)
    if found is None:
        return None
    spec, cost = found
    started = t.datetime_start.timestamp() if t.datetime_start else None
    return Subject(t.number, spec, recipe.recipe_id, recipe.dataset, recipe.epochs, cost.params,
                   cost.flops, retry_of=t.user_attrs.get("retry_of"), started=started)


def recover_study(study: optuna.Study, *, store: Store, recorder: Recorder, proposer: Proposer,
                  recipe: Any, config: Any, search_id: int, pruning: Any, cache: Any) -> int:
    """Refuse a study another live driver searches; close what dead drivers left RUNNING (a
    failed run row each, and a retry while it has retries left); tell the pruning rule the
    rungs earlier runs reached and the duplicate cache and the recorder their runs. Returns
    the trials that count toward --trials."""
    close_dead_searches(store, config.study, own=search_id, heartbeat_s=config.heartbeat_s)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        close_orphan(t, study=study, store=store, recorder=recorder, proposer=proposer,
                     recipe=recipe, max_retries=config.max_retries)
    runs = store.runs(study.study_name)
    accounted = counted_trials(trials := study.get_trials(deepcopy=False), lost_trials(runs))
    pruning.resume(trials)
    for run in runs:
        cache.remember(run)
        recorder.seen(run)
    return accounted
