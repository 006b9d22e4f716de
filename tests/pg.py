"""The PostgreSQL server the tests use: a database and roles of a test's own, dropped afterwards
even when the test fails, and what a database holds (to check that a reader changed nothing).

The server: NORMBENCH_TEST_PG, a URL for an admin connection (a role that may create databases
and roles), by default the local server's `postgres`. Without a server the tests that need one
are skipped, with the reason; under NORMBENCH_REQUIRE_POSTGRES=1 (.ci/run sets it) they fail.
Everything here talks to the server through psycopg directly, not through db/.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
import time

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("NORMBENCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRED = os.environ.get("NORMBENCH_REQUIRE_POSTGRES") == "1"


def conninfo(url: str, **parts) -> str:
    """`url` (an SQLAlchemy URL) as libpq's URI, with `parts` (database, username) replaced."""
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(hide_password=False)


def connect(url: str = ADMIN_URL, **parts) -> psycopg.Connection:
    """An autocommit connection: every statement is its own transaction."""
    return psycopg.connect(conninfo(url, **parts), autocommit=True, connect_timeout=5)


@functools.cache
def server_problem() -> str | None:
    """Why no test can use the server (its one-line error), or None when it answers."""
    try:
        with connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return " ".join(str(e).split())
    return None


def require_server() -> None:
    if (problem := server_problem()) is not None:
        why = f"no PostgreSQL server at {make_url(ADMIN_URL).render_as_string()}: {problem}"
        if REQUIRED:
            pytest.fail(f"{why} (NORMBENCH_REQUIRE_POSTGRES=1: the PostgreSQL tests must run)")
        pytest.skip(f"{why} (set NORMBENCH_TEST_PG to a server's URL to run these tests)")


def url_of(database: str, user: str | None = None) -> str:
    """The SQLAlchemy URL of `database` on the test server, as `user` (default: the admin's),
    written as a user would: plain postgresql://, no password."""
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=database, password=None)
    return url.set(username=user).render_as_string() if user else url.render_as_string()


def create_database(owner: str | None = None, template: str | None = None) -> str:
    """A new database `normbench_test_<hex>`, empty or a copy of `template`; its name."""
    require_server()
    name = f"normbench_test_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        create += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    if template:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    deadline = time.monotonic() + 10
    with connect() as conn:
        while True:
            try:
                conn.execute(create)
                return name
            except psycopg.errors.ObjectInUse:  # a template is copied only while nobody reads it
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def drop_database(name: str) -> None:
    """Drop `name`, and any session still connected to it."""
    with connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_role(prefix: str, password: str | None = None) -> str:
    """A new LOGIN role `<prefix>_<hex>`; its name."""
    require_server()
    name = f"{prefix}_{secrets.token_hex(4)}"
    with connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)) + (
            sql.SQL(" PASSWORD {}").format(sql.Literal(password)) if password else sql.SQL("")))
    return name


def drop_role(name: str) -> None:
    """Drop role `name` (after the databases it owns or holds privileges in)."""
    with connect() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def database(owner: str | None = None, template: str | None = None):
    """`create_database` for the block; dropped when it ends, even on a failure."""
    name = create_database(owner, template)
    try:
        yield name
    finally:
        drop_database(name)


@contextlib.contextmanager
def role(prefix: str, password: str | None = None):
    """`create_role` for the block; dropped when it ends (nest it outside the blocks of the
    databases it owns or holds privileges in)."""
    name = create_role(prefix, password)
    try:
        yield name
    finally:
        drop_role(name)


@contextlib.contextmanager
def shared(tmp_path_factory, key: str, create, drop):
    """What `create()` returns (plain JSON values), made once for a whole test session, also
    when pytest-xdist splits the session among worker processes: the first to ask makes it, the
    others wait for it and reuse it, and the last one done with it calls `drop(value)`. (A
    session fixture alone is made once per worker: a second sweep costs ~13 s.)"""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' folders (popen-gw0, popen-gw1) share it, this run only
    state = root / f"{key}.json"

    @contextlib.contextmanager
    def locked():
        with open(root / f"{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    with locked():
        held = json.loads(state.read_text()) if state.exists() else {"value": create(), "users": 0}
        held["users"] += 1
        state.write_text(json.dumps(held))
    try:
        yield held["value"]
    finally:
        with locked():
            held = json.loads(state.read_text())
            held["users"] -= 1
            if held["users"] == 0:
                state.unlink()
                drop(held["value"])
            else:
                state.write_text(json.dumps(held))


def rows(database: str, query: str, params=None) -> list[tuple]:
    """Rows of `query` on `database`, run by the admin (a writer's connection, not db/'s)."""
    with connect(database=database) as conn:
        return conn.execute(query, params).fetchall()


def dump(database: str) -> dict:
    """Everything in `database` a statement could have changed, as plain values: every table's
    and view's rows, the sequences' states, the functions, the large objects and the advisory
    locks. (Not the cluster's databases or roles: other tests make and drop theirs meanwhile.)"""
    with connect(database=database) as conn:
        relations = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'S') ORDER BY 1").fetchall()
        out = {"relations": relations}
        for name, kind in relations:
            table = sql.Identifier(name)
            query = sql.SQL("SELECT last_value, is_called FROM {}" if kind == "S"
                            else "SELECT * FROM {}")
            out[name] = sorted(conn.execute(query.format(table)).fetchall(), key=repr)
        for key, query in {
            "functions": "SELECT proname, prosrc FROM pg_proc p JOIN pg_namespace n "
                         "ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1",
            "large_objects": "SELECT count(*) FROM pg_largeobject_metadata",
            "advisory_locks": "SELECT objid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                              "WHERE locktype = 'advisory' AND datname = current_database()",
        }.items():
            out[key] = conn.execute(query).fetchall()
    return out
