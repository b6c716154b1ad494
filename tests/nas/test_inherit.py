"""`--inherit`: children start from a trained parent that morphs into them.

Parents are picked from the store (`nas.inherit.Parents`), handed to the worker with the job,
recorded as `inherited_from`; a duplicate of a child is answered from it. The loop runs on the
in-process executor (scripted curves, real weights); one end-to-end search trains on real Ray
and exports a child.
"""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from db import RunRecord, Store
from nas.config import build_config
from nas.executors.local import LocalExecutor, Script
from nas.inherit import Parents, child_epochs, family_of
from nas.search import run_search
from search_spaces import ArchitectureSpec, build_model, load_space
from workers.config import TrainConfig


def _spec(depths=(1, 1, 1), widths=(8, 16, 32), skip="identity") -> ArchitectureSpec:
    params = {}
    for i, (d, w) in enumerate(zip(depths, widths, strict=True), start=1):
        params.update({f"stage{i}.depth": d, f"stage{i}.width": w, f"stage{i}.skip": skip})
    return load_space("resnet").suggest(optuna.trial.FixedTrial(params), in_channels=1,
                                        num_classes=10)


def _weights(spec: ArchitectureSpec) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in build_model(spec).state_dict().items()})


SMALL, DEEPER, WIDER = _spec(), _spec(depths=(2, 1, 2)), _spec(widths=(16, 16, 64))
DEEPEST = _spec(depths=(3, 2, 3))  # grows from DEEPER (and from SMALL)


def _run(study, number, spec, recipe: TrainConfig, acc, **kw) -> RunRecord:
    return RunRecord(id=None, study=study, trial_number=number, arch_id=spec.arch_id,
                     recipe_id=recipe.recipe_id, dataset=recipe.dataset, fidelity=recipe.epochs,
                     state=kw.pop("state", "complete"), val_accuracy=acc, **kw)


def _record(store, run, spec, recipe, weights=True):
    store.save_recipe(recipe.recipe_id, recipe.to_dict(), recipe.dataset)
    run.id = store.record_run(run, weights=_weights(spec) if weights else None, spec=spec,
                              input_size=(8, 8))
    return run


# -- choosing a parent -----------------------------------------------------------------------
def test_the_family_of_a_recipe_ignores_its_epochs_only():
    base = TrainConfig()
    assert family_of(base) == family_of(base.with_(epochs=2)) == family_of(base.to_dict())
    assert family_of(base.with_(lr=0.05)) != family_of(base)
    assert family_of({"no_such_field": 1}) is None
    assert child_epochs(8, None) == 2 and child_epochs(3, None) == 1 and child_epochs(8, 5) == 5


def test_the_parent_is_the_best_trained_run_that_morphs_into_the_candidate(storage_url):
    store = Store(storage_url)
    recipe = TrainConfig()
    _record(store, _run("a", 0, SMALL, recipe, 0.90), SMALL, recipe)
    deeper = _record(store, _run("b", 0, DEEPER, recipe, 0.95), DEEPER, recipe)  # another study
    _record(store, _run("a", 1, WIDER, recipe, 0.99), WIDER, recipe)  # does not morph into DEEPEST
    # Better, but each is ruled out: no weights kept, another recipe family, another dataset,
    # pruned, answered from the cache.
    _record(store, _run("a", 2, SMALL, recipe, 0.999), SMALL, recipe, weights=False)
    other = recipe.with_(lr=0.05)
    _record(store, _run("a", 3, SMALL, other, 0.999), SMALL, other)
    npz = recipe.with_(dataset="npz:/x.npz")
    _record(store, _run("a", 4, SMALL, npz, 0.999), SMALL, npz)
    _record(store, _run("a", 5, SMALL, recipe, 0.999, state="pruned"), SMALL, recipe)
    _record(store, _run("a", 6, SMALL, recipe, 0.999, cached_from=deeper.id), SMALL, recipe)

    parents = Parents(store, recipe.with_(epochs=3))  # the epochs do not matter
    found = parents.parent_for(DEEPEST)
    assert found.run.id == deeper.id and found.spec == DEEPER
    assert found.morph.deeper and not found.morph.wider
    described = found.describe("r0")
    assert described["parent_study"] == "b" and described["morph"] and described["search_recipe"] == "r0"
    assert parents.parent_for(DEEPER).run.val_accuracy == 0.90  # itself is no parent: SMALL is
    assert parents.parent_for(SMALL) is None  # nothing smaller
    assert parents.parent_for(_spec(skip="projection")) is None  # another skip: not a morph


