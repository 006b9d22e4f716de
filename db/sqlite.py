"""SQLite: the settings that let parallel writers share one file, and a reader that writes nothing.
`db.engine` opens the database and uses these.

Parallel writers (measured on the project's 2-core machines): 8 writer processes on one file gave
no "database is locked" errors with WAL + busy_timeout + one short transaction per call, once the
switch of a new file to WAL is retried (`_retry_while_locked`). Transactions start with BEGIN
IMMEDIATE, which takes the write lock up front: a deferred transaction that reads and then writes
(`finish`, `mark_stale_runs`) fails at once with SQLITE_BUSY when another process wrote in
between, without waiting on busy_timeout. A writer's own reads (`ResultsDB.find_completed`) need
not take the write lock: `engine.execution_options(sqlite_begin="DEFERRED")` gives an engine that
begins deferred. WAL needs a local file system (not NFS).

A reader (`reader_connect`) opens the file as `reader_uri` says, with `PRAGMA query_only=ON` and
an authorizer that refuses ATTACH, setting a pragma and checkpoints.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_S = 30  # how long a writer waits for the lock; 8 writers never came close


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


def on_connect(dbapi_connection, _record) -> None:
    # sqlite3 would emit its own deferred BEGIN; with isolation_level None, `on_begin`
    # emits ours (SQLAlchemy's recipe, for sqlite3 before its `autocommit` attribute, 3.12).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    _retry_while_locked(cursor, "PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # ~14 us per row vs ~600 us with FULL commits
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite; needed for CASCADE
    cursor.close()


def on_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "IMMEDIATE"))


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


def is_wal_file(path: Path) -> bool:
    # Bytes 18 and 19 of an SQLite header (the file format's write and read versions) are 2 in
    # WAL mode, 1 in a rollback journal mode.
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


def reader_uri(path: Path) -> str:
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
    if is_wal_file(path):
        # mode=ro cannot open a WAL file without its -shm, which it cannot create here. No -wal:
        # no connection has the file open, and one that cannot write it is an archived copy
        # (our writer refuses a directory it cannot write): read it as a file nothing changes.
        return uri + "?mode=ro&immutable=1"
    return uri + "?mode=ro"  # a rollback-journal file: reading needs no other file


def reader_connect(path: Path) -> sqlite3.Connection:
    """A connection to the file at `path` that cannot write it, nor anything next to it."""
    conn = sqlite3.connect(reader_uri(path), uri=True, timeout=BUSY_TIMEOUT_S)
    conn.execute("PRAGMA query_only=ON")
    conn.set_authorizer(_authorize)
    return conn
