"""Regularized evolution as an Optuna sampler (`--sampler evolution`), and its options."""

from __future__ import annotations

import random
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from nas.config import build_config
from nas.errors import UserError
from nas.evolution import RegularizedEvolutionSampler
from nas.samplers import make_sampler, parse_options

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "block": CategoricalDistribution(["basic", "bottleneck", "preact"]),
    "depth": IntDistribution(1, 4),
    "width": IntDistribution(8, 256, log=True),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "drop": FloatDistribution(0.0, 0.5, step=0.1),
}


def suggest(trial: optuna.Trial) -> dict:
    """Asks for every parameter of SPACE, as a define-by-run objective would."""
    params = {}
    for name, dist in SPACE.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log,
                                               step=dist.step)
    return params


def within(dist, value) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    on_grid = dist.step is None or abs((value - dist.low) / dist.step
                                       - round((value - dist.low) / dist.step)) < 1e-9
    return dist.low <= value <= dist.high and on_grid


def member(params: dict, value: float, **kwargs) -> optuna.trial.FrozenTrial:
    return create_trial(params=params, distributions=SPACE, value=value, **kwargs)


def params_of(block="basic", depth=1, width=8, lr=1e-3, drop=0.0) -> dict:
    return {"block": block, "depth": depth, "width": width, "lr": lr, "drop": drop}


def study_with(members: list, *, direction="maximize", **sampler_kwargs) -> optuna.Study:
    study = optuna.create_study(direction=direction,
                                sampler=RegularizedEvolutionSampler(**sampler_kwargs))
    for trial in members:
        study.add_trial(trial)
    return study


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


BEST = params_of("bottleneck", 3, 64, 1e-2, 0.2)
LOWEST = params_of("preact", 1, 32, 3e-3, 0.5)


def five() -> list[optuna.trial.FrozenTrial]:
    """Five different members, completed now, in this order; the best (0.9) is `BEST`."""
    return [
        member(params_of("basic", 1, 8, 1e-3, 0.0), 0.5),
        member(BEST, 0.9),
        member(params_of("preact", 2, 16, 1e-4, 0.1), 0.7),
        member(params_of("basic", 4, 128, 1e-1, 0.3), 0.6),
        member(LOWEST, 0.4),
    ]


