"""What a search reads before anything heavy starts: its space, replay table, recipe and the
dataset's shape. Light on purpose (no torch, Ray or Optuna): `nas search` checks these first,
so a typo in a config or a malformed dataset is reported in well under a second."""

from __future__ import annotations

from dataclasses import dataclass

from nas.config import SearchConfig
from nas.errors import UserError
from nas.executors.replay import replay_data, replay_recipe
from nas.tables import Table, open_table
from search_spaces import SearchSpace, load_space
from workers import TrainConfig, dataset_info
from workers.data import DatasetInfo


@dataclass(frozen=True)
class Inputs:
    space: SearchSpace
    table: Table | None  # --replay
    recipe: TrainConfig
    data: DatasetInfo


def resolve_inputs(config: SearchConfig) -> Inputs:
    """The space, table, recipe and dataset facts of `config`; UserError for what is wrong."""
    space = _load_space(config.space)
    table = None if config.replay is None else _replay_table(config, space)
    if table is not None and config.inherit:
        raise UserError(f"--inherit starts trained weights into new candidates, and --replay "
                        f"{config.replay} trains nothing: use one or the other")
    recipe, data = _recipe_and_data(config, space, table)
    if config.inherit_epochs is not None and config.inherit_epochs > recipe.epochs:
        raise UserError(f"--inherit-epochs {config.inherit_epochs} is more than the recipe's "
                        f"{recipe.epochs} epochs; allowed: 1 to {recipe.epochs}")
    return Inputs(space, table, recipe, data)


def _load_space(name: str) -> SearchSpace:
    try:
        return load_space(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _replay_table(config: SearchConfig, space: SearchSpace) -> Table:
    table = open_table(config.replay, storage=config.storage)
    if table.space != space.name:
        raise UserError(f"--replay {config.replay} holds architectures of space "
                        f"`{table.space}`, not `{space.name}`: search it with "
                        f"--space {table.space_source or table.space}")
    return table


def _recipe_and_data(config: SearchConfig, space: SearchSpace,
                     table: Table | None) -> tuple[TrainConfig, DatasetInfo]:
    try:
        # The space's recipe defaults (e.g. AdamW for ConvNeXt), then the user's settings.
        train = ({**space.train, **config.train} if table is None
                 else replay_recipe(table, config.train))
        recipe = TrainConfig.from_dict(train)
    except ValueError as exc:
        where = f" (with `train` of space {space.source})" if space.train else ""
        raise UserError(f"training recipe{where}: {exc}") from None
    try:
        data = dataset_info(recipe) if table is None else replay_data(table, recipe.dataset)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return recipe, data
