"""Opening the results database, SQLite or PostgreSQL: the writer's opener and the readers'.

Two ways to open the database, one for each use:
- `open_engine(url)`, the writer's: creates the file, brings the schema to this code's revision
  with Alembic (db/migrations: a new database is created at head, a file of an older release is
  upgraded in place), and creates the views and the indexes. A database written by a newer
  normbench is refused in one line before anything is written (the file stays byte-identical).
- `open_readonly(url)`, everything that only reads (the report, `analysis.distance`,
  `python -m db`): never creates or changes anything, and works on a file and directory nobody
  may write, and as a PostgreSQL role that may only SELECT. So a reader cannot rely on what the
  writer creates: it reads the tables, with the views' SELECTs (db/views.py) as subqueries, and
  treats a column of `ADDED_COLUMNS` as optional.

Each backend's settings have their own module: db/sqlite.py (WAL and locking for parallel
writers, a reader connection that writes nothing), db/postgres.py (psycopg 3 for `postgresql://`,
a reader's session that cannot write, hints for a failed connection). Every failure to open is a
one-line `UserError` naming the URL with its password hidden.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from bench.errors import UserError, one_line
from db import migrations, postgres, sqlite
from db.views import create_views

KINDS = "use sqlite:///path.db or postgresql://..."
PG_SCHEMA_LOCK = 0x6E6F726D  # any fixed key; serializes schema creation across processes
CONNECT_TIMEOUT_S = 10  # libpq's connect_timeout: an unreachable host fails after this


# Columns added to `runs` after its first release, with their SQL types. A writer adds them to an
# older file by a revision (db/migrations/versions: a new column needs one there too). A reader
# cannot add them, so it reads a missing one as NULL (analysis/load.py).
ADDED_COLUMNS = {"threads": "INTEGER", "versions": "TEXT", "uid": "VARCHAR(32)", "launcher": "TEXT",
                 "scheduler_job_id": "TEXT", "attempts": "INTEGER", "failure": "TEXT",
                 "repeat_of": "INTEGER"}


def schema_version(conn) -> int | None:
    """The schema version of the database `conn` reads: the number of its Alembic revision
    (`db.schema.SCHEMA_VERSION` of the code that wrote it), 2 for a file of the release before
    Alembic, 1 for one written before `schema_info`, None if it has no `runs` table (not a
    normbench database). Reads only."""
    revision = migrations.revision_of(conn)
    return None if revision is None else migrations.revision_number(revision)


def _refuse_newer(path: Path, cannot) -> None:
    # Checked with a reader's connection before the writer's first one, which switches a file in
    # rollback-journal mode to WAL (rewriting its header). A file already in WAL mode is checked
    # in the writer's transaction only: its switch changes nothing, and this check costs 0.9 ms
    # of a 2.3 ms open.
    engine = create_engine("sqlite://", creator=lambda: sqlite.reader_connect(path), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            migrations.check_known(migrations.revision_of(conn))
    except migrations.NewerSchema as e:
        raise cannot(str(e)) from None
    except DBAPIError:
        pass  # not a database, or locked: the writer's own open says so below
    finally:
        engine.dispose()


def parse_url(url: str) -> URL:
    """`url` parsed, with `postgresql://` meaning psycopg 3 (`db.postgres.with_driver`); a
    one-line `UserError` if it is not a URL (then most likely a path: the URL of that file is
    sqlite:/// + path)."""
    try:
        return postgres.with_driver(make_url(url))
    except ArgumentError:
        raise UserError(f"cannot open results database {url!r}: not a URL "
                        f"(did you mean sqlite:///{url}?)") from None


def _cannot(url: str):
    """A `UserError` maker: 'cannot open results database URL: why' (URL as given, no password)."""
    shown = make_url(url).render_as_string(hide_password=True)
    return lambda why: UserError(f"cannot open results database {shown!r}: {why}")


def _create_engine(parsed: URL, cannot, **kwargs) -> Engine:
    try:
        return create_engine(parsed, **kwargs)
    except ImportError as e:  # a dialect whose driver is not installed: postgresql+pg8000://
        plain = (f"; plain postgresql:// uses {postgres.DRIVER}"
                 if parsed.get_backend_name() == "postgresql" else "")
        why = f"database driver not installed: {parsed.get_driver_name()} ({e}{plain})"
        raise cannot(why) from None
    except ArgumentError as e:  # an unknown driver name
        raise cannot(one_line(e, with_type=False)) from None


def _failed(e: BaseException, parsed: URL, cannot) -> UserError:
    why = one_line(e, with_type=False)
    if parsed.get_backend_name() == "postgresql":
        why += postgres.connect_hint(why, parsed)
    return cannot(why)


def open_engine(url: str) -> Engine:
    """An Engine for `url` with the schema created; a one-line `UserError` if it cannot open."""
    parsed = parse_url(url)
    cannot = _cannot(url)
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
    if kind == "sqlite" and parsed.database not in (None, "", ":memory:") and \
            Path(parsed.database).is_file() and not sqlite.is_wal_file(Path(parsed.database)):
        _refuse_newer(Path(parsed.database), cannot)
    if kind == "sqlite":
        engine = _create_engine(parsed, cannot, connect_args={"timeout": sqlite.BUSY_TIMEOUT_S})
        event.listen(engine, "connect", sqlite.on_connect)
        event.listen(engine, "begin", sqlite.on_begin)
    else:
        engine = _create_engine(parsed, cannot, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        # One transaction, so "which revision is it at? upgrade it" is atomic when many jobs
        # start at once: BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL.
        with engine.begin() as conn:
            if kind == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SCHEMA_LOCK})
            migrations.upgrade(conn)
            create_views(conn)  # convenience views and the analysis' indexes (db/views.py)
    except migrations.NewerSchema as e:  # rolled back: nothing was written
        engine.dispose()
        raise cannot(str(e)) from None
    except (DBAPIError, engine.dialect.loaded_dbapi.Error) as e:
        engine.dispose()
        raise _failed(e, parsed, cannot) from None
    return engine


