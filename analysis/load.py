"""Reading the results database: runs, final metrics (aggregated in SQL) and learning curves.

The heavy lifting is SQL: the `run_final` view's SELECT (db/views.py) reduces 2 M metric rows to
one row per (run, split, name) inside SQLite, and a learning curve reads one (split, name) range
of the covering index. pandas only sees per-run rows and the curves it plots.

The engine comes from `db.engine.open_readonly`, which creates nothing: so nothing here relies on
what the writer adds to a file. The view's SELECT is used as a subquery instead of the view, a
column the writer adds to older files (`ADDED_COLUMNS`) reads as NULL where it is missing, and the
writer's index (ix_metrics_split_name) only makes the reads faster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, Engine, Integer, String, bindparam, inspect, text

from db.cli import DEFAULT_URL  # noqa: F401 (the report's default, as `python -m db`'s)
from db.engine import ADDED_COLUMNS
from db.views import FINAL_SELECT

RUN_COLUMNS = ("id", "status", "task", "dataset", "model", "norm", "bs", "lr", "seed", "epochs",
               "epochs_done", "duration_s", "threads", "error", "config", "config_hash", "repeat_of")


@dataclass(frozen=True)
class Filters:
    """Which runs to read: each field is a tuple of allowed values, empty = any."""

    task: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    norm: tuple[str, ...] = ()
    status: tuple[str, ...] = ()

    def where(self) -> tuple[str, dict]:
        """An SQL condition on the runs table aliased `r`, and its parameters."""
        terms, params = ["1 = 1"], {}
        for column, values in vars(self).items():
            if values:
                terms.append(f"r.{column} IN :{column}")
                params[column] = list(values)
        return " AND ".join(terms), params

    def describe(self) -> str:
        shown = [f"{k}={','.join(v)}" for k, v in vars(self).items() if v]
        return " ".join(shown) if shown else "no filter"


def _query(where_sql: str, params: dict, sql: str):
    query = text(sql.format(where=where_sql))
    for name in params:  # each IN list becomes one bound list
        query = query.bindparams(bindparam(name, expanding=True))
    return query


def runs_columns(conn: Connection) -> set[str]:
    """The columns of table `runs`; none if there is no such table (a file no writer opened)."""
    found = inspect(conn)
    return {c["name"] for c in found.get_columns("runs")} if found.has_table("runs") else set()


def load_runs(engine: Engine, filters: Filters = Filters()) -> pd.DataFrame:
    """One row per run (every status), indexed by id; `config` parsed into a dict."""
    where, params = filters.where()
    with engine.connect() as conn:
        have = runs_columns(conn)
        if not have:
            return pd.DataFrame(columns=RUN_COLUMNS).set_index("id")
        # A column added after the first release is missing from a file no writer has opened
        # since; the reader cannot add it (db/engine.py), so it reads as NULL, as in old rows.
        shown = [f"r.{c}" if c in have or c not in ADDED_COLUMNS else f"NULL AS {c}" for c in RUN_COLUMNS]
        sql = f"SELECT {', '.join(shown)} FROM runs AS r WHERE {{where}} ORDER BY r.id"
        runs = pd.read_sql_query(_query(where, params, sql), conn, params=params)
    # SQLite hands back the JSON column as text, PostgreSQL as a dict.
    runs["config"] = [c if isinstance(c, dict) else json.loads(c) for c in runs["config"]]
    runs["threads"] = runs["threads"].astype("float64")  # all NULL (older rows) would be object None
    return runs.set_index("id")


def count_runs(engine: Engine) -> pd.Series:
    """Number of runs per task in the whole database (for the 'nothing matched' message)."""
    with engine.connect() as conn:
        if not runs_columns(conn):
            return pd.Series({}, dtype="int64")
        rows = conn.execute(text("SELECT task, COUNT(*) FROM runs GROUP BY task ORDER BY task")).all()
    return pd.Series({task: n for task, n in rows}, dtype="int64")


def load_final(engine: Engine, filters: Filters = Filters()) -> pd.DataFrame:
    """Columns run_id, split, name, epoch, value: each metric at its last logged epoch."""
    where, params = filters.where()
    # run_final's SELECT, not the view: a reader does not create the view on a file without it.
    sql = ("SELECT f.run_id, f.split, f.name, f.epoch, f.value FROM (" + FINAL_SELECT + ") AS f "
           "JOIN runs AS r ON r.id = f.run_id WHERE {where}")
    with engine.connect() as conn:
        final = pd.read_sql_query(_query(where, params, sql), conn, params=params)
    final["value"] = final["value"].astype("float64")  # NULL (= NaN) would leave an object column
    return final


def load_curves(engine: Engine, split: str, name: str, run_ids) -> pd.DataFrame:
    """Columns run_id, epoch, value of one metric, every epoch of the runs `run_ids`.

    A range of the covering index ix_metrics_split_name (db/views.py), read through the driver's
    cursor: SQLAlchemy's per-row result processing took 1.3 s of 1.9 s for 500k rows. The ids
    and names are rendered as SQL literals by SQLAlchemy (quoted for the dialect), so the
    statement has no driver-specific parameter style.
    """
    if not len(run_ids):
        return pd.DataFrame({"run_id": [], "epoch": [], "value": []}, dtype="float64")
    query = text("SELECT run_id, epoch, value FROM metrics "
                 "WHERE split = :split AND name = :name AND run_id IN :ids").bindparams(
        bindparam("split", split, type_=String), bindparam("name", name, type_=String),
        bindparam("ids", [int(i) for i in run_ids], type_=Integer, expanding=True))
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql)
            rows = cursor.fetchall()
        finally:
            cursor.close()
    curves = pd.DataFrame(rows, columns=["run_id", "epoch", "value"])
    curves["value"] = curves["value"].astype("float64")  # NULL (NaN) -> NaN, not None
    return curves