def test_runs_finished_later_become_parents(sqlite_url):
    store = Store(sqlite_url)
    recipe = TrainConfig()
    now = [0.0]
    parents = Parents(store, recipe, clock=lambda: now[0])
    assert parents.parent_for(DEEPER) is None
    small = _record(store, _run("x", 0, SMALL, recipe, 0.9), SMALL, recipe)
    assert parents.parent_for(DEEPER) is None  # read again only after REFRESH_S
    now[0] = 31.0
    assert parents.parent_for(DEEPER).run.id == small.id
    parents.add(_record(store, _run("x", 1, DEEPER, recipe, 0.95), DEEPER, recipe), DEEPER)
    assert parents.parent_for(DEEPEST).spec == DEEPER


# -- in the search (in-process executor) -------------------------------------------------------
def _trainer(jobs):
    """Records each job; curves rise to a value per architecture; real (untrained) weights."""
    def trainer(job):
        jobs.append(job)
        spec = ArchitectureSpec.from_dict(job.spec)
        acc = {SMALL.arch_id: 0.80, DEEPER.arch_id: 0.85, DEEPEST.arch_id: 0.9}.get(spec.arch_id, 0.5)
        epochs = job.config["epochs"]
        points = [{"val_accuracy": acc * (i + 1) / epochs, "val_loss": 1 - acc}
                  for i in range(epochs)]
        extra = {"weights": _weights(spec)}
        if job.parent is not None:
            extra["inherited"] = {"gap": 0.0, "morph": ["..."]}
        return Script(epochs=points, extra=extra)
    return trainer


def _config(url, tmp_path, specs, **overrides):
    files = []
    for i, spec in enumerate(specs):
        path = tmp_path / f"arch{i}.json"
        path.write_text(json.dumps(spec.to_dict()))
        files.append(str(path))
    flags = {"study": "grow", "storage": url, "space": "resnet", "trials": len(specs),
             "workers": 1, "seed": 1, "pruner": "none", "enqueue": ",".join(files),
             "artifacts": str(tmp_path / "artifacts"), "train": {"epochs": 8}}
    flags.update(overrides)
    return build_config({}, flags, "flags")


def test_a_child_starts_from_its_parent_with_fewer_epochs_and_says_so(sqlite_url, tmp_path):
    jobs = []
    summary = run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER, DEEPEST], inherit=True),
                         executor=LocalExecutor(_trainer(jobs), capacity=1))
    assert summary.counts["complete"] == 3
    assert [j.parent is None for j in jobs] == [True, False, False]
    assert [j.config["epochs"] for j in jobs] == [8, 2, 2]
    assert jobs[1].parent["spec"] == SMALL.to_dict() and jobs[2].parent["spec"] == DEEPER.to_dict()
    assert isinstance(jobs[1].parent["weights"], bytes)

    store = Store(sqlite_url)
    runs = {r.trial_number: r for r in store.runs("grow")}
    assert runs[0].inherited_from is None and runs[0].fidelity == 8
    assert runs[1].inherited_from == runs[0].id and runs[2].inherited_from == runs[1].id
    assert runs[1].fidelity == 2
    assert store.recipe(runs[1].recipe_id)["epochs"] == 2
    assert runs[1].recipe_id != runs[0].recipe_id
    assert runs[2].extra["inherit"]["parent_trial"] == 1
    assert runs[2].extra["inherit"]["start_gap"] == 0.0
    trials = optuna.load_study(study_name="grow", storage=sqlite_url).get_trials()
    assert [t.user_attrs.get("inherited_from") for t in trials] == [None, 0, 1]


def test_without_inherit_every_candidate_trains_from_scratch(sqlite_url, tmp_path):
    jobs = []
    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER]),
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    assert [j.parent for j in jobs] == [None, None]
    assert [j.config["epochs"] for j in jobs] == [8, 8]
    assert all(r.inherited_from is None for r in Store(sqlite_url).runs("grow"))


def test_a_duplicate_of_a_child_is_answered_from_it_and_a_later_study_inherits_too(
        sqlite_url, tmp_path):
    jobs = []
    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER], inherit=True),
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    # Another study, same recipe: DEEPER is answered by the child; DEEPEST grows from it.
    summary = run_search(_config(sqlite_url, tmp_path, [DEEPER, DEEPEST], inherit=True,
                                 study="grow2"),
                         executor=LocalExecutor(_trainer(jobs), capacity=1))
    assert summary.counts["cached"] == 1 and summary.counts["complete"] == 1
    runs = {(r.study, r.trial_number): r for r in Store(sqlite_url).runs()}
    assert runs["grow2", 0].cached_from == runs["grow", 1].id
    assert runs["grow2", 0].fidelity == 2  # what was trained: the child's epochs
    assert runs["grow2", 1].inherited_from == runs["grow", 1].id
    assert len(jobs) == 3


