"""Human-readable views of a spec for `nas show`: a per-stage table and a text rendering."""

from __future__ import annotations

from typing import Any

from search_spaces.cost import stage_costs
from search_spaces.spec import ArchitectureSpec, block_label

COLUMNS = ("part", "blocks", "block", "skip", "stride", "channels", "output", "params", "MACs")


def stage_table(spec: ArchitectureSpec, input_size: tuple[int, int] | int) -> list[dict[str, Any]]:
    """One row per part (stem, each stage, head) with its shape and costs.

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int.

    Returns:
        Dicts with `stage` (0 = stem, 1..n, None = head), `name`, `depth`, `block`, `skip`,
        `width`, `stride`, `in_channels`, `out_channels`, `resolution`, `params`, `flops`
        (multiply-adds) and `params_share` / `flops_share` (fractions of the totals).
        Stem and head rows have None for the stage-only fields.
    """
    rows = stage_costs(spec, input_size)
    total_params = sum(r["params"] for r in rows) or 1
    total_flops = sum(r["flops"] for r in rows) or 1
    table = []
    for row in rows:
        stage = spec.stages[row["stage"] - 1] if row["stage"] else None
        table.append(
            {
                **row,
                "block": _block_text(stage) if stage else None,
                "skip": _skip_text(stage) if stage else None,
                "width": stage.width if stage else None,
                "stride": stage.stride if stage else None,
                "params_share": row["params"] / total_params,
                "flops_share": row["flops"] / total_flops,
            }
        )
    return table


def _skip_text(stage: Any) -> str:
    # A cell's skip is `identity` only in name: its own skip_connect edges are its shortcuts.
    return "cell edges" if stage.block == "cell" else stage.skip


def _block_text(stage: Any) -> str:
    if stage.block == "bottleneck":
        text = f"bottleneck x{stage.expansion}"
        if stage.groups > 1:
            text += f" g{stage.groups}"
        return text + f" inner {stage.inner_width}"
    return block_label(stage)


def human(n: float) -> str:
    """12345678 -> `12.35M`."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def render_text(spec: ArchitectureSpec, input_size: tuple[int, int] | int) -> str:
    """A plain-text description: header (name, arch_id, options), stage table and totals.

    Args:
        spec: the architecture.
        input_size: input image size, `(height, width)` or one int.
    """
    table = stage_table(spec, input_size)
    size = input_size if isinstance(input_size, tuple) else (input_size, input_size)
    canonical = spec.canonical_dict()  # what shapes this network, and nothing else
    options = [f"stem {spec.stem}", f"{spec.in_channels}x{size[0]}x{size[1]} input"]
    options.append(f"{spec.num_classes} classes")
    if canonical["preact"]:
        options.append("pre-activation")
    if canonical["zero_init_residual"]:
        options.append("zero-init residual")
    if canonical["se_ratio"]:
        inner = "se_position" in canonical
        options.append(f"SE {spec.se_ratio:g}{' after the 3x3' if inner else ''}")
    if "patch_size" in canonical:
        options.append(f"patch {spec.patch_size}")
    if "layer_scale" in canonical:
        options.append(f"layer scale {spec.layer_scale:g}")
    if "drop_path" in canonical:
        options.append(f"stochastic depth {spec.drop_path:g}")
    if "pos_embed" in canonical:
        options.append(f"{spec.pos_embed}x{spec.pos_embed} position embedding")
    if spec.pool == "token":
        options.append("class token")
    lines = [
        f"{spec.name or 'architecture'}  arch_id {spec.arch_id}",
        f"{', '.join(options)}; {spec.total_depth} weighted layers, {spec.total_blocks} blocks",
        "",
    ]
    cells = [COLUMNS]
    for row in table:
        cells.append(
            (
                row["name"],
                "" if row["depth"] is None else str(row["depth"]),
                row["block"] or "",
                row["skip"] or "",
                "" if row["stride"] is None else str(row["stride"]),
                f"{row['in_channels']}->{row['out_channels']}",
                "" if row["stage"] is None else "x".join(map(str, row["resolution"])),
                f"{human(row['params'])} ({row['params_share']:.0%})",
                f"{human(row['flops'])} ({row['flops_share']:.0%})",
            )
        )
    total_params = sum(r["params"] for r in table)
    total_flops = sum(r["flops"] for r in table)
    cells.append(
        (
            "total",
            str(spec.total_blocks),
            "",
            "",
            "",
            "",
            "",
            human(total_params),
            human(total_flops),
        )
    )
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(COLUMNS))]
    for i, row in enumerate(cells):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if i == 0 or i == len(cells) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"params {total_params:,}  MACs {total_flops:,}")
    return "\n".join(lines)