def test_fewer_completes_than_the_population_give_random_params_within_the_distributions():
    study = study_with(five()[:4], population_size=5, sample_size=5, seed=0)
    children = [suggest(study.ask()) for _ in range(40)]  # running: they never join
    for child in children:
        assert all(within(dist, child[name]) for name, dist in SPACE.items()), child
    # Random, not mutants: no child is a member with one param changed.
    members = [t.params for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert all(min(len(changed(c, m)) for m in members) >= 2 for c in children)
    assert len({c["block"] for c in children}) == 3 and len({c["depth"] for c in children}) == 4


def test_with_sample_size_equal_to_the_population_each_child_is_the_best_with_one_param_changed():
    study = study_with(five(), population_size=5, sample_size=5, seed=1)
    children = [suggest(study.ask()) for _ in range(60)]
    mutated = [changed(child, BEST) for child in children]
    assert all(len(m) == 1 for m in mutated), mutated
    # Every parameter, of every kind, gets mutated sometimes, always within its distribution.
    assert set().union(*mutated) == set(SPACE)
    for child in children:
        assert all(within(dist, child[name]) for name, dist in SPACE.items()), child


def test_a_child_never_equals_its_parent_even_when_a_param_has_two_values():
    space = {"a": CategoricalDistribution([0, 1]), "b": IntDistribution(2, 3, log=True),
             "c": CategoricalDistribution(["only"])}
    parent = {"a": 0, "b": 2, "c": "only"}
    study = optuna.create_study(
        direction="maximize",
        sampler=RegularizedEvolutionSampler(population_size=1, sample_size=1, seed=2))
    study.add_trial(create_trial(params=parent, distributions=space, value=1.0))
    for _ in range(40):
        trial = study.ask()
        child = {"a": trial.suggest_categorical("a", [0, 1]),
                 "b": trial.suggest_int("b", 2, 3, log=True),
                 "c": trial.suggest_categorical("c", ["only"])}
        assert len(changed(child, parent)) == 1 and child["c"] == "only"


def test_mutation_per_param_changes_at_least_one_param():
    study = study_with(five(), population_size=5, sample_size=5, mutation="per_param", seed=3)
    sizes = [len(changed(suggest(study.ask()), BEST)) for _ in range(80)]
    assert min(sizes) >= 1 and max(sizes) >= 2  # sometimes several at once


def test_aging_a_very_good_trial_older_than_the_last_population_is_no_longer_a_parent():
    ancient = member(params_of("preact", 4, 256, 1e-1, 0.5), 100.0)  # completed before the 5
    study = study_with([ancient, *five()], population_size=5, sample_size=5, seed=4)
    for _ in range(30):
        assert len(changed(suggest(study.ask()), BEST)) == 1


def test_minimize_makes_the_lowest_value_the_parent():
    study = study_with(five(), direction="minimize", population_size=5, sample_size=5, seed=5)
    for _ in range(30):
        assert len(changed(suggest(study.ask()), LOWEST)) == 1


def test_pruned_failed_and_infeasible_trials_are_not_in_the_population():
    over_budget = member(params_of("preact", 4, 256, 1e-1, 0.5), 100.0)
    over_budget.set_constraint("params", 5.0)  # > 0: violated, as nas/proposer.py records it
    study = study_with(
        [*five()[:4], over_budget,
         create_trial(params=params_of("preact", 4, 200, 1e-1, 0.4), distributions=SPACE,
                      state=TrialState.PRUNED),
         create_trial(params=params_of("preact", 4, 100, 1e-1, 0.4), distributions=SPACE,
                      state=TrialState.FAIL)],
        population_size=5, sample_size=5, seed=6)
    sampler = study.sampler
    assert [t.number for t in sampler.population(study)] == [0, 1, 2, 3]  # not full: random
    within = member(BEST, 0.0)
    within.set_constraint("params", 0.0)  # <= 0: feasible
    study.add_trial(within)
    assert len(sampler.population(study)) == 5
    for _ in range(20):  # the best feasible member is the parent, never the infeasible one
        assert len(changed(suggest(study.ask()), BEST)) == 1


def test_a_conditional_param_the_parent_lacks_is_sampled_at_random():
    space = {"block": CategoricalDistribution(["a", "b"]), "a_width": IntDistribution(1, 100)}

    def ask(trial):
        block = trial.suggest_categorical("block", ["a", "b"])
        name = f"{block}_width" if block == "a" else "b_depth"
        return {"block": block, name: trial.suggest_int(name, 1, 100)}

    study = optuna.create_study(
        direction="maximize",
        sampler=RegularizedEvolutionSampler(population_size=1, sample_size=1, seed=7))
    study.add_trial(create_trial(params={"block": "a", "a_width": 50}, distributions=space,
                                 value=1.0))
    children = [ask(study.ask()) for _ in range(60)]
    switched = [c for c in children if c["block"] == "b"]
    stayed = [c for c in children if c["block"] == "a"]
    assert switched and stayed
    assert all(c["a_width"] != 50 for c in stayed)  # the one mutation was the width
    assert len({c["b_depth"] for c in switched}) >= min(len(switched), 5)  # drawn, not fixed


def test_a_parent_value_outside_the_childs_distribution_is_redrawn():
    study = optuna.create_study(
        direction="maximize",
        sampler=RegularizedEvolutionSampler(population_size=1, sample_size=1, seed=8))
    study.add_trial(create_trial(
        params={"block": "gone", "depth": 9},
        distributions={"block": CategoricalDistribution(["gone", "basic"]),
                       "depth": IntDistribution(1, 9)}, value=1.0))
    for _ in range(10):
        trial = study.ask()
        assert trial.suggest_categorical("block", ["basic", "preact"]) in ("basic", "preact")
        assert 1 <= trial.suggest_int("depth", 1, 4) <= 4


# -- the toy problem: 6 parameters of 5 choices, score = matches with a hidden target --------
def toy_search(sampler: optuna.samplers.BaseSampler, seed: int, trials: int = 150,
               noise: float = 0.3) -> tuple[int, list[dict]]:
    rnd = random.Random(1000 + seed)
    target = [rnd.randrange(5) for _ in range(6)]
    study = optuna.create_study(direction="maximize", sampler=sampler)
    best, proposals = 0, []
    for _ in range(trials):
        trial = study.ask()
        x = [trial.suggest_categorical(f"p{i}", [0, 1, 2, 3, 4]) for i in range(6)]
        score = sum(a == b for a, b in zip(x, target, strict=True))
        best = max(best, score)
        proposals.append(trial.params)
        study.tell(trial, score + rnd.gauss(0, noise))
    return best, proposals


def test_same_seed_and_results_give_the_same_proposals():
    first = toy_search(RegularizedEvolutionSampler(population_size=10, sample_size=3, seed=11),
                       0, trials=60)[1]
    again = toy_search(RegularizedEvolutionSampler(population_size=10, sample_size=3, seed=11),
                       0, trials=60)[1]
    other = toy_search(RegularizedEvolutionSampler(population_size=10, sample_size=3, seed=12),
                       0, trials=60)[1]
    assert first == again
    assert first != other


def test_evolution_finds_better_toy_architectures_than_random_search():
    # Measured over 8 disjoint sets of 20 seeds: evolution 5.70-5.80 of 6, random 4.00-4.25.
    seeds = range(20)
    evolution = [toy_search(RegularizedEvolutionSampler(seed=s), s)[0] for s in seeds]
    rand = [toy_search(optuna.samplers.RandomSampler(seed=s), s)[0] for s in seeds]
    mean_evolution, mean_random = sum(evolution) / 20, sum(rand) / 20
    assert mean_evolution >= mean_random + 1.0, (mean_evolution, mean_random)
    assert mean_evolution >= 5.3


# -- make_sampler and its options --------------------------------------------------------------
def test_make_sampler_builds_evolution_with_its_defaults_and_options():
    default = make_sampler("evolution", seed=0)
    assert isinstance(default, RegularizedEvolutionSampler)
    assert (default.population_size, default.sample_size, default.mutation) == (20, 5, "one")
    tuned = make_sampler("evolution", seed=0,
                         options={"population": 50, "sample_size": 10, "mutation": "per_param"})
    assert (tuned.population_size, tuned.sample_size, tuned.mutation) == (50, 10, "per_param")
    small = make_sampler("evolution", seed=0, options={"population": 3})
    assert small.sample_size == 3  # the default sample size never exceeds the population
    assert isinstance(make_sampler("tpe", seed=0, options={"n_startup_trials": 0}),
                      optuna.samplers.TPESampler)


@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("evolution", {"populaton": 5}, "allowed: population, sample_size, mutation"),
        ("evolution", {"population": 0}, "`population` of sampler `evolution` must be an int >= 1"),
        ("evolution", {"population": 2.5}, "must be an int"),
        ("evolution", {"population": 4, "sample_size": 5}, "at most `population` (4)"),
        ("evolution", {"mutation": "all"}, "`one` or `per_param`"),
        ("tpe", {"n_startup_trials": -1}, "must be an int >= 0"),
        ("tpe", {"population": 5}, "allowed: n_startup_trials"),
        ("random", {"population": 5}, "sampler `random` takes no options"),
    ],
)
def test_make_sampler_rejects_bad_options_naming_what_is_allowed(name, options, needle):
    with pytest.raises(UserError, match="--sampler-options") as err:
        make_sampler(name, seed=0, options=options)
    assert needle in str(err.value)


