"""The search loop on the in-process executor: scheduling, retries, budgets, duplicates,
pruning and recovery, as exact sequences on a simulated clock (no Ray, no training).

Each trial's curve comes from its architecture (a hash of the spec), so a test knows what
every trial will report, and nothing depends on how busy the machine is.
"""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import replace

import optuna
import pytest

from db import Store
from nas.config import build_config
from nas.errors import UserError
from nas.events import Progress
from nas.executors.local import LocalExecutor, Script
from nas.search import Search, run_search
from search_spaces import load_space, zoo

TINY_SPACE = """
name: tiny
description: four architectures only
stem: cifar
stem_width: 8
stages:
  - {stride: 1, depth: [1], width: [8], skip: [identity, projection]}
  - {stride: 2, depth: [1], width: [16], skip: [identity, projection]}
"""
COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                          optuna.trial.TrialState.FAIL)


def quality(spec: dict) -> float:
    """A fixed accuracy in (0.1, 0.9) per architecture."""
    digest = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()
    return 0.1 + 0.8 * int(digest[:8], 16) / 0xFFFFFFFF


def curve(request, *, epoch_s: float = 10.0, **script) -> Script:
    """A rising learning curve towards the architecture's quality."""
    q, epochs = quality(request.spec), request.config["epochs"]
    points = [{"val_accuracy": q * (i + 1) / epochs, "val_loss": 1 - q} for i in range(epochs)]
    return Script(epochs=points, epoch_s=epoch_s, **script)


def config(url: str, study: str = "loop", **overrides):
    train = overrides.pop("train", {"epochs": 2})
    flags = {"study": study, "storage": url, "space": "resnet", "trials": 6, "workers": 2,
             "seed": 1, "pruner": "none", "train": train}
    flags.update(overrides)
    return build_config({}, flags, "flags")


def trials_of(url: str, study: str = "loop"):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_the_loop_keeps_every_slot_busy_and_never_more(sqlite_url):
    executor = LocalExecutor(curve, capacity=3)
    summary = run_search(config(sqlite_url, trials=7, sampler="random"), executor=executor)
    assert summary.counts["complete"] + summary.counts["cached"] == 7
    assert executor.max_running == 3
    # Three start at once; each later one starts when one has ended, in trial order.
    submits = [key for what, key in executor.log if what == "submit"]
    assert [k.split(":")[0] for k in submits[:3]] == ["0", "1", "2"]
    first_result = next(i for i, (what, _) in enumerate(executor.log) if what == "result")
    assert sum(1 for what, _ in executor.log[:first_result] if what == "submit") == 3


def test_trials_count_the_study_total_and_a_resume_adds_only_the_rest(sqlite_url):
    run_search(config(sqlite_url, trials=4), executor=LocalExecutor(curve))
    again = run_search(config(sqlite_url, trials=6), executor=LocalExecutor(curve))
    assert sum(again.counts.values()) == 2
    assert len(trials_of(sqlite_url)) == 6
    assert sorted(r.trial_number for r in Store(sqlite_url).runs("loop")) == list(range(6))