def test_a_parent_whose_weights_file_is_gone_leaves_the_child_to_train_from_scratch(
        sqlite_url, tmp_path):
    import shutil

    jobs = []
    run_search(_config(sqlite_url, tmp_path, [SMALL], inherit=True),
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    shutil.rmtree(tmp_path / "artifacts")
    (tmp_path / "artifacts").mkdir()
    summary = run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER], inherit=True),
                         executor=LocalExecutor(_trainer(jobs), capacity=1))
    assert summary.counts["complete"] == 1
    assert jobs[-1].parent is None and jobs[-1].config["epochs"] == 8


def test_a_child_is_never_pruned_and_its_curve_is_not_a_rung(sqlite_url, tmp_path):
    # A child starts near its parent's accuracy and trains fewer epochs: its curve, shorter
    # and higher, would prune scratch trials that have just started.
    jobs = []
    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER], inherit=True, pruner="median"),
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    assert [j.parent is not None for j in jobs] == [False, True]
    assert [j.prunable for j in jobs] == [True, False]
    trials = optuna.load_study(study_name="grow", storage=sqlite_url).get_trials()
    assert len(trials[0].intermediate_values) == 8 and trials[1].intermediate_values == {}
    assert [r.state for r in Store(sqlite_url).runs("grow")] == ["complete", "complete"]


def test_a_parent_that_did_not_start_its_child_is_not_picked_again(sqlite_url, tmp_path):
    jobs = []

    def refuses_to_grow(job):
        if job.parent is not None and ArchitectureSpec.from_dict(job.spec) == DEEPER:
            jobs.append(job)
            return Script(epochs=[], state="failed", reason="inherit_gap: the child starts 0.3 away")
        return _trainer(jobs)(job)

    summary = run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER, DEEPEST], inherit=True),
                         executor=LocalExecutor(refuses_to_grow, capacity=1))
    assert summary.counts["failed"] == 1
    # DEEPEST grows from SMALL too, but SMALL's weights did not start DEEPER as SMALL.
    assert [j.parent is not None for j in jobs] == [False, True, False]
    assert jobs[2].config["epochs"] == 8
    failed = Store(sqlite_url).run_for_trial("grow", 1)
    assert failed.reason.startswith("inherit_gap") and failed.inherited_from is not None


def test_a_parent_whose_file_is_damaged_gives_way_to_the_next_best(sqlite_url, tmp_path):
    jobs = []
    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER]),  # both from scratch
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    deeper = Store(sqlite_url).run_for_trial("grow", 1)
    assert deeper.val_accuracy > Store(sqlite_url).run_for_trial("grow", 0).val_accuracy
    (tmp_path / "artifacts" / deeper.weights_artifact).write_bytes(b"not the weights")
    run_search(_config(sqlite_url, tmp_path, [DEEPEST], inherit=True, study="grow2"),
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    assert ArchitectureSpec.from_dict(jobs[-1].parent["spec"]) == SMALL
    assert Store(sqlite_url).run_for_trial("grow2", 0).extra["inherit"]["parent_trial"] == 0


def test_a_scratch_search_of_the_children_s_epochs_is_not_answered_by_a_child(
        sqlite_url, tmp_path):
    jobs = []
    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER], inherit=True),
               executor=LocalExecutor(_trainer(jobs), capacity=1))
    child = Store(sqlite_url).run_for_trial("grow", 1)
    assert child.fidelity == 2
    # The same recipe for 2 epochs from scratch: the child's training is not that.
    summary = run_search(_config(sqlite_url, tmp_path, [DEEPER], study="short",
                                 train={"epochs": 2}),
                         executor=LocalExecutor(_trainer(jobs), capacity=1))
    scratch = Store(sqlite_url).run_for_trial("short", 0)
    assert Store(sqlite_url).recipe(scratch.recipe_id) == Store(sqlite_url).recipe(child.recipe_id)
    assert summary.counts["complete"] == 1 and scratch.cached_from is None
    assert scratch.recipe_id != child.recipe_id and jobs[-1].parent is None


def test_retraining_a_child_trains_its_search_s_recipe(sqlite_url, tmp_path):
    from nas.retrain_choice import candidates_from_study

    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER], inherit=True),
               executor=LocalExecutor(_trainer([]), capacity=1))
    [best] = candidates_from_study(Store(sqlite_url), "grow")
    assert best.spec == DEEPER and best.search_fidelity == 2
    assert best.recipe["epochs"] == 8


def test_a_curve_table_of_a_study_that_grew_holds_only_curves_from_scratch(sqlite_url, tmp_path):
    from nas.tables import open_table

    run_search(_config(sqlite_url, tmp_path, [SMALL, DEEPER, WIDER], inherit=True),
               executor=LocalExecutor(_trainer([]), capacity=1))
    assert Store(sqlite_url).run_for_trial("grow", 1).inherited_from is not None
    table = open_table("study:grow", storage=sqlite_url)
    assert table.epochs == 8
    # DEEPER grew from SMALL; WIDER trained from scratch (its first shortcut is no projection).
    assert sorted(ArchitectureSpec.from_dict(r.extra["spec"]).arch_id for r in table.rows.values()) \
        == sorted([SMALL.arch_id, WIDER.arch_id])


