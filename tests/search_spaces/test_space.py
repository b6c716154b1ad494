"""Search spaces: presets, stable Optuna labels, params_for, grids and strict YAML validation."""

from __future__ import annotations

import json

import optuna
import pytest

from search_spaces import SearchSpace, SpaceError, complexity, list_spaces, load_space, zoo
from search_spaces.spec import ArchitectureSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
PRESETS = [
    "convnext",
    "convnext-imagenet",
    "densenet",
    "densenet-imagenet",
    "hybrid",
    "nasbench201",
    "resnet",
    "resnet-cifar",
    "resnext",
    "skip-ablation",
]


def sample(space: SearchSpace, n: int, seed: int = 0, in_channels: int = 3):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        spec = space.suggest(trial, in_channels=in_channels, num_classes=10)
        yield trial, spec
        study.tell(trial, 0.0)


def test_list_spaces_names_every_preset_with_a_description():
    listed = dict(list_spaces())
    assert sorted(listed) == PRESETS
    assert all(desc and "\n" not in desc for desc in listed.values())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_its_name_matches_its_file(name):
    space = load_space(name)
    assert space.name == name
    assert set(space.constraints) == {"max_params", "max_flops"}
    data = space.to_dict()
    assert SearchSpace.from_dict(json.loads(json.dumps(data))).to_dict() == data


@pytest.mark.parametrize("name", PRESETS)
def test_suggest_and_params_for_are_inverse(name):
    space = load_space(name)
    for trial, spec in sample(space, 30):
        assert isinstance(spec, ArchitectureSpec)
        assert space.params_for(spec) == trial.params
        assert set(trial.params) <= set(space.labels())


def test_resnet_preset_uses_stable_per_stage_labels():
    space = load_space("resnet")
    assert space.labels() == [
        f"stage{i}.{key}" for i in (1, 2, 3) for key in ("depth", "width", "skip")
    ]
    spec = space.suggest(
        optuna.trial.FixedTrial(
            {f"stage{i}.{k}": v for i in (1, 2, 3) for k, v in (("depth", 1), ("skip", "identity"))}
            | {"stage1.width": 8, "stage2.width": 16, "stage3.width": 32}
        ),
        in_channels=1,
        num_classes=10,
    )
    assert spec.stem == "cifar" and spec.in_channels == 1
    assert [s.width for s in spec.stages] == [8, 16, 32]
    assert [s.stride for s in spec.stages] == [1, 2, 2]


def test_skip_ablation_is_a_16_point_grid_over_depth_and_skip():
    space = load_space("skip-ablation")
    assert space.grid() == {
        "depth": [1, 3, 5, 9],
        "skip": ["identity", "none", "gated", "zero_pad"],
    }
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    seen = set()

    def objective(trial):
        spec = space.suggest(trial, in_channels=3, num_classes=10)
        seen.add((spec.stages[0].depth, spec.stages[0].skip))
        return 0.0

    study.optimize(objective, n_trials=20)  # GridSampler stops the study after 16
    assert len(seen) == 16


@pytest.mark.parametrize("name", [p for p in PRESETS if p != "hybrid"])
def test_presets_have_a_grid(name):
    grid = load_space(name).grid()
    assert grid and all(len(v) > 1 for v in grid.values())


def test_the_hybrid_preset_has_conditional_labels_and_no_grid():
    # A dense stage asks no skip, a transformer stage asks its width: no fixed grid exists.
    assert load_space("hybrid").grid() is None


CONDITIONAL = """
name: conditional
num_stages: [1, 2]
stages:
  - {depth: [1, 2], width: 64, block: [basic, bottleneck], groups: [1, 2], skip: identity}
  - {depth: 1, width: [64, 128], stride: 2}
"""


def test_bottleneck_fields_are_asked_only_for_bottleneck_stages(tmp_path):
    path = tmp_path / "conditional.yaml"
    path.write_text(CONDITIONAL)
    space = load_space(str(path))
    assert space.grid() is None
    assert space.labels() == [
        "num_stages",
        "stage1.block",
        "stage1.depth",
        "stage1.groups",
        "stage2.width",
    ]
    basic = space.suggest(
        optuna.trial.FixedTrial({"num_stages": 1, "stage1.block": "basic", "stage1.depth": 2}),
        in_channels=3,
        num_classes=10,
    )
    assert len(basic.stages) == 1 and basic.stages[0].block == "basic"
    params = {
        "num_stages": 2,
        "stage1.block": "bottleneck",
        "stage1.depth": 1,
        "stage1.groups": 2,
        "stage2.width": 128,
    }
    spec = space.suggest(optuna.trial.FixedTrial(params), in_channels=3, num_classes=10)
    assert spec.stages[0].groups == 2 and spec.stages[1].width == 128
    assert space.params_for(spec) == params
    assert space.params_for(basic) == {"num_stages": 1, "stage1.block": "basic", "stage1.depth": 2}