def test_a_lost_worker_is_retried_as_a_linked_trial_until_the_retries_run_out(sqlite_url):
    def dies_for(numbers):
        def trainer(request):
            number = int(request.key.split(":")[0])
            return curve(request, lost_after_s=15.0 if number in numbers else None)
        return trainer

    # Epochs of 10 s; trials 1 and 2 die 15 s after they start. Trial 1's retry is queued
    # at once (trial 2, same parameters) and dies too; the retry of that (4) trains.
    summary = run_search(config(sqlite_url, trials=4, max_retries=2),
                         executor=LocalExecutor(dies_for({1, 2}), capacity=2))
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("loop")}
    trials = trials_of(sqlite_url)
    assert [(n, runs[n].state, runs[n].retry_of) for n in sorted(runs)] == [
        (0, "complete", None), (1, "failed", None), (2, "failed", 1),
        (3, "complete", None), (4, "complete", 2), (5, "complete", None)]
    assert runs[1].reason.startswith("worker_lost") and len(Store(sqlite_url).epochs(runs[1].id)) == 1
    assert trials[4].params == trials[1].params and trials[4].user_attrs["attempt"] == 2
    assert [t.state for t in trials] == [COMPLETE, FAIL, FAIL, COMPLETE, COMPLETE, COMPLETE]
    # The two lost attempts are not failures: their retries count; the summary says so.
    assert summary.counts == {"complete": 4, "pruned": 0, "failed": 0, "cached": 0,
                              "infeasible": 0, "retried": 2}

    # With no retries left the loss is shown as failed but does not count toward --trials:
    # nothing was learnt from it, so another trial takes its place (on a resume too).
    other = sqlite_url.replace("nas.db", "noretry.db")  # no runs to answer duplicates from
    summary = run_search(config(other, trials=3, max_retries=0),
                         executor=LocalExecutor(dies_for({0}), capacity=1))
    assert (summary.counts["failed"], summary.counts["complete"]) == (1, 3)
    assert len(trials_of(other)) == 4 and summary.counted == 3
    again = run_search(config(other, trials=3, max_retries=0), executor=LocalExecutor(curve))
    assert sum(again.counts.values()) == 0 and again.counted == 3


def test_a_compute_budget_stops_proposing_and_lets_running_trials_finish(sqlite_url):
    # 2 epochs of 10 s: 20 s a trial, 2 at a time, 100 s of compute. At 40 s, 80 s are
    # spent and two more start; at 60 s, 120 s are: nothing more is proposed.
    summary = run_search(config(sqlite_url, trials=50, max_compute_hours=100 / 3600),
                         executor=LocalExecutor(curve, capacity=2))
    runs = Store(sqlite_url).runs("loop")
    assert summary.status == "budget"
    assert len(runs) == 6 and all(r.state == "complete" for r in runs)
    assert summary.compute_s == pytest.approx(120.0)
    assert all(t.state.is_finished() for t in trials_of(sqlite_url))


def test_a_timeout_counts_on_the_loops_clock(sqlite_url):
    # The clock starts at the first proposal; trials take 20 s; 45 s: three rounds start.
    summary = run_search(config(sqlite_url, trials=50, timeout=45.0),
                         executor=LocalExecutor(curve, capacity=2))
    assert summary.status == "budget"
    assert len(Store(sqlite_url).runs("loop")) == 6


