"""TrainConfig validation and identity; request/result round trips (no torch needed)."""

from __future__ import annotations

import json

import pytest

from workers import TrainConfig, TrialRequest, TrialResult

# The default recipe's id, written out: it must not change silently, since stored runs are
# looked up by it. Changing a default or the hashed fields changes it on purpose.
DEFAULT_RECIPE_ID = "477d37bf53573a4c"


def test_defaults_round_trip_through_json():
    config = TrainConfig()
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.recipe_id == config.recipe_id
    assert config.fidelity == config.epochs == 8


def test_recipe_id_is_a_stable_short_hash_of_the_defaults():
    assert TrainConfig().recipe_id == DEFAULT_RECIPE_ID
    assert TrainConfig().recipe_id == TrainConfig.from_dict({}).recipe_id


@pytest.mark.parametrize(
    "change",
    [
        {"cpu_threads": 3},
        {"device": "cpu"},
        {"keep_weights": False},
        {"time_limit_s": 10.0},
        {"data_dir": "/elsewhere"},
        {"channels_last": True},
    ],
)
def test_recipe_id_ignores_settings_that_do_not_change_what_is_learned(change):
    assert TrainConfig().with_(**change).recipe_id == DEFAULT_RECIPE_ID


@pytest.mark.parametrize(
    "change",
    [{"lr": 0.05}, {"seed": 1}, {"epochs": 9}, {"dataset": "cifar10"}, {"precision": "bf16-mixed"}],
)
def test_recipe_id_changes_with_settings_that_change_results(change):
    assert TrainConfig().with_(**change).recipe_id != DEFAULT_RECIPE_ID


def test_integer_lr_and_float_lr_give_the_same_recipe():
    assert TrainConfig(lr=1).recipe_id == TrainConfig(lr=1.0).recipe_id


def test_unknown_key_is_named_and_allowed_keys_listed():
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"epochz": 3})
    assert "`epochz`" in str(info.value)
    assert "allowed:" in str(info.value) and "epochs" in str(info.value)


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("epochs", 0, "an integer >= 1"),
        ("batch_size", 2.5, "an integer >= 1"),
        ("optimizer", "rmsprop", "sgd | adamw"),
        ("lr", -1.0, "> 0"),
        ("lr", float("nan"), "> 0"),
        ("schedule", "linear", "onecycle"),
        ("precision", "64", "bf16-mixed"),
        ("channels_last", "yes", "auto | true | false"),
        ("dataset", "imagenet", "npz:PATH"),
        ("dataset", "npz:", "npz:PATH"),
        ("val_fraction", 1.0, "(0, 1)"),
        ("label_smoothing", 1.0, "[0, 1)"),
        ("time_limit_s", 0, "> 0"),
        ("cpu_threads", 0, ">= 1"),
        ("device", "tpu", "auto | cpu | cuda"),
        ("augment", 1, "true | false"),
        ("seed", -1, ">= 0"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(f"`{field}` got ")
    assert "allowed:" in message and allowed in message


def test_with_validates_and_names_unknown_fields():
    assert TrainConfig().with_(epochs=3).epochs == 3
    with pytest.raises(ValueError, match="`epochs`"):
        TrainConfig().with_(epochs=0)
    with pytest.raises(ValueError, match="`nope`"):
        TrainConfig().with_(nope=1)


def test_precision_32_spellings_are_one_value():
    assert TrainConfig(precision=32).precision == TrainConfig(precision="32-true").precision == "32"


def test_request_and_result_round_trip_as_json():
    request = TrialRequest(spec={"stages": []}, config={"epochs": 2}, key="t-1")
    assert TrialRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    result = TrialResult(state="pruned", epochs=[{"epoch": 1, "val_accuracy": 0.5}], weights=b"x")
    data = result.to_dict()
    assert "weights" not in data
    back = TrialResult.from_dict(json.loads(json.dumps(data)))
    assert back.state == "pruned" and back.epochs == result.epochs and back.weights is None


def test_result_from_dict_rejects_unknown_state_and_fields():
    with pytest.raises(ValueError, match="`state`"):
        TrialResult.from_dict({"state": "done"})
    with pytest.raises(ValueError, match="`bogus`"):
        TrialResult.from_dict({"state": "complete", "bogus": 1})


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "none"])
def test_every_schedule_builds_and_steps_for_any_number_of_steps(schedule):
    import torch

    from workers.module import make_scheduler

    for steps in range(1, 13):  # OneCycleLR alone once failed at exactly 4 steps in all
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=0.1)
        scheduler = make_scheduler(optimizer, TrainConfig(epochs=1, schedule=schedule), steps)
        for _ in range(steps):
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        assert all(g["lr"] >= 0 for g in optimizer.param_groups)