def test_params_for_returns_none_outside_the_space():
    assert load_space("resnet").params_for(zoo.get("resnet18")) is None
    assert load_space("skip-ablation").params_for(zoo.get("resnet44")) is None  # 7 blocks per stage
    assert load_space("skip-ablation").params_for(zoo.get("resnet56")) == {
        "depth": 9,
        "skip": "zero_pad",
    }


def test_params_for_helps_enqueue_a_known_architecture():
    space = load_space("skip-ablation")
    study = optuna.create_study()
    study.enqueue_trial(space.params_for(zoo.get("plain56")))
    trial = study.ask()
    assert space.suggest(trial, in_channels=3, num_classes=10).arch_id == zoo.get("plain56").arch_id


def test_unknown_preset_lists_the_presets():
    with pytest.raises(SpaceError, match="resnet-cifar.*skip-ablation"):
        load_space("resnet9000")


def test_missing_file_is_a_space_error(tmp_path):
    with pytest.raises(SpaceError, match="missing.yaml"):
        load_space(str(tmp_path / "missing.yaml"))


GOOD = """
name: mine
stages:
  - {depth: [1, 2], width: 8}
"""

BAD = {
    "unknown-key": (
        "name: x\nstages:\n  - {depth: 1, width: 8, dilation: 2}\n",
        r"`stages\[0\]\.dilation`.*unknown key",
    ),
    "unknown-top-key": ("name: x\nsampler: tpe\nstages:\n  - {depth: 1, width: 8}\n", r"`sampler`"),
    "negative-depth": (
        "stages:\n  - {depth: [1, -2], width: 8}\n",
        r"`stages\[0\]\.depth\[1\]` got -2",
    ),
    "negative-fixed-depth": (
        "stages:\n  - {depth: -1, width: 8}\n",
        r"`stages\[0\]\.depth` got -1",
    ),
    "empty-choice": (
        "stages:\n  - {depth: [], width: 8}\n",
        r"`stages\[0\]\.depth`.*empty choice list",
    ),
    "unknown-skip": (
        "stages:\n  - {depth: 1, width: 8, skip: [identity, highway]}\n",
        r"`stages\[0\]\.skip\[1\]` got 'highway'",
    ),
    "python-object": (
        "stages:\n  - depth: !!python/object/apply:os.system ['echo pwned']\n    width: 8\n",
        r"`stages\[0\]\.depth`.*python/object/apply:os.system",
    ),
    "missing-width": ("stages:\n  - {depth: 1}\n", r"`stages\[0\]\.width`.*required"),
    "no-stages": ("name: x\n", r"`stages`"),
    "bad-range": (
        "stages:\n  - {depth: {low: 5, high: 1}, width: 8}\n",
        r"`stages\[0\]\.depth\.high`",
    ),
    "duplicate": (
        "stages:\n  - {depth: [1, 1], width: 8}\n",
        r"`stages\[0\]\.depth\[1\]`.*duplicate",
    ),
    "bool-as-int": ("stages:\n  - {depth: true, width: 8}\n", r"`stages\[0\]\.depth`"),
    "shared-and-stage": (
        "shared: {skip: [identity, none]}\nstages:\n  - {depth: 1, width: 8, skip: none}\n",
        r"`stages\[0\]\.skip`.*shared",
    ),
    "too-many-stages": (
        "num_stages: [1, 3]\nstages:\n  - {depth: 1, width: 8}\n",
        r"`num_stages` got 3",
    ),
    "bad-constraint": (
        "constraints: {max_params: -5}\nstages:\n  - {depth: 1, width: 8}\n",
        r"`constraints\.max_params`",
    ),
    "shrinking-zero-pad": (
        "stages:\n  - {depth: 1, width: [8, 64]}\n  - {depth: 1, width: 32, skip: [identity, zero_pad]}\n",
        r"`stages\[1\]\.skip`.*64 -> 32",
    ),
    "empty-bottleneck": (
        "stages:\n  - {depth: 1, width: 8, block: bottleneck, width_per_group: [4, 64]}\n",
        r"`stages\[0\]`.*width_per_group=4",
    ),
    "bottleneck-field-on-basic": (
        "stages:\n  - {depth: 1, width: 64, groups: [1, 2]}\n",
        r"`stages\[0\]\.groups`.*bottleneck",
    ),
    "not-yaml": ("stages: [depth: 1\n", r"not valid YAML"),
    "not-a-mapping": ("- 1\n- 2\n", r"a mapping"),
}


