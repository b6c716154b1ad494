"""The analyst views over `nas_*` (and Optuna's) tables; created after migrations, not by them.

Views live outside the revision chain because one of them joins Optuna's tables, which exist
only once Optuna has created its storage on the URL. `nas_meta` remembers which flavour was
created (`<VIEWS_VERSION>:optuna` or `<VIEWS_VERSION>:plain`), so a Store that opens after
Optuna's tables appeared (or after the view text changed) recreates them, and otherwise leaves
them alone (dropping a view takes a lock that would wait on an analyst's running query).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

VIEWS_VERSION = "1"
VIEW_NAMES = ("nas_trial_summary", "nas_skip_depth")
META_KEY = "views"

# Depth buckets of `nas_architectures.total_depth` (weighted layers on the longest path):
# CIFAR resnet20 and ImageNet resnet18 fall in the first, resnet110 and resnet101 in the fourth.
DEPTH_BUCKETS = ((1, 20), (21, 40), (41, 60), (61, 110), (111, 100_000))

_RUN_COLUMNS = """
    r.id AS run_id, r.study, r.trial_number, r.state, {optuna}
    r.reason, r.val_accuracy, r.best_val_accuracy, r.val_loss,
    r.params, r.flops, r.latency_ms, r.latency_ms_batch, r.samples_per_s, r.peak_memory_mb,
    r.duration_s, r.fidelity, r.dataset, r.recipe_id, r.arch_id,
    a.total_depth, a.total_blocks, a.num_stages, a.block_types, a.skip_types, a.input_size,
    r.cached_from, r.retry_of, r.search_id, r.device, r.host, r.node_id, r.started, r.finished
"""

TRIAL_SUMMARY_OPTUNA = f"""
CREATE VIEW nas_trial_summary AS
SELECT {_RUN_COLUMNS.format(optuna="CAST(t.state AS VARCHAR(16)) AS optuna_state, t.trial_id AS optuna_trial_id,")}
FROM nas_runs r
LEFT JOIN nas_architectures a ON a.arch_id = r.arch_id
LEFT JOIN studies s ON s.study_name = r.study
LEFT JOIN trials t ON t.study_id = s.study_id AND t.number = r.trial_number
"""

TRIAL_SUMMARY_PLAIN = f"""
CREATE VIEW nas_trial_summary AS
SELECT {_RUN_COLUMNS.format(optuna="CAST(NULL AS VARCHAR(16)) AS optuna_state, CAST(NULL AS INTEGER) AS optuna_trial_id,")}
FROM nas_runs r
LEFT JOIN nas_architectures a ON a.arch_id = r.arch_id
"""

_BUCKETS = "\n    UNION ALL ".join(
    f"SELECT '{lo}-{hi}' AS depth_bucket, {lo} AS depth_min, {hi} AS depth_max"
    if hi < 100_000
    else f"SELECT '{lo}+' AS depth_bucket, {lo} AS depth_min, {hi} AS depth_max"
    for lo, hi in DEPTH_BUCKETS
)

# Cached runs repeat another run's measurement; counting them would weight popular proposals.
SKIP_DEPTH = f"""
CREATE VIEW nas_skip_depth AS
SELECT r.study, a.skip_types AS skip_type, b.depth_bucket, b.depth_min, b.depth_max,
       COUNT(*) AS runs,
       AVG(r.val_accuracy) AS mean_val_accuracy,
       MAX(r.val_accuracy) AS max_val_accuracy
FROM nas_runs r
JOIN nas_architectures a ON a.arch_id = r.arch_id
JOIN (
    {_BUCKETS}
) b ON a.total_depth BETWEEN b.depth_min AND b.depth_max
WHERE r.state = 'complete' AND r.cached_from IS NULL
GROUP BY r.study, a.skip_types, b.depth_bucket, b.depth_min, b.depth_max
"""


def has_optuna_tables(conn: Connection) -> bool:
    inspector = sa.inspect(conn)
    return inspector.has_table("studies") and inspector.has_table("trials")


def wanted_flavour(conn: Connection) -> str:
    return f"{VIEWS_VERSION}:{'optuna' if has_optuna_tables(conn) else 'plain'}"


def current_flavour(conn: Connection) -> str | None:
    """The flavour recorded in `nas_meta`, or None when the views are missing."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("nas_meta"):
        return None
    if not set(VIEW_NAMES) <= set(inspector.get_view_names()):
        return None
    return conn.execute(
        sa.text("SELECT value FROM nas_meta WHERE key = :key"), {"key": META_KEY}
    ).scalar()


def views_up_to_date(conn: Connection) -> bool:
    return current_flavour(conn) == wanted_flavour(conn)


def drop_views(conn: Connection) -> None:
    """Drop our views (migrations that copy tables cannot run while views reference them)."""
    for name in VIEW_NAMES:
        conn.execute(sa.text(f"DROP VIEW IF EXISTS {name}"))


def ensure_views(conn: Connection, *, force: bool = False) -> str:
    """Create or recreate the views when missing, outdated or of the wrong flavour."""
    flavour = wanted_flavour(conn)
    if not force and current_flavour(conn) == flavour:
        return flavour
    drop_views(conn)
    optuna = flavour.endswith(":optuna")
    conn.execute(sa.text(TRIAL_SUMMARY_OPTUNA if optuna else TRIAL_SUMMARY_PLAIN))
    conn.execute(sa.text(SKIP_DEPTH))
    updated = conn.execute(
        sa.text("UPDATE nas_meta SET value = :value WHERE key = :key"),
        {"key": META_KEY, "value": flavour},
    )
    if updated.rowcount == 0:
        conn.execute(
            sa.text("INSERT INTO nas_meta (key, value) VALUES (:key, :value)"),
            {"key": META_KEY, "value": flavour},
        )
    return flavour
