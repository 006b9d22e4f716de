"""Opening the results database: engine, SQLite settings for parallel writers, schema.

SQLite with parallel writers (measured on the project's 2-core machines): 8 writer
processes on one file gave no "database is locked" errors with WAL + busy_timeout + one short
transaction per call, once the switch of a new file to WAL is retried (`_retry_while_locked`).
Transactions start with BEGIN IMMEDIATE, which takes the write lock up
front: a deferred transaction that reads and then writes (`finish`, `mark_stale_runs`) fails at
once with SQLITE_BUSY when another process wrote in between, without waiting on busy_timeout.
A writer's own reads (`ResultsDB.find_completed`) need not take the write lock:
`engine.execution_options(sqlite_begin="DEFERRED")` gives an engine that begins deferred.
WAL needs a local file system (not NFS).

Two ways to open the database, one for each use:
- `open_engine(url)`, the writer's: creates the file, the schema, the views and the indexes, and
  adds the columns of `ADDED_COLUMNS` to a file written before them.
- `open_readonly(url)`, everything that only reads (the report, `analysis.distance`,
  `python -m db`): never creates or changes anything, and works on a file and directory nobody
  may write. So a reader cannot rely on what the writer creates: it reads the tables, with the
  views' SELECTs (db/views.py) as subqueries, and treats a column of `ADDED_COLUMNS` as optional.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, delete, event, insert, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from bench.errors import UserError, one_line
from db.schema import SCHEMA_VERSION, Base, SchemaInfo
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


# Columns added to `runs` after its first release, with their SQL types: a file written before
# gets them (NULL in its old rows) when a writer opens it. Adding a nullable column changes no row.
# A reader cannot add them, so it reads a missing one as NULL (analysis/load.py).
ADDED_COLUMNS = {"threads": "INTEGER", "versions": "TEXT", "uid": "VARCHAR(32)", "launcher": "TEXT",
                 "scheduler_job_id": "TEXT", "attempts": "INTEGER"}


def _add_missing_columns(conn) -> None:
    have = {c["name"] for c in inspect(conn).get_columns("runs")}
    for name, sql_type in ADDED_COLUMNS.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}"))
    # create_all made ix_runs_uid only with a new table; an older file gets it here.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_runs_uid ON runs (uid)"))
    if conn.scalar(select(SchemaInfo.version)) != SCHEMA_VERSION:
        conn.execute(delete(SchemaInfo))
        conn.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))


def schema_version(conn) -> int | None:
    """The schema version of the database `conn` reads: `SCHEMA_VERSION` of the code that wrote
    it, 1 for a normbench file written before `schema_info`, None if it has no `runs` table
    (not a normbench database). Reads only."""
    tables = set(inspect(conn).get_table_names())
    if "runs" not in tables:
        return None
    if "schema_info" not in tables:
        return 1
    return conn.scalar(select(SchemaInfo.version)) or 1


def parse_url(url: str) -> URL:
    """`url` parsed; a one-line `UserError` if it is not a URL (then most likely a path: the URL
    of that file is sqlite:/// + path)."""
    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(f"cannot open results database {url!r}: not a URL "
                        f"(did you mean sqlite:///{url}?)") from None


def _cannot(parsed: URL):
    """A `UserError` maker: 'cannot open results database URL: why' (no password shown)."""
    shown = parsed.render_as_string(hide_password=True)
    return lambda why: UserError(f"cannot open results database {shown!r}: {why}")


def open_engine(url: str) -> Engine:
    """An Engine for `url` with the schema created; a one-line `UserError` if it cannot open."""
    parsed = parse_url(url)
    cannot = _cannot(parsed)
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
        raise cannot(one_line(e, with_type=False)) from None
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
        raise cannot(one_line(e, with_type=False)) from None
    return engine


# Pragmas that only report (with an argument); any other pragma may only be read, not set.
INFO_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                "foreign_key_list", "function_list", "pragma_list", "table_list"}
# Pragmas that act without an argument: a checkpoint copies a writer's WAL into the file.
ACTING_PRAGMAS = {"wal_checkpoint", "optimize", "incremental_vacuum"}