def test_a_duplicate_of_a_training_trial_waits_for_it_and_is_answered(sqlite_url, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    executor = LocalExecutor(curve, capacity=4)
    summary = run_search(config(sqlite_url, space=str(space), trials=10, sampler="random"),
                         executor=executor)
    runs = Store(sqlite_url).runs("loop")
    trained = [r for r in runs if r.cached_from is None]
    assert len(runs) == 10
    submits = [k for w, k in executor.log if w == "submit"]
    assert len({r.arch_id for r in trained}) == len(trained) == len(submits)
    assert len(trained) <= 4 and summary.counts["cached"] == 10 - len(trained)
    by_id = {r.id: r for r in runs}
    for r in runs:
        if r.cached_from is not None:
            source = by_id[r.cached_from]
            assert (source.arch_id, source.val_accuracy, source.state) == (
                r.arch_id, r.val_accuracy, r.state)
    # Another study on the same database trains none of them again.
    again = run_search(config(sqlite_url, "other", space=str(space), trials=4, sampler="random"),
                       executor=(other := LocalExecutor(curve, capacity=4)))
    trained_ids = {r.arch_id for r in trained}
    fresh = [r for r in Store(sqlite_url).runs("other") if r.cached_from is None]
    assert {r.arch_id for r in fresh}.isdisjoint(trained_ids)
    assert len([w for w, _ in other.log if w == "submit"]) == len(fresh)
    assert again.counts["cached"] == 4 - len(fresh)


def test_duplicates_of_a_failed_trial_train_one_at_a_time(sqlite_url, tmp_path):
    space = tmp_path / "one.yaml"
    space.write_text(TINY_SPACE.replace("[identity, projection]", "[identity]"))
    first = {"failed": False}

    def fails_once(request):
        if not first["failed"]:
            first["failed"] = True
            return curve(request, state="failed", reason="exception: boom")
        return curve(request)

    executor = LocalExecutor(fails_once, capacity=3)
    summary = run_search(config(sqlite_url, space=str(space), trials=3), executor=executor)
    runs = sorted(Store(sqlite_url).runs("loop"), key=lambda r: r.trial_number)
    # Trials 1 and 2 waited on trial 0; it failed, so trial 1 trained and answered trial 2.
    assert [(r.state, r.cached_from is not None) for r in runs] == [
        ("failed", False), ("complete", False), ("complete", True)]
    assert [w for w, _ in executor.log if w == "submit"] == ["submit", "submit"]
    assert summary.counts == {"complete": 1, "pruned": 0, "failed": 1, "cached": 1,
                              "infeasible": 0, "retried": 0}


def test_infeasible_candidates_are_told_never_trained_and_not_counted(sqlite_url):
    limit = 40_000
    executor = LocalExecutor(curve)
    summary = run_search(config(sqlite_url, trials=6, max_params=limit), executor=executor)
    runs = Store(sqlite_url).runs("loop")
    trials = trials_of(sqlite_url)
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    assert summary.counts["infeasible"] == len(infeasible) >= 1
    assert len(runs) == 6 and all(r.params <= limit for r in runs)
    assert all(t.constraints["params"] > 0 for t in infeasible)
    assert all(t.state == COMPLETE and t.values[0] == 0.0 for t in infeasible)
    assert len(trials) == 6 + len(infeasible)


def test_impossible_constraints_end_the_search_with_a_user_error(sqlite_url, monkeypatch):
    import nas.search

    monkeypatch.setattr(nas.search, "MAX_CONSECUTIVE_INFEASIBLE", 20)
    search = Search(config(sqlite_url, trials=5, max_params=10), executor=LocalExecutor(curve))
    with pytest.raises(UserError, match="last 20 candidates .* constraints look impossible"):
        search.run()
    assert Store(sqlite_url).searches("loop")[0].status == "failed"


def test_asha_prunes_on_the_reported_curves(sqlite_url):
    executor = LocalExecutor(curve, capacity=2)
    summary = run_search(config(sqlite_url, trials=12, pruner="asha", sampler="random",
                                train={"epochs": 4}), executor=executor)
    store = Store(sqlite_url)
    runs = {r.trial_number: r for r in store.runs("loop")}
    trials = {t.number: t for t in trials_of(sqlite_url)}
    assert summary.counts["pruned"] >= 3
    for n, r in runs.items():
        assert trials[n].state == {"complete": COMPLETE, "pruned": PRUNED}[r.state]
        epochs = len(store.epochs(r.id))
        assert (epochs == 4) == (r.state == "complete")
        assert sorted(trials[n].intermediate_values) == list(range(1, epochs + 1))
    # The same search gives the same decisions: nothing here depends on timing.
    rerun = run_search(config(sqlite_url.replace("nas.db", "again.db"), trials=12, pruner="asha", sampler="random",
                              train={"epochs": 4}), executor=LocalExecutor(curve, capacity=2))
    assert rerun.counts == summary.counts


def test_multi_objective_search_prunes_by_cost_and_reports_its_front(sqlite_url):
    summary = run_search(config(sqlite_url, trials=12, objectives="accuracy,params",
                                pruner="asha", sampler="random", train={"epochs": 3}),
                         executor=LocalExecutor(curve, capacity=2))
    front = summary.best
    assert summary.counts["pruned"] >= 1 and front
    for a in front:  # no point of the front dominates another
        for b in front:
            assert a is b or not (a["val_accuracy"] >= b["val_accuracy"]
                                  and a["params"] <= b["params"])
    study = optuna.load_study(study_name="loop", storage=sqlite_url)
    assert study.metric_names == ["val_accuracy", "params"]


def test_enqueued_architectures_run_first_once_each(sqlite_url):
    ids = [replace(zoo.get(n), in_channels=1).arch_id for n in ("resnet20", "resnet32")]
    cfg = dict(space="skip-ablation", sampler="random", enqueue=("resnet20", "resnet32",
                                                                   "resnet20"))
    run_search(config(sqlite_url, trials=3, **cfg), executor=LocalExecutor(curve))
    runs = sorted(Store(sqlite_url).runs("loop"), key=lambda r: r.trial_number)
    assert [r.arch_id for r in runs[:2]] == ids
    # Resumed with the same --enqueue, the study holds them already: nothing is enqueued twice.
    run_search(config(sqlite_url, trials=5, **cfg), executor=LocalExecutor(curve))
    fixed = [t.number for t in trials_of(sqlite_url) if "fixed_params" in t.system_attrs]
    assert fixed == [0, 1]


def test_enqueued_architectures_left_waiting_are_not_queued_again(sqlite_url):
    cfg = dict(space="skip-ablation", sampler="random", enqueue=("resnet20", "resnet32"))
    run_search(config(sqlite_url, trials=1, **cfg), executor=LocalExecutor(curve))
    waiting = [t for t in trials_of(sqlite_url) if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1  # resnet32: the study was full before it was asked for
    run_search(config(sqlite_url, trials=3, **cfg), executor=LocalExecutor(curve))
    fixed = [t.system_attrs["fixed_params"] for t in trials_of(sqlite_url)
             if "fixed_params" in t.system_attrs]
    assert len(fixed) == 2 and fixed[0] != fixed[1]


def test_a_trial_queued_in_the_study_by_another_process_runs_first(sqlite_url):
    space = load_space("skip-ablation")
    resnet20, resnet32 = (replace(zoo.get(n), in_channels=1) for n in ("resnet20", "resnet32"))
    study = optuna.create_study(study_name="loop", storage=sqlite_url, direction="maximize")
    study.enqueue_trial(space.params_for(resnet32))
    run_search(config(sqlite_url, trials=2, space="skip-ablation", sampler="random",
                      enqueue=("resnet20",)), executor=LocalExecutor(curve))
    runs = sorted(Store(sqlite_url).runs("loop"), key=lambda r: r.trial_number)
    assert [r.arch_id for r in runs] == [resnet32.arch_id, resnet20.arch_id]


def test_an_architecture_outside_the_space_cannot_be_enqueued(sqlite_url):
    with pytest.raises(UserError, match="not in the space"):
        run_search(config(sqlite_url, space="skip-ablation", enqueue=("resnet50",)),
                   executor=LocalExecutor(curve))


def test_grid_search_covers_the_grid_once_and_stops(sqlite_url, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    summary = run_search(config(sqlite_url, space=str(space), trials=10, sampler="grid"),
                         executor=LocalExecutor(curve))
    runs = Store(sqlite_url).runs("loop")
    assert summary.status == "finished"
    assert len(runs) == 4 and len({r.arch_id for r in runs}) == 4
    assert all(r.cached_from is None for r in runs)


class StopAt(Progress):
    """Sends this process `sig` when trial `number` reports epoch `epoch`."""

    def __init__(self, sig: int, number: int = 2, epoch: int = 1) -> None:
        self.sig, self.number, self.at_epoch = sig, number, epoch

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        if (number, epoch) == (self.number, self.at_epoch):
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_stop_signal_ends_the_search_at_the_next_turn_and_a_resume_finishes_it(sig, sqlite_url):
    executor = LocalExecutor(curve, capacity=2)
    summary = run_search(config(sqlite_url, trials=6, train={"epochs": 3}),
                         progress=StopAt(sig), executor=executor)
    assert summary.status == "interrupted"
    cancelled = sorted(k.split(":")[0] for w, k in executor.log if w == "cancel")
    assert cancelled == ["2", "3"]
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("loop")}
    assert [(n, runs[n].state, runs[n].reason) for n in (2, 3)] == [
        (2, "failed", "interrupted"), (3, "failed", "interrupted")]
    assert Store(sqlite_url).searches("loop")[-1].status == "interrupted"
    assert not [t for t in trials_of(sqlite_url) if t.state == optuna.trial.TrialState.RUNNING]
    # The same command again: the two are retried, and the study ends with 6 counted.
    again = run_search(config(sqlite_url, trials=6, train={"epochs": 3}),
                       executor=LocalExecutor(curve, capacity=2))
    trials = trials_of(sqlite_url)
    assert again.status == "finished"
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    assert retried == {2, 3}
    assert len([t for t in trials if t.number not in retried and t.state.is_finished()]) == 6


def test_a_dead_driver_that_recorded_its_last_result_is_not_retried(sqlite_url):
    # The driver wrote the run row and died before telling Optuna: the row is the truth.
    run_search(config(sqlite_url, trials=2), executor=LocalExecutor(curve))
    store = Store(sqlite_url)
    done = store.run_for_trial("loop", 1)
    study = optuna.load_study(study_name="loop", storage=sqlite_url)
    orphan = study.ask()
    load_space("resnet").suggest(orphan, in_channels=1, num_classes=10)
    store.record_run(replace(done, id=None, trial_number=orphan.number))
    run_search(config(sqlite_url, trials=3, heartbeat_s=0.01), executor=LocalExecutor(curve))
    closed = trials_of(sqlite_url)[orphan.number]
    assert closed.state == COMPLETE and closed.values == [done.val_accuracy]
    row = store.run_for_trial("loop", orphan.number)
    assert (row.state, row.val_accuracy) == ("complete", done.val_accuracy)
    assert len(trials_of(sqlite_url)) == 3  # nothing retried, nothing more to run


def test_a_dead_drivers_running_trials_are_closed_retried_and_recorded(sqlite_url):
    # A driver that died mid-trial: its search row says running, its trial is RUNNING.
    run_search(config(sqlite_url, trials=2), executor=LocalExecutor(curve))
    study = optuna.load_study(study_name="loop", storage=sqlite_url)
    orphan = study.ask()
    load_space("resnet").suggest(orphan, in_channels=1, num_classes=10)
    store = Store(sqlite_url)
    store.start_search("loop", {}, host="elsewhere", pid=1)  # heartbeat now: looks alive
    with pytest.raises(UserError, match="being searched right now"):
        run_search(config(sqlite_url, trials=4, heartbeat_s=60), executor=LocalExecutor(curve))
    run_search(config(sqlite_url, trials=4, heartbeat_s=0.01), executor=LocalExecutor(curve))
    runs = {r.trial_number: r for r in store.runs("loop")}
    assert (runs[orphan.number].state, runs[orphan.number].reason) == ("failed", "driver_lost")
    retry = [r for r in runs.values() if r.retry_of == orphan.number]
    assert len(retry) == 1 and retry[0].state == "complete"
    assert [s.status for s in store.searches("loop")] == ["finished", "interrupted", "failed",
                                                          "finished"]


def test_each_trial_carries_what_the_dashboard_shows(sqlite_url):
    run_search(config(sqlite_url, trials=3, sampler="random"), executor=LocalExecutor(curve))
    study = optuna.load_study(study_name="loop", storage=sqlite_url)
    assert study.metric_names == ["val_accuracy"]
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("loop")}
    for t in study.trials:
        attrs = t.user_attrs
        assert {"arch_id", "architecture"} <= set(attrs)
        assert attrs["arch_id"] == runs[t.number].arch_id
        assert f"({runs[t.number].params:,} params" in attrs["architecture"]
        assert sorted(t.intermediate_values) == [1, 2]  # the learning curve, without pruning


# -- defaults and `nas stop` ------------------------------------------------------------------
def test_a_rung_prunes_only_once_enough_trials_have_reached_it():
    from nas.pruning import PruningRule

    study = optuna.create_study(direction="maximize",
                                pruner=PruningRule("asha", epochs=8,
                                                   multi_objective=False).study_pruner())
    rule = PruningRule("asha", epochs=8, multi_objective=False, min_at_rung=4)
    decisions = []
    for acc in (0.9, 0.2, 0.1, 0.05, 0.01):  # each worse than the one before
        trial = study.ask()
        decisions.append(rule.should_stop(trial, 1, acc, (0,)))
    # The first three pass rung 1 whatever they score; from the fourth on, ASHA decides.
    assert decisions == [False, False, False, True, True]
    plain = PruningRule("asha", epochs=8, multi_objective=False, min_at_rung=1)
    again = optuna.create_study(direction="maximize", pruner=plain.study_pruner())
    assert [plain.should_stop(again.ask(), 1, a, (0,)) for a in (0.9, 0.2)] == [False, True]


def test_a_short_default_search_trains_a_third_of_its_trials_to_the_end(sqlite_url, tmp_path):
    # The README's first search: 12 trials of 8 epochs, 2 at a time, the default pruner;
    # replayed on real digits training curves (bench/data/digits-curves.json.gz).
    table = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "data",
                         "digits-curves.json.gz")
    from nas.tables import table_space

    for seed in range(5):
        url = f"sqlite:///{tmp_path / f's{seed}.db'}"
        summary = run_search(build_config({}, {
            "study": "short", "storage": url, "trials": 12, "workers": 2, "seed": seed,
            "replay": table, "space": table_space(table), "train": {"epochs": 8}}, "flags"))
        assert summary.counts["complete"] >= 4, (seed, summary.counts)


