"""Declarative search spaces: YAML files that say which choices exist, and their Optuna labels.

A space file (packaged preset or user file) looks like::

    name: skip-ablation
    description: One line for `nas spaces`.
    stem: cifar               # a scalar fixes a value ...
    stem_width: [16, 32]      # ... a list is a categorical choice (label `stem_width`) ...
    shared:                   # sampled once, used by every stage (labels `depth`, `skip`)
      depth: {low: 1, high: 9, step: 2}   # ... an integer range (suggest_int)
      skip: [identity, none]
    stages:                   # per-stage choices (labels `stage1.width`, `stage2.block`, ...)
      - {stride: 1, width: [8, 16]}
      - {stride: 2, width: [16, 32], block: [basic, bottleneck], groups: [1, 2]}
    constraints: {max_params: 300000, max_flops: null}
    train: {optimizer: adamw, lr: 0.003}   # recipe defaults for this family (flags win)

NAS-Bench-201's cell (`block: cell`) takes its ops from a top-level `cell` mapping, one choice
per edge, labelled by the edge's name; one cell is sampled and every cell stage uses it::

    cell:
      "1<-0": [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]
      "2<-0": nor_conv_3x3    # a fixed edge is no label
      ...                     # every edge of `CELL_EDGES` is required
    shared: {block: cell, depth: 5}

Top-level choices: `stem`, `stem_width`, `preact`, `zero_init_residual`, `se_ratio`,
`num_stages` (a prefix of `stages` is used), `patch_size`, `layer_scale`, `drop_path`,
`pos_embed`, `pool`, `se_position`, `cell`. Stage fields: those of `StageSpec` but `ops`.
Block-specific fields are asked only of stages whose sampled block reads them (`BLOCK_FIELDS`:
`expansion` of bottleneck, dense, convnext and transformer blocks; `groups` and
`width_per_group` of bottlenecks; `compression` of dense blocks; `heads` of transformers), so
`block: [basic, dense, transformer]` mixes families in one space; the cell's edges are asked (after the stages) only if some sampled
stage is a cell, and a cell stage asks no skip (its edges are its shortcuts). Only choices
with more than one value become Optuna parameters.

A file is validated by the pydantic models of `search_spaces.space_schema` (its structure and
what its fields allow), then by `search_spaces.space_checks` (what only the whole space shows:
every sample builds, `zero_pad` never shrinks channels).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from search_spaces.space_checks import check_samples
from search_spaces.space_schema import (
    CONDITIONAL_FIELDS,
    GLOBAL_ORDER,
    STAGE_ORDER,
    Choice,
    SpaceError,
    SpaceFile,
    format_errors,
)
from search_spaces.spec import BLOCK_FIELDS, CELL_EDGES, ArchitectureSpec, StageSpec

if TYPE_CHECKING:
    import optuna


class _Mismatch(Exception):
    """Internal: a spec value is not in the space."""


# -- the space -----------------------------------------------------------------------------
class SearchSpace:
    """A validated search space: which architectures exist, and how Optuna picks one.

    Build with `load_space(name_or_path)` or `SearchSpace.from_dict(data, source=...)`.
    """

    def __init__(
        self,
        *,
        name: str,
        description: str,
        globals_: dict[str, Choice],
        shared: dict[str, Choice],
        stages: list[dict[str, Choice]],
        constraints: dict[str, int | None],
        source: str,
        train: dict[str, Any] | None = None,
        cell: dict[str, Choice] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.constraints = constraints
        # Recipe defaults the family trains best with (ConvNeXt and transformers: AdamW);
        # checked by `workers.TrainConfig` where the search builds its recipe.
        self.train = dict(train or {})
        self.source = source
        self._globals = globals_
        self._shared = shared
        self._stages = stages
        self._cell = dict(cell or {})  # edge -> op choice, in `CELL_EDGES` order

    def __repr__(self) -> str:
        return f"SearchSpace(name={self.name!r}, source={self.source!r})"

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: Any, *, source: str = "<dict>", default_name: str | None = None
    ) -> SearchSpace:
        """Validate the content of a space file: the `SpaceFile` models, then whole-space checks.

        Args:
            data: the parsed YAML (a mapping).
            source: where it came from, for error messages (a file path).
            default_name: the name when `data` has none (the file's stem).

        Raises:
            SpaceError: naming `source`, the key and the reason.
        """
        if isinstance(data, dict) and "name" not in data and default_name is not None:
            data = {"name": default_name, **data}
        try:
            file = SpaceFile.model_validate(data)
        except ValidationError as exc:
            raise SpaceError(format_errors(exc, source)) from None
        space = cls(
            name=file.name,
            description=file.description,
            globals_=file.global_choices(),
            shared=file.shared_choices(),
            stages=file.stage_choices(),
            constraints=file.limits(),
            source=source,
            train=file.train,
            cell=file.cell_choices(),
        )
        # What no model sees: enumerate the samples (up to MAX_CHECKED_COMBINATIONS).
        check_samples(source, space._globals, space._shared, space._stages)
        return space

    def to_dict(self) -> dict[str, Any]:
        """The validated content, JSON-ready; `from_dict(to_dict())` gives the same space."""
        data: dict[str, Any] = {"name": self.name, "description": self.description}
        for key in GLOBAL_ORDER:
            data[key] = self._globals[key].to_data()
        if self._cell:
            data["cell"] = {k: c.to_data() for k, c in self._cell.items()}
        data["shared"] = {k: c.to_data() for k, c in self._shared.items()}
        data["stages"] = [{k: c.to_data() for k, c in stage.items()} for stage in self._stages]
        data["constraints"] = dict(self.constraints)
        if self.train:
            data["train"] = dict(self.train)
        return data

    # -- sampling --------------------------------------------------------------------------
    def _sample(self, pick: Callable[[str, Choice], Any]) -> tuple[dict[str, Any], list[dict]]:
        """Walk the space in a fixed order, asking `pick(label, choice)` for every varied field.

        Fixed fields never reach `pick`. Returns the global values and one dict per stage.
        """

        def value(label: str, choice: Choice) -> Any:
            return choice.values[0] if choice.fixed else pick(label, choice)

        glob = {key: value(key, self._globals[key]) for key in GLOBAL_ORDER}
        shared = {
            key: value(key, c) for key, c in self._shared.items() if key not in CONDITIONAL_FIELDS
        }
        stages = []
        for i in range(glob["num_stages"]):
            stage = {}
            for key in STAGE_ORDER:
                if key in CONDITIONAL_FIELDS:
                    continue
                if key == "skip" and stage["block"] in ("dense", "cell"):
                    # A dense block always concatenates, a cell's edges are its shortcuts:
                    # nothing to ask.
                    stage[key] = "dense" if stage["block"] == "dense" else "identity"
                    continue
                stage[key] = (
                    shared[key]
                    if key in shared
                    else value(f"stage{i + 1}.{key}", self._stages[i][key])
                )
            for key in BLOCK_FIELDS[stage["block"]]:
                if key not in self._shared and key != "ops":  # a cell's ops: below
                    stage[key] = value(f"stage{i + 1}.{key}", self._stages[i][key])
            stages.append(stage)
        # A shared block-specific field is asked once, if any sampled stage reads it.
        for key in CONDITIONAL_FIELDS:
            readers = [s for s in stages if key in BLOCK_FIELDS[s["block"]]]
            if key in self._shared and readers:
                picked = value(key, self._shared[key])
                for stage in readers:
                    stage[key] = picked
        # One cell for every cell stage, as in NAS-Bench-201: its edges asked once.
        cells = [s for s in stages if s["block"] == "cell"]
        if cells:
            ops = tuple(value(edge, self._cell[edge]) for edge in CELL_EDGES)
            for stage in cells:
                stage["ops"] = ops
        return glob, stages

    def suggest(
        self, trial: optuna.trial.BaseTrial, *, in_channels: int, num_classes: int
    ) -> ArchitectureSpec:
        """Ask `trial` for every varied choice (stable labels) and return the spec.

        Does no real work: no model is built. Labels: the top-level fields by their name
        (`stem`, `stem_width`, `preact`, ..., `num_stages`), shared stage fields by their name
        (`depth`, `skip`, ...), per-stage fields as `stage<i>.<field>` (1-based), the cell's
        edges by their name (`1<-0`, ..., `3<-2`).

        Args:
            trial: an Optuna trial (or `optuna.trial.FixedTrial`).
            in_channels: channels of the dataset's images.
            num_classes: classes of the dataset.

        Raises:
            SpaceError: the sampled combination is not a valid architecture (a space that
                passed loading only gets here for user spaces too large to check at load).
        """
        glob, stages = self._sample(lambda label, choice: choice.suggest(trial, label))
        try:
            return ArchitectureSpec(
                stages=tuple(StageSpec(**s) for s in stages),
                stem=glob["stem"],
                stem_width=glob["stem_width"],
                in_channels=in_channels,
                num_classes=num_classes,
                preact=glob["preact"],
                zero_init_residual=glob["zero_init_residual"],
                se_ratio=glob["se_ratio"],
                patch_size=glob["patch_size"],
                layer_scale=glob["layer_scale"],
                drop_path=glob["drop_path"],
                pos_embed=glob["pos_embed"],
                pool=glob["pool"],
                se_position=glob["se_position"],
            )
        except ValueError as exc:
            raise SpaceError(f"{self.source}: sampled an invalid architecture: {exc}") from exc

    def params_for(self, spec: ArchitectureSpec) -> dict[str, Any] | None:
        """The trial params for which `suggest` returns `spec` (same `arch_id`), or None.

        Use with `study.enqueue_trial(params)` to seed a study with a known architecture.

        Args:
            spec: the architecture to find in this space.
        """
        params: dict[str, Any] = {}

        def target(label: str) -> Any:
            if label in GLOBAL_ORDER:
                return len(spec.stages) if label == "num_stages" else getattr(spec, label)
            if label in CELL_EDGES:  # the first cell speaks for all (checked below)
                cells = [s for s in spec.stages if s.block == "cell"]
                return cells[0].ops[CELL_EDGES.index(label)] if cells else None
            if label.startswith("stage"):
                index, key = label[len("stage") :].split(".", 1)
                stage = spec.stages[int(index) - 1]
                return getattr(stage, key)
            # A shared field: the first stage that reads it speaks for all (checked below);
            # a dense stage reads no skip. None (no reader): any allowed value will do.
            readers = [
                s
                for s in spec.stages
                if (label not in CONDITIONAL_FIELDS or label in BLOCK_FIELDS[s.block])
                and not (label == "skip" and s.block == "dense")
            ]
            return getattr(readers[0], label) if readers else None

        def pick(label: str, choice: Choice) -> Any:
            try:
                wanted = target(label)
            except (IndexError, AttributeError):
                raise _Mismatch(label) from None
            # A value the network ignores (e.g. `stem_width` of a `none` stem) may be outside
            # the space: take any allowed value and let the arch_id comparison decide.
            params[label] = wanted if choice.contains(wanted) else choice.values[0]
            return params[label]

        try:
            self._sample(pick)
        except _Mismatch:
            return None
        from optuna.trial import FixedTrial

        try:
            again = self.suggest(
                FixedTrial(params), in_channels=spec.in_channels, num_classes=spec.num_classes
            )
        except (SpaceError, ValueError):
            return None
        return params if again.arch_id == spec.arch_id else None

    def _structural_labels(self) -> dict[str, Choice]:
        """Varied choices that decide which other labels are asked."""
        labels: dict[str, Choice] = {}
        if not self._globals["num_stages"].fixed:
            labels["num_stages"] = self._globals["num_stages"]
        if "block" in self._shared:
            if not self._shared["block"].fixed:
                labels["block"] = self._shared["block"]
        else:
            for i, stage in enumerate(self._stages):
                if not stage["block"].fixed:
                    labels[f"stage{i + 1}.block"] = stage["block"]
        return labels

    def _label_sets(self) -> list[dict[str, Choice]]:
        """The (label -> choice) mapping asked under each structural combination."""
        structural = self._structural_labels()
        result = []
        for combo in itertools.product(*(c.values for c in structural.values())):
            fixed = dict(zip(structural, combo, strict=True))
            asked: dict[str, Choice] = {}

            def pick(label: str, choice: Choice, fixed: dict = fixed, asked: dict = asked) -> Any:
                asked[label] = choice
                return fixed.get(label, choice.values[0])

            self._sample(pick)
            result.append(asked)
        return result

    def labels(self) -> list[str]:
        """Every Optuna parameter label this space may ask, in asking order."""
        seen: dict[str, None] = {}
        for asked in self._label_sets():
            seen.update(dict.fromkeys(asked))
        return list(seen)

    def grid(self) -> dict[str, list[Any]] | None:
        """Value lists for `optuna.samplers.GridSampler`, or None if some label is conditional."""
        sets = self._label_sets()
        if any(set(s) != set(sets[0]) for s in sets):
            return None
        return {label: list(choice.values) for label, choice in sets[0].items()}


# -- loading -------------------------------------------------------------------------------
_SAFE_TAG_PREFIX = "tag:yaml.org,2002:"
_SAFE_TAGS = {
    f"{_SAFE_TAG_PREFIX}{t}"
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary", "set",
              "omap", "pairs", "merge", "value")
}


def _find_unsafe_tag(node: yaml.Node, path: str) -> tuple[str, str] | None:
    if node.tag not in _SAFE_TAGS:
        return path or "<top>", node.tag
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            found = _find_unsafe_tag(key_node, path) or _find_unsafe_tag(
                value_node, f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _find_unsafe_tag(item, f"{path}[{i}]")
            if found:
                return found
    return None


# libyaml's safe loader when PyYAML was built with it: the same documents, ~5x faster
# (a search loads its space before its first trial).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load`, with errors that name the file and, for foreign tags, the key."""
    loader = _SAFE_LOADER(text)
    try:
        node = loader.get_single_node()  # nodes only: constructs nothing yet
        if node is None:
            return None
        found = _find_unsafe_tag(node, "")
        if found:
            key, tag = found
            raise SpaceError(
                f"{source}: `{key}` got the YAML tag {tag!r}; allowed: plain YAML values "
                "(Python object tags are never loaded)"
            )
        return loader.construct_document(node)  # what `safe_load` does, from the same parse
    except yaml.YAMLError as exc:
        from search_spaces.space_schema import yaml_error_text

        raise SpaceError(f"{source}: {yaml_error_text(exc)}") from None
    finally:
        loader.dispose()


def _preset_files() -> dict[str, Any]:
    folder = resources.files("search_spaces.presets")
    return {
        entry.name.rsplit(".", 1)[0]: entry
        for entry in folder.iterdir()
        if entry.name.endswith((".yaml", ".yml"))
    }


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A packaged preset by name (`resnet`, ...) or a user's YAML file by path.

    Args:
        name_or_path: a preset name, or a path (anything with a `.yaml`/`.yml` suffix or a
            path separator, or an existing file).

    Raises:
        SpaceError: unknown preset (the message lists them), unreadable or invalid file (the
            message names the file, the key and the reason).
    """
    text_name = os.fspath(name_or_path)
    presets = _preset_files()
    if text_name in presets and os.path.sep not in text_name:
        entry = presets[text_name]
        return _load_text(entry.read_text(encoding="utf-8"), str(entry), text_name)
    path = Path(text_name)
    looks_like_path = path.suffix in (".yaml", ".yml") or os.path.sep in text_name or path.is_file()
    if not looks_like_path:
        raise SpaceError(
            f"`space` got {text_name!r}; allowed: a preset ({', '.join(sorted(presets))}) "
            "or a path to a YAML file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the space file: {exc.strerror or exc}") from None
    return _load_text(text, str(path), path.stem)


def _load_text(text: str, source: str, default_name: str) -> SearchSpace:
    data = _parse_yaml(text, source)
    return SearchSpace.from_dict(data, source=source, default_name=default_name)


def list_spaces() -> list[tuple[str, str]]:
    """(name, one-line description) of every packaged preset, sorted by name."""
    return [(name, load_space(name).description) for name in sorted(_preset_files())]
