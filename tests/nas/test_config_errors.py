"""Config-file errors teach: YAML mistakes by line and column, unknown keys with a suggestion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nas.config import build_config, load_config_file
from nas.errors import UserError
from search_spaces.space import SpaceError, load_space

ROOT = Path(__file__).resolve().parents[2]


def nas_search(config: Path) -> subprocess.CompletedProcess:
    """`nas search --config FILE` in the file's folder, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "nas", "search", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent,
    )


def refused(tmp_path: Path, text: str, name: str = "search.yaml") -> str:
    """The one stderr line of a config file the CLI refuses, checked to be a clean refusal."""
    path = tmp_path / name
    path.write_text(text)
    result = nas_search(path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(path) in result.stderr
    assert not (tmp_path / "nas.db").exists()  # refused before the store (and Ray) start
    return result.stderr.strip()


YAML_MISTAKES = {
    # a key indented under a scalar value
    "deeper-indent": ("study: x\ntrials: 3\n  seed: 1\n", "line 3, column 7",
                      "a key indented deeper than the one above it"),
    # keys of `train` that do not line up
    "ragged-indent": ("study: x\ntrain:\n    epochs: 3\n  lr: 0.1\n", "line 4, column 3",
                      "the keys of one mapping must line up"),
    "tab": ("study: x\n\ttrials: 3\n", "line 2, column 1", "never tabs"),
    "unclosed-list": ("study: x\nobjectives: [accuracy, params\n", "line 3, column 1",
                      "flow sequence at line 2, column 13"),
}


@pytest.mark.parametrize("case", sorted(YAML_MISTAKES))
def test_a_yaml_mistake_is_one_line_naming_its_line_and_column(tmp_path, case):
    text, position, hint = YAML_MISTAKES[case]
    line = refused(tmp_path, text)
    assert f"search.yaml: {position}: not valid YAML: " in line
    assert hint in line


def test_a_mistyped_top_level_key_suggests_the_nearest_and_lists_the_allowed(tmp_path):
    line = refused(tmp_path, "study: x\ntrails: 3\n")
    assert "search.yaml: line 2: unknown key `trails`; did you mean `trials`? allowed: " in line
    assert "cpus_per_trial, db_retry_s, enqueue," in line and "train, trials, workers" in line


def test_a_mistyped_train_key_suggests_the_nearest_train_field(tmp_path):
    line = refused(tmp_path, "study: x\ntrain:\n  epoch: 3\n  lr: 0.1\n")
    assert ("search.yaml: line 3: unknown key `train.epoch`; did you mean `epochs`? "
            "allowed in `train`: dataset, data_dir, val_fraction, epochs,") in line


def test_a_python_object_tag_is_refused_by_position_and_never_run(tmp_path):
    line = refused(tmp_path, "study: !!python/object/apply:os.system ['touch pwned']\n")
    assert "line 1, column 8: not valid YAML: the tag '!!python/object/apply:os.system'" in line
    assert not (tmp_path / "pwned").exists()


def test_a_key_at_the_wrong_level_points_to_where_it_belongs(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("study: x\nepochs: 3\ntrain:\n  trials: 2\n")
    with pytest.raises(UserError) as info:
        build_config(load_config_file(path), {}, str(path))
    message = str(info.value)
    assert "line 2: unknown key `epochs`; did you mean `train.epochs`" in message
    assert "line 4: unknown key `train.trials`; did you mean the top-level `trials`" in message


def test_a_bad_value_names_its_line_unless_a_flag_gave_it(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("study: x\ntrials: 0\n")
    values = load_config_file(path)
    with pytest.raises(UserError, match=r"search\.yaml: line 2: `trials` got 0: must be >= 1"):
        build_config(values, {}, str(path))
    # A flag overrides the file's value: its error has no line in the file.
    with pytest.raises(UserError) as info:
        build_config(values, {"trials": -1}, str(path))
    assert "line" not in str(info.value) and "`trials` got -1" in str(info.value)


def test_flags_get_the_same_suggestion_in_flag_form():
    with pytest.raises(UserError, match=r"^flags: unknown option `--trails`; did you mean `--trials`\?"):
        build_config({}, {"trails": 3}, "flags")


def test_a_good_file_still_loads_with_every_value(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("study: x\nmax-params: 5000\ntrain:\n  epochs: 2\n  recipe_id: abc\n")
    config = build_config(load_config_file(path), {"train": {"lr": 0.1}}, str(path))
    assert config.max_params == 5000
    assert config.train == {"epochs": 2, "recipe_id": "abc", "lr": 0.1}
    (tmp_path / "empty.yaml").write_text("")
    assert build_config(load_config_file(tmp_path / "empty.yaml"), {}, "x").trials == 20


def test_a_mistyped_space_key_suggests_the_nearest(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: x\nstages:\n  - {depth: 1, widht: 8}\n")
    with pytest.raises(SpaceError, match=r"`stages\[0\]\.widht` got 8; did you mean `width`\? "
                                         r"allowed: known keys depth, width"):
        load_space(path)


def test_a_mistyped_cell_edge_suggests_the_nearest(tmp_path):
    ops = "\n".join(f'  "{e}": skip_connect' for e in ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1"))
    path = tmp_path / "cell.yaml"
    path.write_text(f'name: c\ncell:\n{ops}\n  "3<2": skip_connect\n'
                    "shared: {block: cell, depth: 1, width: 8}\nstages:\n  - {}\n")
    with pytest.raises(SpaceError, match=r"`cell\.3<2` got 'skip_connect'; did you mean `3<-2`\?"):
        load_space(path)


def test_importing_the_config_loads_no_optuna_torch_or_ray():
    code = ("import sys, nas.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'optuna', 'torch', 'ray'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