def test_nas_stop_ends_a_search_after_the_trials_in_flight_and_a_resume_finishes(sqlite_url):
    class StopAfterFirst(Progress):
        def trial(self, event, counts, best):
            if sum(counts.values()) == 1:
                Store(sqlite_url).request_stop("loop")

    cfg = config(sqlite_url, trials=10, heartbeat_s=5)
    summary = run_search(cfg, progress=StopAfterFirst(), executor=LocalExecutor(curve))
    assert summary.status == "stopped"
    done = len(Store(sqlite_url).runs("loop"))
    assert 2 <= done < 10  # what ran when the stop was seen finished; nothing new started
    assert not [t for t in trials_of(sqlite_url) if t.state == optuna.trial.TrialState.RUNNING]
    assert [s.status for s in Store(sqlite_url).searches("loop")] == ["interrupted"]
    resumed = run_search(cfg, executor=LocalExecutor(curve))
    assert resumed.status == "finished" and len(Store(sqlite_url).runs("loop")) == 10


def test_a_hung_worker_is_given_up_at_its_deadline_and_retried(sqlite_url):
    # Trial 1 reports one epoch and then nothing (a SIGSTOPped worker). The recipe's time
    # limit is 100 s; the loop gives the trial up at 100 s + the grace, kills it through
    # the executor and retries it like a lost worker; the search ends.
    from nas.executors.base import DEADLINE_GRACE_S, DEADLINE_GRACE_SHARE

    def trainer(request):
        hangs = request.key.split(":")[0] == "1"
        return curve(request, hangs_after_epochs=1 if hangs else None)

    executor = LocalExecutor(trainer, capacity=2)
    started = executor.now()
    summary = run_search(config(sqlite_url, trials=3, train={"epochs": 2, "time_limit_s": 100}),
                         executor=executor)
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("loop")}
    assert runs[1].state == "failed" and runs[1].reason.startswith("deadline")
    retry = next(r for r in runs.values() if r.retry_of == 1)
    assert retry.state == "complete"
    assert ("cancel", next(k for w, k in executor.log if k.startswith("1:"))) in executor.log
    assert summary.status == "finished" and summary.counts["complete"] == 3
    assert summary.counts["retried"] == 1
    deadline = 100 + DEADLINE_GRACE_S + DEADLINE_GRACE_SHARE * 100
    assert deadline <= executor.now() - started < deadline + 60  # given up at its deadline
    assert not [t for t in trials_of(sqlite_url) if t.state == optuna.trial.TrialState.RUNNING]


