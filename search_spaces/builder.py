"""Turn an `ArchitectureSpec` into a `torch.nn.Module`: one builder for the whole family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.blocks import ResidualBlock, Stem, make_stage
from search_spaces.spec import ArchitectureSpec


class ResNet(nn.Module):
    """Stem, stages, (final BN-ReLU for pre-activation nets), global average pool, linear head.

    Parameter names are plain and stable (they go into safetensors files):
    `stem.conv.weight`, `stages.<i>.<j>.conv1.weight`, `stages.<i>.<j>.shortcut.conv.weight`,
    `stages.<i>.<j>.gate`, `final_bn.weight`, `fc.weight`, ...
    """

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.arch_id = spec.arch_id
        self.stem = (
            nn.Identity()
            if spec.stem == "none"
            else Stem(spec.stem, spec.in_channels, spec.stem_width, spec.preact)
        )
        self.stages = nn.Sequential(
            *(
                make_stage(
                    stage,
                    in_ch,
                    preact=spec.preact,
                    se_ratio=spec.se_ratio,
                    zero_init_residual=spec.zero_init_residual,
                )
                for stage, in_ch in zip(spec.stages, spec.stage_in_channels(), strict=True)
            )
        )
        # Pre-activation blocks leave their output un-normalised: one BN-ReLU before the head.
        self.final_bn = nn.BatchNorm2d(spec.out_channels) if spec.preact else None
        self.fc = nn.Linear(spec.out_channels, spec.num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def init_weights(model: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convs, BN weight 1 and bias 0.

    Then, for blocks marked `zero_init_residual`, the last BN of the branch gets weight 0 so
    the block starts as its shortcut (Goyal et al. 2017). Linear layers keep torch's default.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, ResidualBlock) and module.zero_init_residual:
            nn.init.zeros_(module.last_norm().weight)


def build_model(spec: ArchitectureSpec) -> nn.Module:
    """Build the network a spec describes. The layout is a pure function of the spec.

    Weights are initialised from torch's global RNG: seed it (`torch.manual_seed`) before
    calling for reproducible weights. Building under `with torch.device("meta"):` gives a
    weightless model for counting parameters of big networks.

    Args:
        spec: the architecture.

    Returns:
        A `ResNet` module in training mode.
    """
    if not isinstance(spec, ArchitectureSpec):
        raise TypeError(f"`spec` got {type(spec).__name__}; allowed: ArchitectureSpec")
    return ResNet(spec)