def test_evolution_with_several_objectives_is_a_user_error():
    with pytest.raises(UserError, match="one objective.*use nsga2 or tpe for several"):
        make_sampler("evolution", seed=0, multi_objective=True)
    assert make_sampler("tpe", seed=0, multi_objective=True) is not None


def test_the_sampler_itself_refuses_a_multi_objective_study():
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=RegularizedEvolutionSampler(seed=0))
    with pytest.raises(ValueError, match="one objective"):
        study.ask().suggest_int("x", 0, 3)


# -- --sampler-options and the config ------------------------------------------------------------
def test_parse_options_gives_ints_floats_and_strings():
    assert parse_options("population=50, sample_size=10,mutation=per_param,rate=0.5") == {
        "population": 50, "sample_size": 10, "mutation": "per_param", "rate": 0.5}
    assert parse_options("") == {}
    for bad in ("population", "=5", "population=", "a=1,a=2"):
        with pytest.raises(ValueError):
            parse_options(bad)


def test_config_takes_sampler_options_from_flags_or_a_file_and_checks_them():
    flags = build_config({}, {"sampler": "evolution",
                              "sampler_options": "population=50,sample_size=10"}, "flags")
    assert flags.sampler_options == {"population": 50, "sample_size": 10}
    from_file = build_config({"sampler": "evolution", "sampler_options": {"mutation": "one"}},
                             {}, "search.yaml")
    assert from_file.sampler_options == {"mutation": "one"}
    assert build_config({}, {}, "flags").sampler_options == {}
    with pytest.raises(UserError, match="`sampler_options`.*numbers or strings"):
        build_config({"sampler": "evolution", "sampler_options": {"population": [5]}}, {},
                     "search.yaml")