def test_without_a_time_limit_a_trial_has_no_deadline():
    from nas.executors.base import Job

    assert Job("k", {}, {"epochs": 2}).deadline_s is None
    assert Job("k", {}, {"time_limit_s": 40}).deadline_s > 40


class _Watching(Progress):
    """Reads the search row at each tick of the display (the heartbeat has been written)."""

    def __init__(self, url: str, study: str = "loop") -> None:
        self.store, self.study, self.live = Store(url), study, []

    def tick(self, snapshot) -> None:
        self.live.append(self.store.searches(self.study)[-1].live)


def test_a_silent_worker_without_a_time_limit_is_given_up_as_stalled(sqlite_url):
    # Trial 1 reports one epoch and then nothing, not even a beat (a SIGSTOPped worker); the
    # recipe has no time limit, so only the silence can tell. Trial 0's epochs take 200 s,
    # longer than the stall limit, but it beats all along: it is not touched.
    from nas.store_commands import print_status

    def trainer(request):
        number = int(request.key.split(":")[0])
        return curve(request, epoch_s=200.0 if number == 0 else 10.0,
                     hangs_after_epochs=1 if number == 1 else None)

    executor = LocalExecutor(trainer, capacity=2, beat_s=1.0)
    watching = _Watching(sqlite_url)
    summary = run_search(config(sqlite_url, trials=3, stall_s=60, heartbeat_s=10),
                         executor=executor, progress=watching)
    runs = {r.trial_number: r for r in Store(sqlite_url).runs("loop")}
    assert runs[0].state == "complete" and runs[0].retry_of is None
    assert runs[1].state == "failed" and runs[1].reason.startswith("stalled: no sign of life")
    assert next(r for r in runs.values() if r.retry_of == 1).state == "complete"
    assert ("cancel", next(k for w, k in executor.log if k.startswith("1:"))) in executor.log
    assert summary.status == "finished" and summary.counts["complete"] == 3
    # While it was silent, the heartbeats said so; `nas status` shows it stalled; the row
    # of the ended search holds no trials any more.
    silences = [live["1"] for live in watching.live if "1" in live]
    assert max(silences) >= 60 and min(silences) < 15
    assert not [t for t in trials_of(sqlite_url) if t.state == optuna.trial.TrialState.RUNNING]
    store = Store(sqlite_url)
    assert store.searches("loop")[-1].live == {}
    search_id = store.start_search("loop", {}, host="h", pid=os.getpid())
    store.heartbeat(search_id, live={"7": 41.0, "8": 2.0})
    out = __import__("io").StringIO()
    print_status(store, file=out)
    assert "trial 7: stalled, no sign of life for 41s" in out.getvalue()
    assert "trial 8" not in out.getvalue()


