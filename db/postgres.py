"""PostgreSQL: the driver a plain URL means, a reader's session that cannot write, and what a
failed connection should tell the user. `db.engine` opens the database and calls these.

A reader's session (`reader_session`, `snapshot_first`), each point found by trying it on
PostgreSQL 15 with `python -m db query`:
- every transaction is READ ONLY (psycopg's `read_only`, so it says `BEGIN READ ONLY` whatever
  `default_transaction_read_only` was set to since), and has taken its snapshot before the
  caller's statement runs: then `SET TRANSACTION READ WRITE` fails ("transaction read-write mode
  must be set before any query") instead of turning the transaction into a writer;
- one statement per execute: with `prepare_threshold = 0` psycopg prepares every query, which
  uses the extended query protocol, and the server refuses several statements there ("cannot
  insert multiple commands into a prepared statement"); so `COMMIT; BEGIN READ WRITE; ...`
  never runs (https://www.postgresql.org/docs/15/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY);
- a superuser's session acts as `pg_read_all_data` (PostgreSQL 14+; an older server skips
  this), which reads every table but may not COPY TO PROGRAM or to a file, lo_import a server
  file, terminate other backends or create replication slots. A superuser can still switch back
  within one statement (`SELECT set_config('role', 'postgres', false), ...`: SET ROLE only asks
  that the *session* user be a member of the role) and then call a function that checks for a
  superuser as it runs, tried here: pg_terminate_backend, and pg_create_physical_replication_slot,
  whose slot outlives the transaction (one needing an EXECUTE grant, pg_read_file, is refused
  before the statement runs). So this guards against mistakes; against a user, connect as a role
  that may only SELECT.
Refused by the READ ONLY transaction (SQLSTATE 25006): INSERT, UPDATE, DELETE, DDL, nextval and
setval, writes inside a function or a DO block. COMMIT inside DO or CALL fails (2D000): the
block runs inside our transaction. Allowed, and undone when the connection closes (NullPool:
never reused): lo_create (rolled back), a session advisory lock, NOTIFY (sent only on commit).
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL

DRIVER = "psycopg"  # psycopg 3; SQLAlchemy's default for postgresql:// is psycopg2
PG_READ_ALL_DATA_SINCE = 140000  # server_version_num of PostgreSQL 14, which added the role

# SQLSTATEs of a statement the reader's session refused
# (https://www.postgresql.org/docs/15/errcodes-appendix.html): read_only_sql_transaction,
# active_sql_transaction (read-write mode after the snapshot; VACUUM, ALTER SYSTEM, CREATE
# DATABASE inside a transaction), invalid_transaction_termination, insufficient_privilege.
REFUSED = {"25006", "25001", "2D000", "42501"}
SEVERAL_STATEMENTS = "cannot insert multiple commands into a prepared statement"


def with_driver(url: URL) -> URL:
    """`postgresql://` (and `postgres://`, the spelling libpq, Heroku and many hosted services
    give, which SQLAlchemy 1.4+ no longer accepts) as `postgresql+psycopg://`; a URL that names
    its driver stays as it is."""
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername=f"postgresql+{DRIVER}")
    return url


def reader_session(dbapi_connection, _record) -> None:
    """SQLAlchemy's 'connect' event for a reader: see the module docstring."""
    from psycopg.pq import TransactionStatus

    if dbapi_connection.info.transaction_status != TransactionStatus.IDLE:
        dbapi_connection.rollback()  # read_only can only be set between transactions
    dbapi_connection.read_only = True
    dbapi_connection.prepare_threshold = 0
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('is_superuser') = 'on' AND "
                       "current_setting('server_version_num')::int >= %s",
                       (PG_READ_ALL_DATA_SINCE,))
        if cursor.fetchone()[0]:
            cursor.execute("SET ROLE pg_read_all_data")
    dbapi_connection.commit()  # SET ROLE outlives the transaction only once committed


def snapshot_first(conn) -> None:
    """SQLAlchemy's 'begin' event for a reader: take the transaction's snapshot. On the DBAPI
    connection, not `conn`, which may carry `stream_results` (a server-side cursor can only
    DECLARE a SELECT)."""
    conn.connection.dbapi_connection.execute("SELECT 1")


def invalidate_if_busy(context) -> None:
    """SQLAlchemy's 'handle_error' event: a connection still busy with the failed command (the
    server began a COPY, which psycopg refuses outside `cursor.copy()`) takes no ROLLBACK
    either; treated as lost, it is closed instead of failing again with a traceback."""
    from psycopg.pq import TransactionStatus

    # The statement's psycopg cursor, through which its connection (SQLAlchemy 2.1.9 documents
    # `context.cursor` but does not set it); none for an error outside a statement.
    cursor = getattr(context.execution_context, "cursor", None)
    if cursor is not None and cursor.connection.info.transaction_status == TransactionStatus.ACTIVE:
        context.is_disconnect = True


def refusal(e: BaseException) -> str | None:
    """Why the reader's session refused the statement that raised `e`; None if it did not."""
    orig = getattr(e, "orig", e)
    text = " ".join(str(orig).split())
    if SEVERAL_STATEMENTS in text:
        return f"one statement at a time: {text}"
    if "COPY cannot be used with this method" in text:
        return "COPY is not supported here: a SELECT with --csv writes CSV"
    if getattr(orig, "sqlstate", None) in REFUSED:
        return text
    return None


def connect_hint(message: str, url: URL) -> str:
    """What to do about a failed connection, to follow psycopg's `message` ('' if nothing)."""
    if m := re.search(r'database "(.+?)" does not exist', message):
        options = [f"{flag} {value}" for flag, value in
                   (("-h", url.host), ("-p", url.port), ("-U", url.username)) if value]
        return f" (create it with `{' '.join(['createdb', *options, m[1]])}`)"
    if "password authentication failed" in message or "no password supplied" in message:
        # libpq ignores a ~/.pgpass that others may read (it warns on stderr): chmod 600.
        return " (bench.run takes the password from PGPASSWORD or ~/.pgpass, chmod 600)"
    return ""
