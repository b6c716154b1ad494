"""SQLAlchemy models of the `nas_*` tables (the head revision; migrations are the history)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_STATES = ("complete", "pruned", "failed", "running")
SEARCH_STATUSES = ("running", "finished", "interrupted", "failed")

# JSON everywhere, JSONB on PostgreSQL so analysts can index and query into it.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class BaseModel(DeclarativeBase):
    """Our own metadata: Optuna's tables in the same database are never ours to touch."""

    metadata = sa.MetaData(naming_convention=NAMING)


class ArchitectureModel(BaseModel):
    """One network, keyed by `ArchitectureSpec.arch_id`; the spec JSON plus derived facts."""

    __tablename__ = "nas_architectures"

    arch_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    params: Mapped[int | None] = mapped_column(sa.BigInteger)
    flops: Mapped[int | None] = mapped_column(sa.BigInteger)
    input_size: Mapped[str | None] = mapped_column(sa.String(32))  # "HxW", e.g. "32x32"
    total_depth: Mapped[int] = mapped_column(sa.Integer)
    total_blocks: Mapped[int] = mapped_column(sa.Integer)
    num_stages: Mapped[int] = mapped_column(sa.Integer)
    block_types: Mapped[str] = mapped_column(sa.String(64))  # sorted, comma-separated
    skip_types: Mapped[str] = mapped_column(sa.String(128))  # sorted, comma-separated
    created: Mapped[datetime] = mapped_column(Timestamp)


class StageModel(BaseModel):
    """One typed row per stage of an architecture (stage numbers from 1, like `stage1.depth`)."""

    __tablename__ = "nas_stages"

    arch_id: Mapped[str] = mapped_column(
        sa.String(64),
        sa.ForeignKey("nas_architectures.arch_id", ondelete="CASCADE"),
        primary_key=True,
    )
    stage: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    depth: Mapped[int] = mapped_column(sa.Integer)
    width: Mapped[int] = mapped_column(sa.Integer)
    stride: Mapped[int] = mapped_column(sa.Integer)
    block: Mapped[str] = mapped_column(sa.String(16))
    expansion: Mapped[int] = mapped_column(sa.Integer)
    groups: Mapped[int] = mapped_column(sa.Integer)
    width_per_group: Mapped[int] = mapped_column(sa.Integer)
    skip: Mapped[str] = mapped_column(sa.String(16))
    heads: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    compression: Mapped[float | None] = mapped_column(sa.Float, nullable=True)


class RecipeModel(BaseModel):
    """A training recipe (`workers.TrainConfig` as a dict), keyed by its hash `recipe_id`."""

    __tablename__ = "nas_recipes"

    recipe_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSONType)
    dataset: Mapped[str | None] = mapped_column(sa.String(128))
    created: Mapped[datetime] = mapped_column(Timestamp)


class SearchModel(BaseModel):
    """One launch of `nas search`: who runs it and whether it is still alive (heartbeat)."""

    __tablename__ = "nas_searches"
    __table_args__ = (sa.CheckConstraint(_in("status", SEARCH_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(sa.String(16))
    host: Mapped[str | None] = mapped_column(sa.String(255))
    pid: Mapped[int | None] = mapped_column(sa.Integer)
    started: Mapped[datetime] = mapped_column(Timestamp)
    heartbeat: Mapped[datetime] = mapped_column(Timestamp)
    finished: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set by `nas stop`: the driver sees it on its next heartbeat and ends the search cleanly.
    stop_requested_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # At each heartbeat: {trial number: seconds since its last sign of life} of what runs.
    live: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(sa.Text)  # what a `failed` search said


class RunModel(BaseModel):
    """One trial's outcome: trained, pruned, failed, running, or answered from the cache."""

    __tablename__ = "nas_runs"
    __table_args__ = (
        sa.UniqueConstraint("study", "trial_number"),
        sa.CheckConstraint(_in("state", RUN_STATES), name="state"),
        sa.Index("ix_nas_runs_cache_key", "arch_id", "recipe_id", "dataset", "fidelity"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512))
    trial_number: Mapped[int] = mapped_column(sa.Integer)
    arch_id: Mapped[str] = mapped_column(sa.String(64))
    recipe_id: Mapped[str | None] = mapped_column(sa.String(64))
    dataset: Mapped[str | None] = mapped_column(sa.String(128))
    fidelity: Mapped[int | None] = mapped_column(sa.Integer)  # epochs
    state: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    val_accuracy: Mapped[float | None] = mapped_column(sa.Float)
    best_val_accuracy: Mapped[float | None] = mapped_column(sa.Float)
    val_loss: Mapped[float | None] = mapped_column(sa.Float)
    params: Mapped[int | None] = mapped_column(sa.BigInteger)
    flops: Mapped[int | None] = mapped_column(sa.BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    latency_ms_batch: Mapped[float | None] = mapped_column(sa.Float)
    samples_per_s: Mapped[float | None] = mapped_column(sa.Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(sa.Float)
    device: Mapped[str | None] = mapped_column(sa.String(64))
    host: Mapped[str | None] = mapped_column(sa.String(255))
    node_id: Mapped[str | None] = mapped_column(sa.String(128))
    started: Mapped[datetime | None] = mapped_column(Timestamp)
    finished: Mapped[datetime | None] = mapped_column(Timestamp)
    duration_s: Mapped[float | None] = mapped_column(sa.Float)
    cached_from: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("nas_runs.id", ondelete="SET NULL")
    )
    retry_of: Mapped[int | None] = mapped_column(sa.Integer)  # trial number it retries
    search_id: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("nas_searches.id", ondelete="SET NULL")
    )
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    updated: Mapped[datetime | None] = mapped_column(Timestamp)  # last write of this row
    # The trained weights in the artifact store (older runs: `nas_weights`), checked on read.
    weights_artifact: Mapped[str | None] = mapped_column(sa.String(64))
    weights_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    weights_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    # The run whose trained weights this one started from (a function-preserving morph).
    inherited_from: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("nas_runs.id", ondelete="SET NULL")
    )


class EpochModel(BaseModel):
    """The learning curve of a run: one row per finished epoch."""

    __tablename__ = "nas_epochs"

    run_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("nas_runs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(sa.Float)
    val_loss: Mapped[float | None] = mapped_column(sa.Float)
    val_accuracy: Mapped[float | None] = mapped_column(sa.Float)
    lr: Mapped[float | None] = mapped_column(sa.Float)
    seconds: Mapped[float | None] = mapped_column(sa.Float)


class WeightsModel(BaseModel):
    """The trained weights a worker sent back, as safetensors bytes (never pickle)."""

    __tablename__ = "nas_weights"

    run_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("nas_runs.id", ondelete="CASCADE"), primary_key=True
    )
    format: Mapped[str] = mapped_column(sa.String(32), server_default="safetensors")
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


class MetaModel(BaseModel):
    """Small key/value facts about the store itself (e.g. which flavour of views exists)."""

    __tablename__ = "nas_meta"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)
