"""Schema migrations with Alembic: every results database is brought to this code's schema in place.

Alembic (https://alembic.sqlalchemy.org) is SQLAlchemy's migration tool, the one MLflow and
Optuna use for their stores. The revisions are code in this package (`versions/`, one file per
schema version, ids '0001', '0002', ...: the number is `db.schema.SCHEMA_VERSION`), run from
`db.engine.open_engine` inside its one transaction; no alembic.ini or env.py, nothing for a
user to run. A revision is frozen once released: it spells out its tables and columns rather
than importing db/schema.py, which describes only the newest schema.

Which revision a database is at (`revision_of`), reading only:
- an `alembic_version` table: its revision (written by this code or a newer one);
- no `runs` table: a new, empty database (None);
- `schema_info` (the release before Alembic): its version, '0002';
- `runs` alone: the first release, '0001' (`threads` and `versions` may be missing: files
  written before them; revision 2 adds whatever `runs` lacks).
`upgrade` stamps a file without `alembic_version` with that revision, then runs the revisions
after it; a new database runs them all, from revision 1, so a new file and an upgraded one go
through the same DDL. `schema_info` is kept, its one row equal to the revision's number, for
plain-SQL readers and the release before this one, which reads it.

A revision this code does not know (a newer normbench wrote the file) is refused before
anything is written (`NewerSchema`). There is no downgrade: the revisions only add.

Alembic is imported only to upgrade: at head, an open reads two small tables and compares with
`SCHEMA_VERSION` (tests/test_migrations.py checks that it names the last revision). Importing
alembic costs 90 ms per process (db.engine: 200 ms -> 290 ms), paid once per job otherwise.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, inspect, text

from bench.errors import UserError
from db.schema import SCHEMA_VERSION

log = logging.getLogger("bench")

HEAD = f"{SCHEMA_VERSION:04d}"


class NewerSchema(UserError):
    """The database was written by a newer normbench; nothing was changed."""


@cache
def scripts():
    """The revisions (Alembic's ScriptDirectory of versions/)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent))


def head() -> str:
    return HEAD


def revision_number(revision: str) -> int:
    """'0002' -> 2; a revision id not of that form (not ours) is refused in one line."""
    if not (revision.isdigit() and len(revision) == 4):
        raise NewerSchema(f"unknown schema revision {revision!r} (this code knows up to "
                          f"{SCHEMA_VERSION}): not written by normbench, or by a newer one")
    return int(revision)


def _read(conn: Connection) -> tuple[str | None, bool]:
    """(the revision, whether `alembic_version` records it)."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if found:  # one row: our revisions are a line, never branches
            return found, True
    if "runs" not in tables:
        return None, False
    if "schema_info" in tables:
        version = conn.execute(text("SELECT MAX(version) FROM schema_info")).scalar()
        return f"{version or 1:04d}", False
    return "0001", False


def revision_of(conn: Connection) -> str | None:
    """The revision the database `conn` reads is at (see the module docstring); reads only."""
    return _read(conn)[0]


def check_known(revision: str | None) -> None:
    """Raise `NewerSchema` if `revision` is not one of this code's."""
    if revision is None:
        return
    number = revision_number(revision)
    if number > SCHEMA_VERSION:
        raise NewerSchema(f"written by a newer normbench (schema {number}, this code knows up to "
                          f"{SCHEMA_VERSION}): upgrade normbench")


def upgrade(conn: Connection, target: str = "head") -> str | None:
    """Bring the database `conn` reads to `target` inside the caller's transaction; returns the
    revision it was at before (None: it was empty). Cheap at `target`: two small reads."""
    before, stamped = _read(conn)
    check_known(before)
    target = head() if target == "head" else target
    if before == target and stamped:
        return before
    # Alembic logs each step and, at import, each plugin it sets up, at INFO: lines on every
    # job's console that say nothing a user acts on. One line of ours says what happened.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    # The steps from the current heads to `target`, as alembic.command.upgrade computes them;
    # run here on the caller's connection, so no env.py is needed.
    ctx = MigrationContext.configure(conn, opts={
        "fn": lambda heads, _ctx: scripts()._upgrade_revs(target, heads)})
    if before is not None and not stamped:
        ctx.stamp(scripts(), before)  # a file of a release before Alembic
    with Operations.context(ctx):
        ctx.run_migrations()
    if int(target) >= 2:  # schema_info came with revision 2
        conn.execute(text("DELETE FROM schema_info"))
        conn.execute(text("INSERT INTO schema_info (version) VALUES (:v)"), {"v": int(target)})
    if before is not None:
        log.info("results database upgraded in place from schema %d to %d", int(before), int(target))
    return before
