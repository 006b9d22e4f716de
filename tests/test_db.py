"""The results database on real SQLite files, read back with the sqlite3 module (not the ORM)."""

import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from bench.errors import UserError
from db import ResultsDB, Run, provenance
from db.engine import open_readonly, schema_version
from db.schema import SCHEMA_VERSION

RUN = dict(task="classify", dataset="digits", model="mlp", norm="bn", bs=32, lr=0.1, seed=0,
           epochs=20, config={"optim": {"lr": 0.1, "wd": 5e-4}, "norm": "bn"}, config_hash="a" * 64)


def _sql(path, query, *args):
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(query, args)]


def test_lifecycle(tmp_path):
    path = tmp_path / "sub" / "results.db"  # the missing directory is created
    db = ResultsDB(f"sqlite:///{path}")
    run_id = db.start_run(**RUN, output_dir=str(tmp_path / "job"))
    db.log_epoch(run_id, 1, {("train", "loss"): 2.5, ("test", "acc"): 0.25})
    db.log_epoch(run_id, 2, {("train", "loss"): 1.5, ("test", "acc"): 0.5})
    db.finish(run_id, "completed")
    db.close()

    [run] = _sql(path, "SELECT * FROM runs")
    assert run["id"] == run_id
    assert (run["status"], run["epochs"], run["epochs_done"], run["error"]) == (
        "completed", 20, 2, None)
    assert (run["bs"], run["lr"], run["norm"]) == (32, 0.1, "bn")
    assert json.loads(run["config"]) == RUN["config"]
    assert (run["host"], run["pid"]) == (socket.gethostname(), os.getpid())
    assert run["output_dir"] == str(tmp_path / "job")
    assert run["torch_version"] and run["code_version"] and run["device"] == "cpu"
    started, ended, beat = (datetime.fromisoformat(run[k])
                            for k in ("started_at", "ended_at", "heartbeat_at"))
    assert started <= beat <= ended
    assert abs(started - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)  # naive UTC
    assert run["duration_s"] == pytest.approx((ended - started).total_seconds())
    assert run["duration_s"] > 0
    assert _sql(path, "SELECT * FROM metrics ORDER BY epoch, split, name") == [
        dict(run_id=run_id, epoch=1, split="test", name="acc", value=0.25),
        dict(run_id=run_id, epoch=1, split="train", name="loss", value=2.5),
        dict(run_id=run_id, epoch=2, split="test", name="acc", value=0.5),
        dict(run_id=run_id, epoch=2, split="train", name="loss", value=1.5),
    ]


def test_nan_is_null_inf_kept_and_diverged(tmp_path):
    path = tmp_path / "r.db"
    db = ResultsDB(f"sqlite:///{path}")
    run_id = db.start_run(**RUN)
    db.log_epoch(run_id, 0, {("train", "loss"): 2.3})  # epoch 0: before training
    db.log_epoch(run_id, 1, {("train", "loss"): math.nan, ("train", "grad_norm"): math.inf,
                             ("train", "logit_min"): -math.inf})
    db.finish(run_id, "diverged", error="loss is nan at epoch 1")
    rows = _sql(path, "SELECT name, value FROM metrics WHERE epoch = 1 ORDER BY name")
    assert rows == [dict(name="grad_norm", value=math.inf),
                    dict(name="logit_min", value=-math.inf), dict(name="loss", value=None)]
    [run] = _sql(path, "SELECT status, error, epochs_done FROM runs")
    assert run == dict(status="diverged", error="loss is nan at epoch 1", epochs_done=1)


def test_bad_status_and_check_constraints(tmp_path):
    path = tmp_path / "r.db"
    db = ResultsDB(f"sqlite:///{path}")
    run_id = db.start_run(**RUN)
    for status in ("running", "done"):
        with pytest.raises(ValueError, match="completed, diverged, failed"):
            db.finish(run_id, status)
    with pytest.raises(IntegrityError, match="ck_runs_bs_positive"):
        db.start_run(**{**RUN, "bs": 0})
    # Bypass Python entirely: copy the valid row with one column made invalid.
    columns = [c for c in Run.__table__.columns.keys() if c != "id"]
    for column, bad in [("bs", 0), ("lr", 0.0), ("epochs", 0), ("status", "'done'")]:
        values = ", ".join(str(bad) if c == column else c for c in columns)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            _sql(path, f"INSERT INTO runs ({', '.join(columns)}) SELECT {values} FROM runs")
    assert _sql(path, "SELECT count(*) AS n FROM runs") == [dict(n=1)]