def nas(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sampler-options", "population"], "not key=value"),
        (["--sampler", "evolution", "--sampler-options", "population=0"], "must be an int >= 1"),
        (["--sampler", "random", "--sampler-options", "population=5"], "takes no options"),
    ],
)
def test_bad_sampler_options_on_the_command_line_are_one_clear_line(args, needle, tmp_path):
    result = nas("search", "--trials", "1", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "--sampler-options" in result.stderr and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nas.db").exists()  # refused before anything was created


def test_search_help_lists_sampler_options(tmp_path):
    result = nas("search", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--sampler-options" in result.stdout


def test_mutation_grow_enlarges_one_stage_depth_or_width_and_falls_back_to_one():
    space = {"stage1.depth": CategoricalDistribution([1, 2, 3]),
             "stage1.width": CategoricalDistribution([8, 16]),
             "stage1.skip": CategoricalDistribution(["identity", "projection"]),
             "stage2.depth": IntDistribution(1, 4)}

    def ask(study):
        trial = study.ask()
        return {"stage1.depth": trial.suggest_categorical("stage1.depth", [1, 2, 3]),
                "stage1.width": trial.suggest_categorical("stage1.width", [8, 16]),
                "stage1.skip": trial.suggest_categorical("stage1.skip", ["identity", "projection"]),
                "stage2.depth": trial.suggest_int("stage2.depth", 1, 4)}

    def study_of(parent):
        study = optuna.create_study(direction="maximize", sampler=RegularizedEvolutionSampler(
            population_size=1, sample_size=1, mutation="grow", seed=5))
        study.add_trial(create_trial(params=parent, distributions=space, value=1.0))
        return study

    parent = {"stage1.depth": 2, "stage1.width": 8, "stage1.skip": "identity", "stage2.depth": 3}
    study = study_of(parent)
    children = [ask(study) for _ in range(60)]
    for child in children:
        [name] = changed(child, parent)
        assert name != "stage1.skip" and child[name] > parent[name]
    assert {next(iter(changed(c, parent))) for c in children} == {
        "stage1.depth", "stage1.width", "stage2.depth"}
    # Fully grown: one parameter changes, as with `one` (here only the skip can).
    top = {"stage1.depth": 3, "stage1.width": 16, "stage1.skip": "identity", "stage2.depth": 4}
    study = study_of(top)
    for _ in range(10):
        child = ask(study)
        assert changed(child, top) in ({"stage1.skip"}, {"stage1.depth"}, {"stage1.width"},
                                       {"stage2.depth"})
        assert len(changed(child, top)) == 1


def test_mutation_grow_with_nothing_larger_in_the_trial_s_range_changes_the_value_as_one():
    # The parent's range had room to grow (1-4, at 3); the trial asks 1-3: nothing is larger.
    study = optuna.create_study(direction="maximize", sampler=RegularizedEvolutionSampler(
        population_size=1, sample_size=1, mutation="grow", seed=5))
    study.add_trial(create_trial(params={"stage2.depth": 3},
                                 distributions={"stage2.depth": IntDistribution(1, 4)}, value=1.0))
    values = {study.ask().suggest_int("stage2.depth", 1, 3) for _ in range(20)}
    assert values and 3 not in values and values <= {1, 2}
