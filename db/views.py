"""Convenience views and the analysis' indexes, created with the schema (`db.engine.open_engine`).

The views are for people's SQL. Our own readers (analysis/, `python -m db export final`) use the
SELECTs below as subqueries: they open the file read-only (`db.engine.open_readonly`) and cannot
create a view that a file written before it lacks. The index only makes their reads faster.

Views (plain SQL over `runs` and `metrics`; query them like tables):

``run_final``   one row per (run, split, name): the metric's value at the last epoch it was logged
                (`epoch`), with the run's status, task, dataset, model, norm, bs, lr and seed.
                Every status is included: filter on ``status = 'completed'`` before averaging.
                ``value`` is NULL for NaN (a diverged run's last loss, for example).
``run_summary`` one row per run (all statuses): the runs columns people ask about, seconds per
                epoch, and ``final_metrics``: a JSON object {"test/acc": 0.91, "test/loss": ...}
                of its `run_final` values (``json_extract(final_metrics, '$."test/acc"')`` in
                SQLite, ``final_metrics->>'test/acc'`` in PostgreSQL).

"Final" is per metric (its own last epoch), not `runs.epochs_done`, so a metric logged every
few epochs (FID) still has a final value.

Indexes: ``ix_metrics_split_name`` on metrics (split, name, run_id, epoch, value). It lives here,
not in db/schema.py (another module's), and is created with IF NOT EXISTS on every open. It
covers both of the analysis' reads: `run_final`'s GROUP BY (one ordered index scan) and a
learning curve (split = ? AND name = ?, a range of the index). Measured on 5,000 runs x 100
epochs x 4 metrics: run_final 3.6 s -> 0.5 s, a curve's 500k rows 0.55 s either way; the
index adds ~10% to the file and was built from scratch in 3.7 s.

Idempotent: SQLite has no CREATE OR REPLACE VIEW, so a view whose stored SQL differs from the one
below (an older version of this file) is dropped and created again; PostgreSQL uses CREATE OR
REPLACE VIEW (which can only append columns: drop the view by hand if a column is removed).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# The value at each metric's last logged epoch. The GROUP BY lists (split, name, run_id) in the
# index's order, so SQLite scans the index once without a temporary b-tree.
FINAL_SELECT = """SELECT r.id AS run_id, r.status, r.task, r.dataset, r.model, r.norm, r.bs, r.lr,
       r.seed, m.split, m.name, m.epoch, m.value
FROM (SELECT split, name, run_id, MAX(epoch) AS epoch
      FROM metrics GROUP BY split, name, run_id) AS last
JOIN metrics AS m ON m.split = last.split AND m.name = last.name AND m.run_id = last.run_id
                 AND m.epoch = last.epoch
JOIN runs AS r ON r.id = m.run_id"""

_SUMMARY_SELECT = """SELECT r.id AS run_id, r.status, r.task, r.dataset, r.model, r.norm, r.bs, r.lr,
       r.seed, r.epochs, r.epochs_done, r.duration_s,
       r.duration_s / NULLIF(r.epochs_done, 0) AS s_per_epoch,
       r.started_at, r.ended_at, r.host, r.device, r.error, f.final_metrics, r.threads
FROM runs AS r
LEFT JOIN (SELECT run_id, {json_agg}(split || '/' || name, value) AS final_metrics
           FROM run_final GROUP BY run_id) AS f ON f.run_id = r.id"""

JSON_AGG = {"sqlite": "json_group_object", "postgresql": "json_object_agg"}

VIEWS = {"run_final": FINAL_SELECT, "run_summary": _SUMMARY_SELECT}  # in dependency order

INDEXES = {"ix_metrics_split_name": "metrics (split, name, run_id, epoch, value)"}


def view_sql(name: str, dialect: str) -> str:
    """The SELECT behind view `name` for `dialect` ('sqlite' or 'postgresql')."""
    return VIEWS[name].format(json_agg=JSON_AGG[dialect])


def create_views(conn: Connection) -> None:
    """Create the indexes and views if missing (or outdated); call inside the schema transaction."""
    dialect = conn.dialect.name
    for name, target in INDEXES.items():
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {target}"))
    for name in VIEWS:
        body = view_sql(name, dialect)
        if dialect == "postgresql":
            conn.execute(text(f"CREATE OR REPLACE VIEW {name} AS\n{body}"))
            continue
        stored = conn.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = :name"), {"name": name}
        ).scalar()
        if stored == f"CREATE VIEW {name} AS\n{body}":
            continue
        if stored is not None:  # written by an older version of this module
            conn.execute(text(f"DROP VIEW {name}"))
        conn.execute(text(f"CREATE VIEW IF NOT EXISTS {name} AS\n{body}"))