def test_silence_is_no_stall_on_an_executor_whose_workers_do_not_beat(sqlite_url):
    def trainer(request):
        return curve(request, epoch_s=500.0)

    summary = run_search(config(sqlite_url, trials=2, stall_s=60), executor=LocalExecutor(trainer))
    assert summary.counts["complete"] == 2 and summary.counts["retried"] == 0


def test_workers_that_keep_dying_stop_the_search_with_the_truth_recorded(sqlite_url):
    # Every worker dies 5-7 s in. Lost trials whose retries ran out do not count toward
    # --trials, so without a limit the search would feed trials to a broken cluster forever.
    from nas.losses import MIN_LOST_IN_A_ROW, WorkersFailing

    with pytest.raises(WorkersFailing, match="the workers keep dying: the last 10 trials"):
        run_search(config(sqlite_url, trials=50, max_retries=1),
                   executor=LocalExecutor(lambda r: curve(r, lost_after_s=5.0 + int(
                       r.key.split(":")[0]) % 3), capacity=2))
    runs = Store(sqlite_url).runs("loop")
    lost = [r for r in runs if r.reason and r.reason.startswith("worker_lost")]
    assert len(lost) == MIN_LOST_IN_A_ROW
    assert [r.reason for r in runs if r not in lost] == ["workers_failing"]  # the one in flight
    assert all(r.state == "failed" for r in runs)
    assert not [t for t in trials_of(sqlite_url) if t.state == optuna.trial.TrialState.RUNNING]
    search = Store(sqlite_url).searches("loop")[-1]
    assert search.status == "failed" and search.error.startswith("the workers keep dying")
    # Nothing was learnt, so nothing counts: a resume on healthy workers runs all 50.
    again = run_search(config(sqlite_url, trials=5), executor=LocalExecutor(curve))
    assert again.counted == 5 and again.counts["complete"] >= 1


