"""Schema migrations (db/migrations): a file of an older release is upgraded in place with every
row kept, on SQLite and PostgreSQL; a database newer than the code is refused and not touched.

The fixtures (tests/fixtures/README.md) are files written by the releases themselves. Rows are
read with sqlite3 and psycopg, not through db/, and compared value by value.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import assert_user_error, query, run_bench
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from bench.errors import UserError
from db import migrations
from db.engine import open_engine, open_readonly, schema_version
from db.schema import SCHEMA_VERSION, Base
from db.store import ResultsDB

FIXTURES = Path(__file__).parent / "fixtures"
TABLES = {"runs": "id", "metrics": "run_id, epoch, split, name", "artifacts": "run_id, kind"}
RUN = dict(task="classify", dataset="digits", model="convnet", norm="bn", bs=8, lr=1e-3, seed=0,
           epochs=1, config={}, config_hash="a" * 64)


def rows(path: Path) -> dict[str, list[dict]]:
    """Every row of the data tables, as {column: value}, read with sqlite3."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY {order}")]
                for t, order in TABLES.items()}


def sha256(folder: Path) -> dict[str, str]:
    """The files in `folder` (the database and any -wal, -shm or -journal beside it)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}


def schema_drift(url: str) -> list:
    """What differs between the database's tables and db/schema.py's models (Alembic's own
    comparison); db/views.py's index is not a model's."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    return [d for d in diff if not (d[0] == "remove_index" and d[1].name == "ix_metrics_split_name")]