def test_a_good_user_file_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    space = load_space(path)
    assert space.name == "mine" and space.grid() == {"stage1.depth": [1, 2]}
    assert space.constraints == {"max_params": None, "max_flops": None}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_file_is_rejected_naming_file_and_key(tmp_path, case):
    text, pattern = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=pattern) as info:
        load_space(str(path))
    assert str(path) in str(info.value)


STAGE_KEYS = "depth, width, stride, block, expansion, groups, width_per_group, skip, heads, compression"
REFUSED = {
    "unknown-stage-key": (
        "stages:\n  - {depth: 1, width: 8, widht: 16}\n",
        f"`stages[0].widht` got 16; did you mean `width`? allowed: known keys {STAGE_KEYS} (unknown key)",
    ),
    "unknown-shared-key": (
        "shared: {dpeth: 2}\nstages:\n  - {depth: 1, width: 8}\n",
        f"`shared.dpeth` got 2; did you mean `depth`? allowed: known keys {STAGE_KEYS} (unknown key)",
    ),
    "unknown-range-key": (
        "stages:\n  - {depth: {low: 1, high: 5, by: 2}, width: 8}\n",
        "`stages[0].depth.by` got 2; allowed: known keys low, high, step (unknown key)",
    ),
    "string-for-int": (
        "stem_width: wide\nstages:\n  - {depth: 1, width: 8}\n",
        "`stem_width` got 'wide'; allowed: an integer >= 1, a list of them, or {low, high, step}",
    ),
    "range-for-a-name": (
        "stages:\n  - {depth: 1, width: 8, block: {low: 1, high: 2}}\n",
        "`stages[0].block` got {'low': 1, 'high': 2}; allowed: "
        "basic | bottleneck | dense | convnext | transformer | cell, or a list of them",
    ),
    "float-in-range": (
        "stages:\n  - {depth: {low: 1, high: 4.5}, width: 8}\n",
        "`stages[0].depth.high` got 4.5; allowed: an integer >= 1",
    ),
    "list-for-a-mapping": (
        "constraints: [1000]\nstages:\n  - {depth: 1, width: 8}\n",
        "`constraints` got [1000]; allowed: a mapping",
    ),
    "null-is-not-a-default": (
        "stages:\n  - {depth: 1, width: 8, stride: null}\n",
        "`stages[0].stride` got None; allowed: 1 | 2, a list of them, or {low, high, step}",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unknown_keys_and_wrong_types_are_refused_naming_file_key_and_allowed(tmp_path, case):
    text, expected = REFUSED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(str(path))
    assert str(info.value) == f"{path}: {expected}"


def test_every_error_of_a_file_is_one_line_in_our_words(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("preact: maybe\nstages:\n  - {depth: [1, two], width: 8, stride: 3}\n")
    with pytest.raises(SpaceError) as info:
        load_space(str(path))
    assert str(info.value).splitlines() == [
        f"{path}: `preact` got 'maybe'; allowed: true | false, or a list of them",
        f"{path}: `stages[0].depth[1]` got 'two'; allowed: an integer >= 1",
        f"{path}: `stages[0].stride` got 3; allowed: 1 | 2, a list of them, or {{low, high, step}}",
    ]
    assert "pydantic" not in str(info.value) and "further information" not in str(info.value)
    # A dict has no file: its source stands in.
    with pytest.raises(SpaceError, match=r"^<dict>: `stages\[0\]\.skip` got 'highway'"):
        SearchSpace.from_dict({"name": "d", "stages": [{"depth": 1, "width": 8, "skip": "highway"}]})


def test_python_tags_are_never_constructed(tmp_path, monkeypatch):
    import os

    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd))
    path = tmp_path / "evil.yaml"
    path.write_text(BAD["python-object"][0])
    with pytest.raises(SpaceError):
        load_space(str(path))
    assert calls == []


def test_constraints_are_read_from_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD + "constraints: {max_params: 1000000, max_flops: 2.0e+7}\n")
    assert load_space(str(path)).constraints == {"max_params": 1_000_000, "max_flops": 20_000_000}


def test_resnet_preset_stays_within_its_constraint():
    space = load_space("resnet")
    largest = space.suggest(
        optuna.trial.FixedTrial(
            {f"stage{i}.depth": 3 for i in (1, 2, 3)}
            | {f"stage{i}.skip": "projection" for i in (1, 2, 3)}
            | {"stage1.width": 16, "stage2.width": 32, "stage3.width": 64}
        ),
        in_channels=1,
        num_classes=10,
    )
    assert complexity(largest, 8).params <= space.constraints["max_params"]
