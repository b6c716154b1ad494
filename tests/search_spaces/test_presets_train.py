"""The `resnet` preset is the walking-skeleton default: its models learn 8x8 digits quickly."""

from __future__ import annotations

import optuna
import pytest
import torch
import torch.nn.functional as F

from search_spaces import build_model, load_space


def test_smallest_resnet_preset_model_reaches_95_percent_on_digits_in_4_epochs():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:1437], order[1437:]

    params = {
        f"stage{i}.{k}": v for i in (1, 2, 3) for k, v in (("depth", 1), ("skip", "identity"))
    }
    params |= {"stage1.width": 8, "stage2.width": 16, "stage3.width": 32}
    spec = load_space("resnet").suggest(
        optuna.trial.FixedTrial(params), in_channels=1, num_classes=10
    )
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(shuffled), 32):
            batch = shuffled[i : i + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} on 360 held-out digits"