class _CutsTheDatabase(Progress):
    """At trial `at`'s first epoch: takes the proxy in front of PostgreSQL down, for `for_s`
    seconds (None: until the test brings it back)."""

    def __init__(self, proxy, at: int, for_s: float | None) -> None:
        self.proxy, self.at, self.for_s, self.done = proxy, at, for_s, False

    def epoch(self, number: int, epoch: int, metrics: dict) -> None:
        if number == self.at and not self.done:
            self.done = True
            self.proxy.restart(self.for_s) if self.for_s else self.proxy.down()


def _through(proxy, pg_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)


def test_a_database_restart_mid_search_does_not_end_the_search(pg_url):
    # A real PostgreSQL behind a TCP proxy that drops every connection and refuses new ones
    # for 3 s while trials run (what a server restart does to its clients).
    from tests.faultproxy import FaultProxy

    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        url = _through(proxy, pg_url)
        cut = _CutsTheDatabase(proxy, at=2, for_s=3.0)
        summary = run_search(config(url, trials=5, db_retry_s=30), executor=LocalExecutor(curve),
                             progress=cut)
        assert cut.done and proxy.accepted > 1  # the connections were dropped and made anew
        assert summary.status == "finished" and summary.counts["complete"] == 5
        runs = Store(pg_url).runs("loop")
        assert sorted(r.trial_number for r in runs) == list(range(5))
        assert [t.state for t in trials_of(pg_url)] == [COMPLETE] * 5  # each told once
        assert Store(pg_url).searches("loop")[-1].status == "finished"