def _authorize(action, arg1, arg2, _db, _trigger):
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):  # an attached file is writable
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        name = arg1.lower()
        if name in ACTING_PRAGMAS or (arg2 is not None and name not in INFO_PRAGMAS):
            return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _is_wal_file(path: Path) -> bool:
    # Bytes 18 and 19 of an SQLite header (the file format's write and read versions) are 2 in
    # WAL mode, 1 in a rollback journal mode.
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


def _sqlite_reader_uri(path: Path) -> str:
    """How to open `path` so that reading it writes nothing, in or next to it."""
    uri = path.resolve().as_uri()
    if Path(f"{path}-wal").exists() or Path(f"{path}-journal").exists():
        # A writer has the file open (or died with it open). Share its -wal and -shm read-only:
        # a read-write connection that closed last would checkpoint them into the file.
        return uri + "?mode=ro"
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        # A mode=ro connection to a WAL file creates -wal and -shm and, unable to checkpoint,
        # leaves them behind. A read-write one, kept from writing by query_only and the
        # authorizer, removes them when it closes last, and locks as any reader against writers.
        # (Closing last, it also checkpoints what a writer that closed before it left in the
        # -wal: that writer's committed rows, as the writer itself would have.)
        return uri + "?mode=rw"
    if _is_wal_file(path):
        # mode=ro cannot open a WAL file without its -shm, which it cannot create here. No -wal:
        # no connection has the file open, and one that cannot write it is an archived copy
        # (our writer refuses a directory it cannot write): read it as a file nothing changes.
        return uri + "?mode=ro&immutable=1"
    return uri + "?mode=ro"  # a rollback-journal file: reading needs no other file


def open_readonly(url: str) -> Engine:
    """An engine that reads `url` and cannot write it; a one-line `UserError` if `url` names no
    existing database or it cannot be opened.

    Nothing is created or changed, not even on a file and directory we could write: SQLite is
    opened as `_sqlite_reader_uri` says, with `PRAGMA query_only=ON` and an authorizer that
    refuses ATTACH, setting a pragma and checkpoints; PostgreSQL with
    `default_transaction_read_only=on` for the session and READ ONLY transactions. So SQL that
    writes fails inside the database, whatever it says.
    """
    parsed = parse_url(url)
    cannot = _cannot(parsed)
    kind = parsed.get_backend_name()
    if kind == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise UserError(f"{url!r} is not a database file (use sqlite:///path/to/bench.db)")
        path = Path(parsed.database)  # relative to the working directory, as sqlite3
        if not path.is_file():
            raise UserError(f"no results database at {parsed.database!r} (train with "
                            "`python -m bench.run`, or pass --db URL)")

        def connect():
            conn = sqlite3.connect(_sqlite_reader_uri(path), uri=True, timeout=BUSY_TIMEOUT_S)
            conn.execute("PRAGMA query_only=ON")
            conn.set_authorizer(_authorize)
            return conn

        # A new connection for each use (NullPool): each one looks again for a writer's -wal.
        engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
        probe = "SELECT COUNT(*) FROM sqlite_master"  # reads the file: 'file is not a database'
    elif kind == "postgresql":
        try:
            engine = create_engine(parsed, poolclass=NullPool, connect_args={
                "connect_timeout": 10, "options": "-c default_transaction_read_only=on"})
        except ImportError as e:
            raise cannot(f"database driver not installed ({e})") from None
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("SET TRANSACTION READ ONLY"))
        probe = "SELECT 1"
    else:
        raise cannot(f"unknown database kind {kind!r} ({KINDS})")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(probe)
    except (DBAPIError, engine.dialect.loaded_dbapi.Error) as e:
        engine.dispose()
        raise cannot(one_line(e, with_type=False)) from None
    return engine
