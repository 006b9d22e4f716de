"""Opening the results database: engine, SQLite settings for parallel writers, schema.

SQLite with parallel writers (measured on the project's 2-core machines): 8 writer
processes on one file gave no "database is locked" errors with WAL + busy_timeout + one short
transaction per call, once the switch of a new file to WAL is retried (`_retry_while_locked`).
Transactions start with BEGIN IMMEDIATE, which takes the write lock up
front: a deferred transaction that reads and then writes (`finish`, `mark_stale_runs`) fails at
once with SQLITE_BUSY when another process wrote in between, without waiting on busy_timeout.
Read-only users (analysis, a read-only copy of the file) should not take the write lock:
`engine.execution_options(sqlite_begin="DEFERRED")` gives an engine that begins deferred.
WAL needs a local file system (not NFS).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from bench.errors import UserError
from db.schema import Base
from db.views import create_views

KINDS = "use sqlite:///path.db or postgresql://..."
BUSY_TIMEOUT_S = 30  # how long a writer waits for the lock; 8 writers never came close
PG_SCHEMA_LOCK = 0x6E6F726D  # any fixed key; serializes schema creation across processes


def _retry_while_locked(cursor, sql: str) -> None:
    # Switching a file to WAL needs an exclusive lock; while another connection writes the file
    # in its old journal mode, SQLite answers "database is locked" at once, without waiting on
    # busy_timeout. Seen in 26 of 2,400 opens of a new file, 8 processes at a time; 0 of 3,200
    # with this retry.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute(sql)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # sqlite3 would emit its own deferred BEGIN; with isolation_level None, `_sqlite_on_begin`
    # emits ours (SQLAlchemy's recipe, for sqlite3 before its `autocommit` attribute, 3.12).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    _retry_while_locked(cursor, "PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # ~14 us per row vs ~600 us with FULL commits
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite; needed for CASCADE
    cursor.close()


def _sqlite_on_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "IMMEDIATE"))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


# Columns added to `runs` after its first release, with their SQL types: a file written before
# gets them (NULL in its old rows) when a writer opens it. Adding a nullable column changes no row.
ADDED_COLUMNS = {"threads": "INTEGER"}


def _add_missing_columns(conn) -> None:
    have = {c["name"] for c in inspect(conn).get_columns("runs")}
    for name, sql_type in ADDED_COLUMNS.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}"))


def parse_url(url: str) -> URL:
    """`url` parsed; a one-line `UserError` if it is not a URL (then most likely a path: the URL
    of that file is sqlite:/// + path)."""
    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(f"cannot open results database {url!r}: not a URL "
                        f"(did you mean sqlite:///{url}?)") from None


def open_engine(url: str) -> Engine:
    """An Engine for `url` with the schema created; a one-line `UserError` if it cannot open."""
    parsed = parse_url(url)
    shown = parsed.render_as_string(hide_password=True)

    def cannot(why: str) -> UserError:
        return UserError(f"cannot open results database {shown!r}: {why}")

    kind = parsed.get_backend_name()
    if kind not in ("sqlite", "postgresql"):
        raise cannot(f"unknown database kind {kind!r} ({KINDS})")
    if kind == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parent = Path(parsed.database).parent  # relative to the working directory, as sqlite3
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise cannot(f"cannot create directory {str(parent)!r}: {e.strerror}") from None
        if not os.access(parent, os.W_OK):  # WAL creates -wal and -shm files next to the db
            raise cannot(f"directory {str(parent)!r} is not writable")
    try:
        if kind == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        else:
            engine = create_engine(parsed, connect_args={"connect_timeout": 10})
    except ImportError as e:
        raise cannot(f"database driver not installed ({e})") from None
    except ArgumentError as e:
        raise cannot(_one_line(e)) from None
    try:
        # One transaction, so "does the table exist? create it" is atomic when many jobs start
        # at once: BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL.
        with engine.begin() as conn:
            if kind == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SCHEMA_LOCK})
            Base.metadata.create_all(conn)
            _add_missing_columns(conn)
            create_views(conn)  # convenience views and the analysis' indexes (db/views.py)
    except (DBAPIError, engine.dialect.loaded_dbapi.Error) as e:
        engine.dispose()
        raise cannot(_one_line(e)) from None
    return engine