def test_a_database_gone_for_good_stops_the_search_with_the_cause_and_a_resume_finishes(pg_url):
    from db import DatabaseUnavailable
    from tests.faultproxy import FaultProxy

    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        url = _through(proxy, pg_url)
        cut = _CutsTheDatabase(proxy, at=2, for_s=None)
        cfg = config(url, trials=5, db_retry_s=1, heartbeat_s=0.5)
        with pytest.raises(DatabaseUnavailable) as raised:
            run_search(cfg, executor=LocalExecutor(curve), progress=cut)
        text = str(raised.value)
        assert "stopped answering" in text and "check the URL" not in text
        assert f"127.0.0.1:{proxy.port}" in text and "run the same command again" in text
        proxy.up()
        import time

        time.sleep(2.0)  # the stopped search's heartbeat goes stale (3 intervals)
        again = run_search(cfg, executor=LocalExecutor(curve))
    assert again.status == "finished" and again.counted == 5
    assert not [t for t in trials_of(pg_url) if t.state == optuna.trial.TrialState.RUNNING]
    runs = Store(pg_url).runs("loop")
    assert {r.state for r in runs if r.cached_from is None} <= {"complete", "failed"}
    # The row it could not close is closed by the resume, which found it dead.
    assert [s.status for s in Store(pg_url).searches("loop")] == ["interrupted", "finished"]


def test_a_space_without_a_parameter_limit_gets_the_default_one(sqlite_url, tmp_path):
    from nas.search import DEFAULT_MAX_PARAMS

    space = tmp_path / "typo.yaml"
    space.write_text(TINY_SPACE.replace("width: [16]", "width: [16, 20000]"))  # a typo'd width
    summary = run_search(config(sqlite_url, space=str(space), trials=3, sampler="random"),
                         executor=LocalExecutor(curve))
    trained = [r for r in Store(sqlite_url).runs("loop") if r.cached_from is None]
    assert trained and all(r.params <= DEFAULT_MAX_PARAMS for r in trained)
    skipped = [t for t in trials_of(sqlite_url) if t.user_attrs.get("infeasible")]
    assert summary.counts["infeasible"] == len(skipped) >= 1
