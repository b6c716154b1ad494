"""Parameters, multiply-adds and training memory of a spec, from the data alone (no model is built)."""

from __future__ import annotations

from typing import Any, NamedTuple

from search_spaces.blocks import BLOCKS, STEM_CONVS, Stem, block_inputs
from search_spaces.builder import STAGES
from search_spaces.layers import Cost, conv_out
from search_spaces.spec import (
    BLOCK_TYPES,
    CELL_CONV_OPS,
    PATCH_STEMS,
    ArchitectureSpec,
    StageSpec,
)
from search_spaces.transformer import _token_and_grid


class Complexity(NamedTuple):
    """`params`: trainable parameters; `flops`: multiply-adds (MACs) of one image's forward."""

    params: int
    flops: int


def _size(input_size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(input_size, bool):
        raise ValueError(f"`input_size` got {input_size!r}; allowed: an int or (height, width)")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if (
        not isinstance(input_size, (tuple, list))
        or len(input_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_size)
    ):
        raise ValueError(
            f"`input_size` got {input_size!r}; allowed: a positive int or (height, width)"
        )
    return int(input_size[0]), int(input_size[1])


def stage_costs(spec: ArchitectureSpec, input_size: tuple[int, int] | int) -> list[dict[str, Any]]:
    """Per-part costs: the stem (`stage` 0), each stage (1..n) and the head (`stage` None).

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int for a square image.

    Returns:
        One dict per part: `stage`, `name`, `in_channels`, `out_channels`, `resolution`
        (output `(h, w)`), `depth`, `params`, `flops`.
    """
    h, w = _size(input_size)
    rows: list[dict[str, Any]] = []
    stem = Stem.cost(
        spec.stem, spec.in_channels, spec.stem_width, spec.stem_preact, h, w, spec.patch_size
    )
    rows.append(_row(0, "stem", spec.in_channels, spec.stem_out, None, stem))
    h, w = stem.height, stem.width
    for i, (stage, in_ch) in enumerate(
        zip(spec.stages, spec.stage_in_channels(), strict=True), start=1
    ):
        c = STAGES[stage.block].cost(spec, i - 1, in_ch, h, w)
        rows.append(_row(i, f"stage{i}", in_ch, stage.out_channels(in_ch), stage.depth, c))
        h, w = c.height, c.width
    out = spec.out_channels
    final_norm = 2 * out if spec.final_norm else 0
    head = Cost(final_norm + out * spec.num_classes + spec.num_classes, out * spec.num_classes, 1, 1)
    rows.append(_row(None, "head", out, spec.num_classes, None, head))
    return rows


def _row(stage: int | None, name: str, cin: int, cout: int, depth: int | None, c: Cost) -> dict:
    return {
        "stage": stage,
        "name": name,
        "in_channels": cin,
        "out_channels": cout,
        "resolution": (c.height, c.width),
        "depth": depth,
        "params": c.params,
        "flops": c.flops,
    }


def complexity(spec: ArchitectureSpec, input_size: tuple[int, int] | int) -> Complexity:
    """Trainable parameters and multiply-adds of one forward pass of one image.

    Counts every conv, linear, norm, gate, layer-scale, token and position parameter
    exactly; FLOPs are the multiply-adds of convs, linears and attention's two matrix
    products (what `FlopCounterMode` counts, halved), not of norms, activations, pooling,
    additions or a resized position embedding.

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int for a square image.
    """
    rows = stage_costs(spec, input_size)
    return Complexity(sum(r["params"] for r in rows), sum(r["flops"] for r in rows))


# -- training memory ---------------------------------------------------------------------------
class MemoryEstimate(NamedTuple):
    """Bytes one training process needs for a spec, predicted from the data alone.

    `weights`, `gradients`, `optimizer`: the parameters, their gradients and the optimizer's
    per-parameter buffers. `activations`: the tensors autograd keeps from the forward pass
    for the backward pass, at the training batch size. `workspace`: the largest of what comes
    and goes on top: gradients of activations during the backward pass, the optimizer step's
    temporaries, one forward pass at the evaluation batch size. `total` is their sum.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.workspace


class _Saved:
    """Tensors kept for the backward pass, per image: float values, int64 index bytes and the
    largest single tensor (what the transient gradients of the backward pass scale with)."""

    def __init__(self) -> None:
        self.values = 0
        self.index_bytes = 0
        self.largest = 0

    def add(self, channels: int, h: int, w: int = 1, times: int = 1) -> None:
        n = channels * h * w
        self.values += n * times
        self.largest = max(self.largest, n)

    def stats(self, values: int) -> None:
        """A norm's saved mean and inverse std (per channel for BN, per position for LN)."""
        self.values += 2 * values


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _stem_saved(t: _Saved, spec: ArchitectureSpec, h: int, w: int) -> tuple[int, int]:
    t.add(spec.in_channels, h, w)  # the input batch: the first layer keeps it
    kind, width = spec.stem, spec.stem_width
    if kind == "none":
        return h, w
    if kind in PATCH_STEMS:
        p = spec.patch_size
        ho, wo = _ceil_div(h, p), _ceil_div(w, p)
        if h % p or w % p:
            t.add(spec.in_channels, ho * p, wo * p)  # the zero-padded copy the conv keeps
        t.add(width, ho, wo, 2 if kind == "patch_ln" else 1)  # conv output (+ LayerNorm's)
        if kind == "patch_ln":
            t.stats(ho * wo)
        return ho, wo
    kernel, stride = STEM_CONVS[kind]
    ho, wo = conv_out(h, kernel, stride), conv_out(w, kernel, stride)
    bn = not (spec.stem_preact and kind == "cifar")
    t.add(width, ho, wo, 2 if bn else 1)  # conv output (kept by BN), the ReLU's (or BN's)
    if bn:
        t.stats(width)
    if kind == "imagenet":
        hp, wp = conv_out(ho, 3, 2), conv_out(wo, 3, 2)
        t.index_bytes += 8 * width * hp * wp  # max-pool indices
        t.add(width, hp, wp)
        return hp, wp
    return ho, wo


def _resnet_block_saved(
    t: _Saved, spec: ArchitectureSpec, stage: StageSpec, cin: int, stride: int, h: int, w: int
) -> tuple[int, int]:
    ho, wo = conv_out(h, 3, stride), conv_out(w, 3, stride)
    out, preact = stage.branch_out, spec.preact
    inner_se = spec.se_ratio > 0 and spec.se_position == "inner" and stage.block == "bottleneck"
    branch_se = spec.se_ratio > 0 and not inner_se
    gated = stage.skip == "gated"
    if preact:
        t.add(cin, h, w)  # ReLU(BN(x)), read by the branch (and a projection)
        t.stats(cin)
    if stage.block == "basic":
        t.add(stage.width, ho, wo, 2)  # conv1 output (kept by its BN), ReLU output
        t.stats(stage.width)
        if not preact:
            t.add(out, ho, wo)  # conv2 output, kept by bn2
            t.stats(out)
    else:
        inner = stage.inner_width
        t.add(inner, h, w, 2)  # conv1 output, ReLU output
        t.add(inner, ho, wo, 2)  # conv2 output, ReLU output
        t.stats(2 * inner)
        if inner_se:
            t.add(inner, ho, wo)  # the gated map, read by conv3 (or bn3)
            t.values += 4 * inner
        if not preact:
            t.add(out, ho, wo)  # conv3 output, kept by bn3
            t.stats(out)
    if branch_se or gated:
        t.add(out, ho, wo)  # branch output, kept by the SE product or the gate
    if branch_se:
        t.values += 4 * out  # pooled, squeezed, excited: per channel, not per position
        if gated:
            t.add(out, ho, wo)
    changes = stride != 1 or cin != out
    if not preact and (stage.skip == "projection" or (changes and stage.skip in ("identity", "gated"))):
        t.add(out, ho, wo)  # projection conv output, kept by its BN
        t.stats(out)
    # The block's output: the post-activation ReLU's, or the sum the next layer keeps.
    t.add(cin + out if stage.skip == "dense" else out, ho, wo)
    return ho, wo


def _dense_stage_saved(t: _Saved, stage: StageSpec, in_ch: int, h: int, w: int) -> tuple[int, int]:
    channels = stage.entry_channels(in_ch)
    if stage.has_entry(in_ch):
        t.add(in_ch, h, w)  # ReLU output
        t.stats(in_ch)
        t.add(channels, h, w)  # conv output, kept by the pool
        h, w = _ceil_div(h, 2), _ceil_div(w, 2)
        t.add(channels, h, w)
    inner, growth = stage.inner_width, stage.width
    for i in range(stage.depth):
        c = channels + i * growth
        t.add(c, h, w)  # ReLU(BN(x))
        t.add(inner, h, w, 2)  # 1x1 conv output (kept by BN), ReLU output
        t.add(c + growth, h, w)  # the concatenation, kept by the next layer's BN
        t.stats(c + inner)
    return h, w


def _entry_saved(t: _Saved, stage: StageSpec, in_ch: int, h: int, w: int) -> tuple[int, int]:
    if not stage.has_entry(in_ch):
        return h, w
    s = stage.stride
    ho, wo = _ceil_div(h, s), _ceil_div(w, s)
    t.add(in_ch, h, w)  # LayerNorm output
    t.stats(h * w)
    if h % s or w % s:
        t.add(in_ch, ho * s, wo * s)  # its zero-padded copy
    t.add(stage.width, ho, wo)
    return ho, wo


def _branch_saves(spec: ArchitectureSpec, stage: StageSpec) -> int:
    """Copies of a convnext/transformer branch kept by its layer scale and gate products."""
    adds = stage.skip != "none"
    return int(adds and spec.layer_scale > 0) + int(stage.skip == "gated")


def _convnext_stage_saved(
    t: _Saved, spec: ArchitectureSpec, stage: StageSpec, in_ch: int, h: int, w: int
) -> tuple[int, int]:
    h, w = _entry_saved(t, stage, in_ch, h, w)
    c, inner = stage.width, stage.inner_width
    for _ in range(stage.depth):
        t.add(c, h, w, 2)  # depthwise conv output (kept by LayerNorm), LayerNorm output
        t.add(inner, h, w, 2)  # pw1 output (kept by GELU), GELU output
        t.add(c, h, w, _branch_saves(spec, stage) + 1)  # + the block's output
        t.stats(h * w)
    return h, w


def _transformer_stage_saved(
    t: _Saved, spec: ArchitectureSpec, index: int, in_ch: int, h: int, w: int
) -> tuple[int, int, int]:
    stage = spec.stages[index]
    h, w = _entry_saved(t, stage, in_ch, h, w)
    has_token, grid = _token_and_grid(spec, index)
    tokens, c, inner = h * w + int(has_token), stage.width, stage.inner_width
    if has_token or grid:
        t.add(c, tokens)  # the stream with the class token or positions added
    branch = _branch_saves(spec, stage)
    for _ in range(stage.depth):
        # norm1 output, q k v, attention output, heads merged (kept by proj), first sum,
        # norm2 output, the block's output; the branch copies kept by scale and gate.
        t.add(c, tokens, 1, 9 + 2 * branch)
        t.add(inner, tokens, 1, 2)  # fc1 output (kept by GELU), GELU output
        t.values += stage.heads * tokens  # attention's log-sum-exp
        t.stats(2 * tokens)
    if index < len(spec.stages) - 1:
        t.add(c, h, w)  # tokens back to a map (a copy), kept by the next layer
    return h, w, tokens


def _cell_stage_saved(t: _Saved, stage: StageSpec, in_ch: int, h: int, w: int) -> tuple[int, int]:
    c = stage.width
    if stage.has_entry(in_ch):
        ho, wo = conv_out(h, 3, stage.stride), conv_out(w, 3, stage.stride)
        t.add(in_ch, h, w)  # conv_a's ReLU output
        t.add(c, ho, wo, 3)  # conv_a output (kept by BN), conv_b's ReLU and conv outputs
        t.stats(2 * c)
        if stage.stride == 2:
            t.add(in_ch, ho, wo)  # the pooled input, kept by the shortcut's conv
        elif in_ch != c:
            t.add(in_ch, h, w)  # the shortcut's ReLU output
            t.add(c, h, w)  # its conv output
            t.stats(c)
        t.add(c, ho, wo)  # the sum
        h, w = ho, wo
    convs = sum(op in CELL_CONV_OPS for op in stage.ops)
    for _ in range(stage.depth):
        # Each conv op keeps its ReLU and conv outputs; each of nodes 1-3 is counted as kept
        # (it is where a pooling edge or the next layer reads it).
        t.add(c, h, w, 2 * convs + 3)
        t.stats(convs * c)
    return h, w


def saved_activations(
    spec: ArchitectureSpec, input_size: tuple[int, int] | int
) -> tuple[int, int, int]:
    """What one image's training forward pass keeps for the backward pass, from the spec.

    Counts the tensors autograd saves, layer by layer: a conv's or linear's input, a norm's
    input, a ReLU's output, GELU's input, a product's operands, a pooling's input and
    indices, attention's q, k, v and output; additions and concatenations keep nothing. A
    tensor kept by several layers counts once. Per-channel statistics are left out.

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int for a square image.

    Returns:
        (float values kept, bytes of int64 indices kept, values of the largest kept tensor).
    """
    h, w = _size(input_size)
    t = _Saved()
    h, w = _stem_saved(t, spec, h, w)
    tokens = None
    for i, (stage, in_ch) in enumerate(
        zip(spec.stages, spec.stage_in_channels(), strict=True)
    ):
        tokens = None
        if stage.block in BLOCKS:
            for cin, stride in block_inputs(stage, in_ch):
                h, w = _resnet_block_saved(t, spec, stage, cin, stride, h, w)
        elif stage.block == "dense":
            h, w = _dense_stage_saved(t, stage, in_ch, h, w)
        elif stage.block == "convnext":
            h, w = _convnext_stage_saved(t, spec, stage, in_ch, h, w)
        elif stage.block == "transformer":
            h, w, tokens = _transformer_stage_saved(t, spec, i, in_ch, h, w)
        elif stage.block == "cell":
            h, w = _cell_stage_saved(t, stage, in_ch, h, w)
        else:  # a new block type must say what it keeps before it can be priced
            raise ValueError(f"`block` got {stage.block!r}; allowed: {' | '.join(BLOCK_TYPES)}")
    out = spec.out_channels
    if spec.final_norm == "bn":
        t.add(out, h, w)  # ReLU(BN(x)), kept by the pooling
        t.stats(out)
    if tokens is not None:
        t.add(out, tokens)  # the final LayerNorm's output, read by the head
        t.stats(tokens)
    t.values += 2 * out + 2 * spec.num_classes  # pooled features (+ LayerNorm), logits
    return t.values, t.index_bytes, t.largest


def training_memory(
    spec: ArchitectureSpec,
    input_size: tuple[int, int] | int,
    batch_size: int,
    *,
    optimizer_states: int = 1,
    bytes_per_value: int = 4,
    eval_batch_size: int | None = None,
) -> MemoryEstimate:
    """Bytes a training step of `spec` needs at `batch_size`, from the spec alone.

    Weights, gradients and `optimizer_states` buffers per parameter, plus what the forward
    pass keeps for the backward pass (`saved_activations`) times the batch size, plus room
    for what comes and goes, the largest of: two gradients the size of the largest kept
    tensor in the backward pass, two parameter-sized temporaries in the optimizer step
    (foreach kernels), three of the largest tensors at `eval_batch_size` in a forward pass
    without autograd. It errs high: fused kernels (`torch.compile`), mixed precision (2-byte
    activations) and tensors freed early make the real peak lower. What the allocator holds
    beyond live tensors and kernel workspaces (cuDNN) are left to the caller's margin.

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int for a square image.
        batch_size: training samples per step.
        optimizer_states: buffers per parameter: 1 for SGD with momentum, 2 for Adam/AdamW.
        bytes_per_value: bytes of one parameter or activation value (4 for float32).
        eval_batch_size: samples per evaluation step (default `batch_size`).
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("optimizer_states", optimizer_states, 0),
        ("bytes_per_value", bytes_per_value, 1),
        ("eval_batch_size", batch_size if eval_batch_size is None else eval_batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` got {value!r}; allowed: an integer >= {low}")
    eval_batch = batch_size if eval_batch_size is None else eval_batch_size
    param_bytes = complexity(spec, input_size).params * bytes_per_value
    values, index_bytes, largest = saved_activations(spec, input_size)
    activations = batch_size * (values * bytes_per_value + index_bytes)
    workspace = max(
        2 * largest * batch_size * bytes_per_value,
        2 * param_bytes,
        3 * largest * eval_batch * bytes_per_value,
    )
    return MemoryEstimate(
        weights=param_bytes,
        gradients=param_bytes,
        optimizer=optimizer_states * param_bytes,
        activations=activations,
        workspace=workspace,
    )