def open_readonly(url: str) -> Engine:
    """An engine that reads `url` and cannot write it; a one-line `UserError` if `url` names no
    existing database or it cannot be opened.

    Nothing is created or changed, not even on a file and directory we could write: SQLite is
    opened as `db.sqlite.reader_uri` says, with `PRAGMA query_only=ON` and an authorizer that
    refuses ATTACH, setting a pragma and checkpoints; on PostgreSQL every transaction is READ
    ONLY with its snapshot taken before the caller's statement, each execute runs one statement,
    and a superuser acts as `pg_read_all_data` (db/postgres.py: what that refuses, and the one
    way a superuser gets around it). A new connection for each use (NullPool), never reused.
    So SQL that writes fails inside the database, whatever it says.
    """
    parsed = parse_url(url)
    cannot = _cannot(url)
    kind = parsed.get_backend_name()
    if kind == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise UserError(f"{url!r} is not a database file (use sqlite:///path/to/bench.db)")
        path = Path(parsed.database)  # relative to the working directory, as sqlite3
        if not path.is_file():
            raise UserError(f"no results database at {parsed.database!r} (train with "
                            "`python -m bench.run`, or pass --db URL)")
        # A new connection for each use (NullPool): each one looks again for a writer's -wal.
        engine = create_engine("sqlite://", creator=lambda: sqlite.reader_connect(path),
                               poolclass=NullPool)
        probe = "SELECT COUNT(*) FROM sqlite_master"  # reads the file: 'file is not a database'
    elif kind == "postgresql":
        engine = _create_engine(parsed, cannot, poolclass=NullPool, connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            # Also for what runs before `reader_session` sets psycopg's read_only.
            "options": "-c default_transaction_read_only=on"})
        if parsed.get_driver_name() != postgres.DRIVER:  # the session below is psycopg's API
            raise cannot(f"reading needs the {postgres.DRIVER} driver, not "
                         f"{parsed.get_driver_name()} (use postgresql://...)")
        event.listen(engine, "connect", postgres.reader_session)
        event.listen(engine, "begin", postgres.snapshot_first)
        event.listen(engine, "handle_error", postgres.invalidate_if_busy)
        probe = "SELECT 1"
    else:
        raise cannot(f"unknown database kind {kind!r} ({KINDS})")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(probe)
    except (DBAPIError, engine.dialect.loaded_dbapi.Error) as e:
        engine.dispose()
        raise _failed(e, parsed, cannot) from None
    return engine


def reader_error(e: DBAPIError) -> str:
    """One line for the error of a statement run on an `open_readonly` engine; when the reader
    refused it, the line says that the database is opened read-only and was not changed."""
    why = one_line(e, with_type=False)
    if isinstance(e.orig, sqlite3.Error):
        refused = why if any(s in why for s in ("readonly", "read-only", "not authorized")) else None
    else:
        refused = postgres.refusal(e)
    return f"the database is opened read-only and was not changed ({refused})" if refused else why