def test_duplicate_metric_is_an_error_and_writes_nothing(tmp_path):
    path = tmp_path / "r.db"
    db = ResultsDB(f"sqlite:///{path}")
    run_id = db.start_run(**RUN)
    db.log_epoch(run_id, 1, {("train", "loss"): 1.0, ("test", "acc"): 0.5})
    db.log_epoch(run_id, 2, {("test", "acc"): 0.7})
    with pytest.raises(IntegrityError):  # ("train", "loss") again; ("test", "new") must not stay
        db.log_epoch(run_id, 1, {("test", "new"): 3.0, ("train", "loss"): 9.0})
    assert _sql(path, "SELECT epoch, split, name, value FROM metrics ORDER BY epoch, name") == [
        dict(epoch=1, split="test", name="acc", value=0.5),
        dict(epoch=1, split="train", name="loss", value=1.0),
        dict(epoch=2, split="test", name="acc", value=0.7),
    ]
    assert _sql(path, "SELECT epochs_done FROM runs") == [dict(epochs_done=2)]
    with pytest.raises(ValueError, match="no run with id 99"):
        db.log_epoch(99, 1, {("train", "loss"): 1.0})


def _writer(url, barrier, errors):
    try:
        barrier.wait(timeout=60)  # all open the new file at once: concurrent schema creation
        db = ResultsDB(url)
        run_id = db.start_run(**{**RUN, "seed": os.getpid()})
        for epoch in range(1, 21):
            db.log_epoch(run_id, epoch, {(split, name): epoch / 10 for split in ("train", "test")
                                         for name in ("loss", "acc")})
        db.finish(run_id, "completed")
        db.close()
        errors.put(None)
    except BaseException as e:
        errors.put(f"{type(e).__name__}: {e}")