def before_threads(path: Path) -> None:
    # A first-release file written before runs.threads and runs.versions existed.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP VIEW run_summary")
        for column in ("threads", "versions"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")


def test_the_head_revision_is_the_schema_version():
    revisions = [s.revision for s in migrations.scripts().walk_revisions()][::-1]
    assert revisions == [f"{n:04d}" for n in range(1, SCHEMA_VERSION + 1)]  # one line, no gaps
    assert migrations.scripts().get_current_head() == migrations.head() == f"{SCHEMA_VERSION:04d}"


@pytest.mark.parametrize("fixture, version, old_release", [
    ("schema2_two_runs.db", 2, None),
    ("schema1_one_run.db", 1, None),
    ("schema1_one_run.db", 1, before_threads),
])
def test_an_older_file_is_upgraded_in_place_with_every_row_kept(tmp_path, fixture, version, old_release):
    path = tmp_path / "bench.db"
    shutil.copy(FIXTURES / fixture, path)
    if old_release:
        old_release(path)
    before = rows(path)
    assert before["runs"] and before["metrics"]
    with open_readonly(f"sqlite:///{path}").connect() as conn:
        assert schema_version(conn) == version

    open_engine(f"sqlite:///{path}").dispose()
    after = rows(path)
    for table, old in before.items():
        assert len(after[table]) == len(old)
        for was, now in zip(old, after[table], strict=True):
            assert {c: now[c] for c in was} == was  # every old value, exactly
            assert all(now[c] is None for c in now.keys() - was.keys())  # new columns are NULL
    assert query(path, "SELECT version_num FROM alembic_version") == [(migrations.head(),)]
    assert query(path, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    assert schema_drift(f"sqlite:///{path}") == []

    hashes = sha256(tmp_path)
    open_engine(f"sqlite:///{path}").dispose()  # at head: the open writes nothing
    assert sha256(tmp_path) == hashes
    with ResultsDB(f"sqlite:///{path}") as db:  # and the writer writes as into a new file
        new = db.start_run(**RUN, launcher="basic")
    assert new == max(r["id"] for r in before["runs"]) + 1
    assert query(path, "SELECT length(uid), attempts FROM runs WHERE id = ?", new) == [(32, 1)]


def test_a_new_file_is_created_at_head_as_the_models_say(tmp_path):
    path = tmp_path / "new.db"
    open_engine(f"sqlite:///{path}").dispose()
    assert query(path, "SELECT version_num FROM alembic_version") == [(migrations.head(),)]
    assert schema_drift(f"sqlite:///{path}") == []


def test_many_writers_upgrade_one_old_file_once(tmp_path):
    # Jobs of a sweep open the database at the same moment: one upgrades, the others wait for
    # its transaction (BEGIN IMMEDIATE) and find it at head.
    path = tmp_path / "bench.db"
    shutil.copy(FIXTURES / "schema1_one_run.db", path)
    before = rows(path)
    code = f"from db.engine import open_engine; open_engine('sqlite:///{path}').dispose()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    assert [(p.wait(timeout=60), p.stderr.read()) for p in procs] == [(0, "")] * 4
    assert query(path, "SELECT version_num FROM alembic_version") == [(migrations.head(),)]
    assert query(path, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert [{c: r[c] for c in was} for was, r in zip(before["runs"], rows(path)["runs"], strict=True)] \
        == before["runs"]


def _to_postgres(sqlite_path: Path, url: str) -> None:
    """A PostgreSQL database as the release before Alembic left it: the schema-2 tables (built by
    revision 2), the fixture's rows, schema_info = 2 and no alembic_version."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        migrations.upgrade(conn, "0002")
    engine.dispose()
    name = make_url(url).database
    with pg.connect(database=name) as conn:
        conn.execute("DROP TABLE alembic_version")
        for table, old in rows(sqlite_path).items():
            for row in old:
                columns = ", ".join(row)
                marks = ", ".join(["%s"] * len(row))
                conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))
        conn.execute("SELECT setval('runs_id_seq', (SELECT MAX(id) FROM runs))")


def _pg_rows(name: str) -> dict[str, list[tuple]]:
    return {t: pg.rows(name, f"SELECT * FROM {t} ORDER BY {order}") for t, order in TABLES.items()}


def test_an_older_postgres_database_is_upgraded_in_place(tmp_path, pg_url):
    name = make_url(pg_url).database
    _to_postgres(FIXTURES / "schema2_two_runs.db", pg_url)
    before = _pg_rows(name)
    old_runs = rows(FIXTURES / "schema2_two_runs.db")["runs"]
    assert [r[0] for r in before["runs"]] == [r["id"] for r in old_runs]
    assert [r[5] for r in before["runs"]] == [r["norm"] for r in old_runs]

    open_engine(pg_url).dispose()
    after = _pg_rows(name)
    for table, old in before.items():  # the old columns come first, then the added ones
        assert [row[:len(old[0])] for row in after[table]] == old
        assert all(v is None for row in after[table] for v in row[len(old[0]):])
    assert len(after["runs"][0]) == len(Base.metadata.tables["runs"].columns) > len(before["runs"][0])
    assert pg.rows(name, "SELECT version_num FROM alembic_version") == [(migrations.head(),)]
    assert pg.rows(name, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert schema_drift(pg_url) == []

    dumped = pg.dump(name)
    open_engine(pg_url).dispose()  # at head: nothing changes
    assert pg.dump(name) == dumped
    with ResultsDB(pg_url) as db:
        assert db.start_run(**RUN) == max(r["id"] for r in old_runs) + 1


def _newer(how: str, path: Path) -> str:
    """Make `path` look written by a newer normbench; the schema it then claims."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        if how == "revision":
            conn.execute("UPDATE alembic_version SET version_num = '0099'")
            return "99"
        # No alembic_version: then schema_info says the version.
        conn.execute("DROP TABLE alembic_version")
        conn.execute("UPDATE schema_info SET version = 9")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchall() == [("delete",)]
    return "9"


@pytest.mark.parametrize("how", ["revision", "schema_info in a rollback-journal file"])
def test_a_newer_database_is_refused_and_not_touched(tmp_path, how):
    path = tmp_path / "bench.db"
    shutil.copy(FIXTURES / "schema2_two_runs.db", path)
    open_engine(f"sqlite:///{path}").dispose()
    claimed = _newer(how.split()[0], path)
    hashes = sha256(tmp_path)
    want = (f"written by a newer normbench (schema {claimed}, this code knows up to "
            f"{SCHEMA_VERSION}): upgrade normbench")
    with pytest.raises(UserError) as e:
        open_engine(f"sqlite:///{path}")
    assert str(e.value) == f"cannot open results database 'sqlite:///{path}': {want}"
    assert sha256(tmp_path) == hashes
    if how == "revision":  # the whole command: exit status 2, one line, nothing trained
        proc = run_bench(tmp_path, "epochs=1", "bs=32", "dataset.train_subset=64", check_rc=2)
        assert_user_error(proc, want)
        assert sha256(tmp_path) == hashes


def test_a_revision_not_of_normbench_is_refused(tmp_path):
    path = tmp_path / "bench.db"
    open_engine(f"sqlite:///{path}").dispose()
    query(path, "UPDATE alembic_version SET version_num = 'ae1027a6acf'")
    with pytest.raises(UserError, match=r"unknown schema revision 'ae1027a6acf' \(this code knows "
                                        rf"up to {SCHEMA_VERSION}\)"):
        open_engine(f"sqlite:///{path}")


def test_a_newer_postgres_database_is_refused_and_not_touched(pg_url):
    name = make_url(pg_url).database
    open_engine(pg_url).dispose()
    with pg.connect(database=name) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0042'")
    dumped = pg.dump(name)
    with pytest.raises(UserError, match=r"written by a newer normbench \(schema 42, this code knows "
                                        rf"up to {SCHEMA_VERSION}\): upgrade normbench$"):
        open_engine(pg_url)
    assert pg.dump(name) == dumped


def test_readers_read_an_older_file_without_writing_it(tmp_path):
    path = tmp_path / "bench.db"
    shutil.copy(FIXTURES / "schema1_one_run.db", path)
    before_threads(path)
    hashes = sha256(tmp_path)
    from analysis.load import load_final, load_runs

    engine = open_readonly(f"sqlite:///{path}")
    runs, final = load_runs(engine), load_final(engine)
    engine.dispose()
    want = rows(path)
    assert list(runs.index) == [r["id"] for r in want["runs"]] and runs["threads"].isna().all()
    assert len(final) == len({(m["run_id"], m["split"], m["name"]) for m in want["metrics"]})
    assert sha256(tmp_path) == hashes