# -- the worker --------------------------------------------------------------------------------
def test_the_worker_starts_a_child_as_its_trained_parent_and_trains_it():
    from workers import run_trial

    recipe = TrainConfig(epochs=2, cpu_threads=1)
    parent = run_trial({"spec": SMALL.to_dict(), "config": recipe.to_dict()})
    assert parent.state == "complete"
    child = run_trial({"spec": DEEPER.to_dict(), "config": recipe.with_(epochs=1).to_dict(),
                       "parent": {"spec": SMALL.to_dict(), "weights": parent.weights}})
    assert child.state == "complete", child.reason
    assert child.inherited["gap"] <= 1e-5
    assert child.inherited["parent_arch_id"] == SMALL.arch_id
    assert any("blocks" in line for line in child.inherited["morph"])
    # It started from the parent's function: one epoch gets it to the parent's level or near.
    assert child.val_accuracy >= parent.val_accuracy - 0.05
    # A parent that does not morph into the candidate fails the trial with the reason.
    bad = run_trial({"spec": SMALL.to_dict(), "config": recipe.with_(epochs=1).to_dict(),
                     "parent": {"spec": DEEPER.to_dict(), "weights": child.weights}})
    assert bad.state == "failed" and bad.reason.startswith("not_a_morph: ")


def test_a_child_that_does_not_start_as_its_parent_is_refused(monkeypatch):
    import workers.trial
    from workers import run_trial

    morph = workers.trial.morph_weights

    def off_by_a_bit(*args, **kwargs):  # a morph with a bug: one output shifted by 0.01
        state = morph(*args, **kwargs)
        bias = next(k for k in reversed(list(state)) if k.endswith("bias"))
        state[bias] = state[bias] + 0.01
        return state

    monkeypatch.setattr(workers.trial, "morph_weights", off_by_a_bit)
    recipe = TrainConfig(epochs=1, cpu_threads=1)
    child = run_trial({"spec": DEEPER.to_dict(), "config": recipe.to_dict(),
                       "parent": {"spec": SMALL.to_dict(), "weights": _weights(SMALL)}})
    assert child.state == "failed" and child.reason.startswith("inherit_gap: the child starts 0.01")


# -- end to end: real Ray, real training, export -----------------------------------------------
@pytest.mark.slow
def test_a_search_with_inherit_on_ray_records_parents_and_exports_a_child(tmp_path):
    db = tmp_path / "grow.db"
    url = f"sqlite:///{db}"
    files = []
    for i, spec in enumerate([SMALL, DEEPER]):
        path = tmp_path / f"arch{i}.json"
        path.write_text(json.dumps(spec.to_dict()))
        files.append(str(path))
    nas = [sys.executable, "-m", "nas"]
    search = subprocess.run(
        [*nas, "search", "--study", "grow", "--storage", url, "--trials", "2", "--workers", "1",
         "--epochs", "4", "--inherit", "--enqueue", ",".join(files), "--pruner", "none",
         "--seed", "0", "--quiet"], capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr[-2000:]
    runs = {r.trial_number: r for r in Store(url).runs("grow")}
    assert runs[1].inherited_from == runs[0].id and runs[1].fidelity == 1
    assert runs[1].extra["inherit"]["start_gap"] <= 1e-5
    assert runs[1].weights_artifact and (tmp_path / "grow.db.artifacts").is_dir()
    out = tmp_path / "bundle"
    export = subprocess.run([*nas, "export", "grow", "--storage", url, "--trial", "1",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch_id"] == DEEPER.arch_id
    assert (out / "model.safetensors").is_file()
    assert "it grew from trial 0" in (out / "README.md").read_text()


def test_inherit_with_a_replay_or_more_child_epochs_than_the_recipe_is_refused(sqlite_url):
    from nas.errors import UserError
    from nas.inputs import resolve_inputs

    replay = build_config({}, {"storage": sqlite_url, "replay": "nasbench201:cifar10",
                               "space": "nasbench201", "inherit": True}, "flags")
    with pytest.raises(UserError, match="--inherit .* --replay nasbench201:cifar10 trains nothing"):
        resolve_inputs(replay)
    longer = build_config({}, {"storage": sqlite_url, "inherit": True, "inherit_epochs": 9,
                               "train": {"epochs": 8}}, "flags")
    with pytest.raises(UserError, match="--inherit-epochs 9 is more than the recipe's 8 epochs"):
        resolve_inputs(longer)