def test_parallel_writers(tmp_path):
    path, n = tmp_path / "shared.db", 8
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(f"sqlite:///{path}", barrier, errors))
             for _ in range(n)]
    for p in procs:
        p.start()
    results = [errors.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == [None] * n
    assert _sql(path, "SELECT status, count(*) AS n, sum(epochs_done) AS e FROM runs "
                      "GROUP BY status") == [dict(status="completed", n=n, e=20 * n)]
    assert _sql(path, "SELECT count(*) AS n FROM metrics") == [dict(n=n * 20 * 4)]
    assert _sql(path, "PRAGMA journal_mode") == [dict(journal_mode="wal")]
    assert _sql(path, "PRAGMA integrity_check") == [dict(integrity_check="ok")]


def _start_and_hang(url, run_ids):
    run_ids.put(ResultsDB(url).start_run(**RUN))
    time.sleep(600)


def test_mark_stale_runs(tmp_path):
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    ctx = mp.get_context("spawn")
    run_ids = ctx.Queue()
    child = ctx.Process(target=_start_and_hang, args=(url, run_ids))
    child.start()
    killed_run = run_ids.get(timeout=60)
    os.kill(child.pid, signal.SIGKILL)
    child.join()  # reaped: a zombie would still answer os.kill(pid, 0)

    db = ResultsDB(url)
    mine = db.start_run(**RUN)
    elsewhere = db.start_run(**RUN)  # another host's run: its pid means nothing here
    _sql(path, "UPDATE runs SET host = 'other-host', pid = ? WHERE id = ?", child.pid, elsewhere)
    assert db.mark_stale_runs() == [killed_run]
    assert db.mark_stale_runs() == []
    rows = {r["id"]: r for r in _sql(path, "SELECT id, status, error, ended_at FROM runs")}
    assert rows[killed_run]["status"] == "failed" and rows[killed_run]["ended_at"]
    assert rows[killed_run]["error"] == (f"process {child.pid} on {socket.gethostname()} "
                                         "ended without finishing the run (killed?)")
    assert rows[mine]["status"] == rows[elsewhere]["status"] == "running"


def test_find_completed(tmp_path):
    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    ids = {}
    for status in ("completed", "failed", "running", "completed"):
        ids[status] = db.start_run(**{**RUN, "config_hash": status[0] * 64})
        if status != "running":
            db.finish(ids[status], status)
    assert db.find_completed("c" * 64) == ids["completed"]  # the later of the two
    assert db.find_completed("f" * 64) is None
    assert db.find_completed("r" * 64) is None
    assert db.find_completed("x" * 64) is None


def test_open_is_idempotent_and_writes_no_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultsDB(url).close()
    ResultsDB(url).close()
    tables = _sql(tmp_path / "r.db", "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert sorted(t["name"] for t in tables) == ["alembic_version", "artifacts", "metrics", "runs",
                                                 "schema_info"]
    assert _sql(tmp_path / "r.db", "SELECT (SELECT count(*) FROM runs) + "
                                   "(SELECT count(*) FROM metrics) AS n") == [dict(n=0)]
    # Opened twice, the version is written once.
    assert _sql(tmp_path / "r.db", "SELECT version FROM schema_info") == [dict(version=SCHEMA_VERSION)]
    assert _sql(tmp_path / "r.db", "SELECT version_num FROM alembic_version") == [
        dict(version_num=f"{SCHEMA_VERSION:04d}")]


@pytest.mark.parametrize("url", [
    "foo://x",
    "not a url",
    "sqlite:////proc/nonexistent_dir/x.db",
    "sqlite:///{tmp}/a_file/x.db",  # the parent "directory" is a file
    "postgresql://nobody@127.0.0.1:1/x",  # refused port, or no driver installed
])
def test_bad_url_is_a_one_line_user_error(tmp_path, url):
    (tmp_path / "a_file").write_text("")
    url = url.format(tmp=tmp_path)
    with pytest.raises(UserError) as e:
        ResultsDB(url)
    assert "\n" not in str(e.value) and repr(url) in str(e.value)
    if url.startswith("foo"):
        assert "unknown database kind 'foo'" in str(e.value)
    if url.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            assert "driver not installed" in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_directory(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        ResultsDB(f"sqlite:///{tmp_path / 'ro' / 'x.db'}")


def test_switch_to_wal_waits_for_a_writer(tmp_path):
    # Another process writing a file that is not yet WAL makes "PRAGMA journal_mode=WAL" fail
    # at once with "database is locked" (busy_timeout does not apply); ResultsDB must wait.
    path = tmp_path / "r.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO other VALUES (1)")
    t0 = time.monotonic()
    threading.Timer(0.3, other.execute, ["COMMIT"]).start()
    ResultsDB(f"sqlite:///{path}").close()
    assert time.monotonic() - t0 >= 0.3  # it waited for the commit instead of failing
    other.close()
    assert _sql(path, "PRAGMA journal_mode") == [dict(journal_mode="wal")]


def test_threads_recorded_and_added_to_a_file_written_before_the_column(tmp_path):
    path = tmp_path / "old.db"
    db = ResultsDB(f"sqlite:///{path}")
    first = db.start_run(**RUN)
    db.close()
    # A file as the release before `runs.threads` wrote it: the same table without the column,
    # and no schema_info or alembic_version (db/migrations tells the release by them).
    with sqlite3.connect(path) as conn:
        conn.execute("DROP VIEW run_summary")
        conn.execute("ALTER TABLE runs DROP COLUMN threads")
        conn.execute("DROP TABLE schema_info")
        conn.execute("DROP TABLE alembic_version")
    assert "threads" not in {r["name"] for r in _sql(path, "PRAGMA table_info(runs)")}
    db = ResultsDB(f"sqlite:///{path}")
    second = db.start_run(**RUN, threads=3)
    db.close()
    rows = _sql(path, "SELECT id, threads, config_hash FROM runs ORDER BY id")
    assert rows == [{"id": first, "threads": None, "config_hash": "a" * 64},
                    {"id": second, "threads": 3, "config_hash": "a" * 64}]
    assert _sql(path, "SELECT threads FROM run_summary WHERE run_id = ?", second) == [{"threads": 3}]


def test_a_version_1_file_is_brought_to_the_current_schema_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v1.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        first = db.start_run(**RUN)
    with sqlite3.connect(path) as conn:  # as version 1 (before schema_info) wrote it
        conn.execute("DROP INDEX ix_runs_uid")
        for column in ("uid", "launcher", "scheduler_job_id", "attempts", "failure", "repeat_of"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        conn.execute("DROP TABLE schema_info")
        conn.execute("DROP TABLE alembic_version")
    with open_readonly(f"sqlite:///{path}").connect() as conn:
        assert schema_version(conn) == 1
    with ResultsDB(f"sqlite:///{path}") as db:
        second = db.start_run(**RUN, launcher="joblib", scheduler_job_id="77_3")
    rows = _sql(path, "SELECT id, uid, launcher, scheduler_job_id, attempts FROM runs ORDER BY id")
    assert rows[0] == dict(id=first, uid=None, launcher=None, scheduler_job_id=None, attempts=None)
    assert rows[1]["id"] == second and len(rows[1]["uid"]) == 32 and int(rows[1]["uid"], 16) >= 0
    assert (rows[1]["launcher"], rows[1]["scheduler_job_id"], rows[1]["attempts"]) == ("joblib", "77_3", 1)
    with open_readonly(f"sqlite:///{path}").connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION == 3
    (tmp_path / "other.db").write_bytes(b"")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with open_readonly(f"sqlite:///{tmp_path / 'other.db'}").connect() as conn:
        assert schema_version(conn) is None  # not a normbench database


def test_every_run_gets_its_own_uid(tmp_path):
    with ResultsDB(f"sqlite:///{tmp_path / 'r.db'}") as db:
        ids = [db.start_run(**RUN) for _ in range(5)]
    uids = [r["uid"] for r in _sql(tmp_path / "r.db", "SELECT uid FROM runs ORDER BY id")]
    assert len(ids) == len(set(uids)) == 5


# The libraries whose versions shape a run's numbers or config, by distribution name.
VERSIONED = ["torch", "torchvision", "numpy", "scipy", "torchmetrics", "scikit-learn", "pillow",
             "hydra-core", "omegaconf", "sqlalchemy"]


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def test_each_run_records_the_library_versions(tmp_path):
    path = tmp_path / "r.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        db.start_run(**RUN)
    [row] = _sql(path, "SELECT versions, torch_version FROM runs")
    versions = json.loads(row["versions"])
    want = {name: _installed(name) for name in VERSIONED}
    want["python"] = "{}.{}.{}".format(*sys.version_info[:3])
    assert versions == want and list(versions) == [*VERSIONED, "python"]
    # torch_version is kept as it was: the loaded torch's own string (with its build's local
    # label, '+cu130', which the installed metadata leaves out)
    assert row["torch_version"] == sys.modules["torch"].__version__ and versions["torch"] != "not installed"
    assert _sql(path, "SELECT json_extract(versions, '$.numpy') AS v FROM runs") == [dict(v=want["numpy"])]


def test_versions_are_read_once_per_process_and_absent_ones_named(tmp_path, monkeypatch):
    calls = []
    real = importlib.metadata.version

    def version(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(provenance, "VERSIONED", ("numpy", "no-such-distribution-normbench"))
    provenance.versions_json.cache_clear()
    try:
        with ResultsDB(f"sqlite:///{tmp_path / 'r.db'}") as db:
            db.start_run(**RUN)
            db.start_run(**RUN)
        assert calls.count("numpy") == 1 and calls.count("no-such-distribution-normbench") == 1
        rows = _sql(tmp_path / "r.db", "SELECT versions FROM runs")
        missing = [json.loads(r["versions"])["no-such-distribution-normbench"] for r in rows]
        assert missing == ["not installed"] * 2
    finally:
        provenance.versions_json.cache_clear()  # the other tests see the real list again


def test_versions_added_to_a_file_written_before_the_column(tmp_path):
    path = tmp_path / "old.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        first = db.start_run(**RUN)
    with sqlite3.connect(path) as conn:  # as the release before `runs.versions` wrote it
        conn.execute("ALTER TABLE runs DROP COLUMN versions")
        conn.execute("DROP TABLE schema_info")  # which came later, as Alembic's table
        conn.execute("DROP TABLE alembic_version")
    conn.close()
    with ResultsDB(f"sqlite:///{path}") as db:
        second = db.start_run(**RUN)
    rows = _sql(path, "SELECT id, versions FROM runs ORDER BY id")
    assert [r["id"] for r in rows] == [first, second] and rows[0]["versions"] is None
    assert json.loads(rows[1]["versions"])["sqlalchemy"] == _installed("sqlalchemy")


def test_postgresql_urls_mean_psycopg_3_unless_they_name_a_driver():
    from db.engine import parse_url

    got = {url: parse_url(url).drivername for url in (
        "postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://u@h/db",
        "postgresql+psycopg://u@h/db", "sqlite:///x.db")}
    assert got == {"postgresql://u@h/db": "postgresql+psycopg", "postgres://u@h/db": "postgresql+psycopg",
                   "postgresql+psycopg2://u@h/db": "postgresql+psycopg2",
                   "postgresql+psycopg://u@h/db": "postgresql+psycopg", "sqlite:///x.db": "sqlite"}
