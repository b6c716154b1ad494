"""Turn an `ArchitectureSpec` into a `torch.nn.Module`: one builder for the whole family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.blocks import ResidualStage, Stem
from search_spaces.cell import CellStage
from search_spaces.convnext import ConvNeXtStage
from search_spaces.dense import DenseStage
from search_spaces.layers import LN_EPS
from search_spaces.spec import ArchitectureSpec
from search_spaces.transformer import TransformerStage

# The stage class of each block type; each has a static `cost` beside its constructor.
STAGES: dict[str, type[nn.Module]] = {
    "basic": ResidualStage,
    "bottleneck": ResidualStage,
    "dense": DenseStage,
    "convnext": ConvNeXtStage,
    "transformer": TransformerStage,
    "cell": CellStage,
}


class ResNet(nn.Module):
    """Stem, stages, the final norm, global pooling (or the class token), linear head.

    The final norm follows the last stage's family: BN-ReLU after pre-activation, dense and
    cell stages (`final_bn`), LayerNorm after pooling for ConvNeXt and on the tokens for a
    transformer (`final_norm`), none for post-activation ResNets.

    Parameter names are plain and stable (they go into safetensors files):
    `stem.conv.weight`, `stages.<i>.<j>.conv1.weight`, `stages.<i>.<j>.shortcut.conv.weight`,
    `stages.<i>.<j>.gate`, `stages.<i>.layers.<j>.conv1.weight` (dense),
    `stages.<i>.blocks.<j>.pw1.weight` (convnext), `stages.<i>.blocks.<j>.attn.qkv.weight`
    (transformer), `stages.<i>.entry.conv_a.op.1.weight`, `stages.<i>.cells.<j>.layers.<k>.op.1
    .weight` (cell: edge k in `CELL_EDGES` order), `final_bn.weight`, `fc.weight`, ...
    """

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.arch_id = spec.arch_id
        self.stem = (
            nn.Identity()
            if spec.stem == "none"
            else Stem(
                spec.stem, spec.in_channels, spec.stem_width, spec.stem_preact, spec.patch_size,
                relu=spec.stem_relu,
            )
        )
        self.stages = nn.Sequential(
            *(
                STAGES[stage.block](spec, index, in_ch)
                for index, (stage, in_ch) in enumerate(
                    zip(spec.stages, spec.stage_in_channels(), strict=True)
                )
            )
        )
        out, norm = spec.out_channels, spec.final_norm
        self.final_bn = nn.BatchNorm2d(out) if norm == "bn" else None
        self.final_norm = nn.LayerNorm(out, eps=LN_EPS) if norm == "ln" else None
        self.pool = spec.pool
        self.fc = nn.Linear(out, spec.num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output: an NCHW map, or (N, tokens, C) after a transformer."""
        x = self.stages(self.stem(x))
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.dim() == 3:  # tokens: normalise, then the class token or the mean
            x = self.final_norm(x)
            x = x[:, 0] if self.pool == "token" else x.mean(dim=1)
        else:
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            if self.final_norm is not None:
                x = self.final_norm(x)
        return self.fc(x)


def init_weights(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal (fan_out) convs, BN weight 1 and
    bias 0; modules with an `own_init` (ConvNeXt and transformer blocks, patch stems) then
    apply their family's own (truncated normal, std 0.02).

    Then, for blocks marked `zero_init_residual`, the end of each residual branch is zeroed
    (last BN, layer scale or last linear) so the block starts as its shortcut (Goyal et al.
    2017). Linear layers elsewhere keep torch's default.
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
        if hasattr(module, "own_init"):
            module.own_init()
    for module in model.modules():
        if getattr(module, "zero_init_residual", False):
            module.start_as_identity()


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
