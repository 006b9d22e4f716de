"""The convenience views and `python -m db`, checked with the sqlite3 module (not our code)."""

import contextlib
import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy.exc

from bench.errors import UserError, one_line
from db import ResultsDB
from db.cli import main
from db.engine import open_engine
from db.views import view_sql

RUN = dict(task="classify", dataset="digits", model="convnet", lr=1e-3, epochs=3)


def _sql(path, query, *args):
    # Closed on return (sqlite3's `with` only commits): an open connection keeps -wal and -shm.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture
def db_path(tmp_path):
    """Three runs: completed (fid only at epoch 2), diverged at epoch 2 (NaN loss), running."""
    path = tmp_path / "r.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        a = db.start_run(norm="bn", bs=8, seed=0, config={"optim": {"name": "adam"}}, config_hash="a", **RUN)
        for e in (1, 2, 3):
            db.log_epoch(a, e, {("test", "acc"): 0.5 + e / 10, ("test", "loss"): 1 / e,
                                **({("test", "fid"): 40.0 - e} if e == 2 else {})})
        db.finish(a, "completed")
        b = db.start_run(norm="none", bs=128, seed=1, config={}, config_hash="b", **RUN)
        db.log_epoch(b, 1, {("test", "acc"): 0.3, ("test", "loss"): 2.0})
        db.log_epoch(b, 2, {("test", "acc"): 0.1, ("test", "loss"): float("nan")})
        db.finish(b, "diverged", "test loss became nan at epoch 2")
        db.start_run(norm="gn", bs=8, seed=0, config={}, config_hash="c", **RUN)
    return path


def run(capsys, *argv):
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def checksum(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(path) -> tuple:
    """What reading must leave as it was: the file's bytes, the files beside it (-wal, -journal
    with their bytes; -shm, SQLite's shared-memory index, where a reader of a file that a writer
    holds open marks what it reads, by its name only), and the journal mode in the file's header
    (bytes 18-19: 2 = WAL)."""
    beside = {p.name: "present" if p.name.endswith("-shm") else checksum(p)
              for p in sorted(path.parent.iterdir()) if p != path}
    return checksum(path), beside, path.read_bytes()[18:20]


@contextlib.contextmanager
def read_only(path):
    """The file `path` and its directory made read-only (chmod 444 and 555). Root ignores modes,
    so for root both also get the immutable attribute (chattr +i); where that is unavailable the
    test is skipped. Checked with real writes before the body runs."""
    folder = path.parent
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    immutable = []
    try:
        if os.geteuid() == 0:
            for p in (path, folder):
                try:
                    done = subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode == 0
                except OSError:
                    done = False
                if not done:
                    pytest.skip("root ignores chmod here and chattr +i is not available")
                immutable.append(p)
        with pytest.raises(OSError):
            path.open("ab").close()
        with pytest.raises(OSError):
            (folder / "probe").touch()
        yield path
    finally:
        for p in reversed(immutable):
            subprocess.run(["chattr", "-i", str(p)], check=True)
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)


def test_run_final_is_each_metrics_last_epoch(db_path):
    rows = _sql(db_path, "SELECT run_id, status, norm, split, name, epoch, value FROM run_final "
                         "ORDER BY run_id, name")
    assert rows == [(1, "completed", "bn", "test", "acc", 3, 0.8),
                    (1, "completed", "bn", "test", "fid", 2, 38.0),  # logged at epoch 2 only
                    (1, "completed", "bn", "test", "loss", 3, 1 / 3),
                    (2, "diverged", "none", "test", "acc", 2, 0.1),
                    (2, "diverged", "none", "test", "loss", 2, None)]  # NaN
    summary = _sql(db_path, "SELECT run_id, status, s_per_epoch IS NOT NULL, final_metrics "
                            "FROM run_summary")
    assert [r[:3] for r in summary] == [(1, "completed", 1), (2, "diverged", 1), (3, "running", 0)]
    assert json.loads(summary[0][3]) == {"test/acc": 0.8, "test/fid": 38.0, "test/loss": pytest.approx(1 / 3)}
    assert summary[2][3] is None
    # The README's question: final test accuracy per norm and batch size, one SELECT.
    assert _sql(db_path, "SELECT norm, bs, AVG(value), COUNT(*) FROM run_final WHERE split = 'test' "
                         "AND name = 'acc' AND status = 'completed' GROUP BY norm, bs") == [("bn", 8, 0.8, 1)]


def test_views_and_index_are_idempotent_and_replace_an_outdated_view(db_path):
    ResultsDB(f"sqlite:///{db_path}").close()  # opened again: nothing added twice
    names = _sql(db_path, "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'index') "
                          "AND name NOT LIKE 'sqlite_%' ORDER BY name")
    assert names == [("index", "ix_metrics_split_name"), ("index", "ix_runs_config_hash"),
                     ("index", "ix_runs_experiment"), ("index", "ix_runs_status"),
                     ("index", "ix_runs_uid"), ("view", "run_final"), ("view", "run_summary")]
    with sqlite3.connect(db_path) as conn:  # as an older version would have left it
        conn.execute("DROP VIEW run_summary")
        conn.execute("CREATE VIEW run_summary AS SELECT id FROM runs")
    ResultsDB(f"sqlite:///{db_path}").close()
    [(sql,)] = _sql(db_path, "SELECT sql FROM sqlite_master WHERE name = 'run_summary'")
    assert sql == "CREATE VIEW run_summary AS\n" + view_sql("run_summary", "sqlite")
    plan = " ".join(str(r) for r in _sql(db_path, "EXPLAIN QUERY PLAN SELECT run_id, epoch, value FROM "
                                                  "metrics WHERE split = 'test' AND name = 'acc'"))
    assert "COVERING INDEX ix_metrics_split_name" in plan


@pytest.mark.parametrize("sql", [
    "DELETE FROM runs", "DROP TABLE metrics", "UPDATE runs SET status = 'failed'",
    "INSERT INTO metrics VALUES (1, 9, 'test', 'acc', 1.0)", "CREATE TABLE t (x)",
    "PRAGMA query_only = OFF", "ATTACH DATABASE 'other.db' AS o", "SELECT 1; DELETE FROM runs",
    "PRAGMA wal_checkpoint", "PRAGMA journal_mode = DELETE", "VACUUM", "VACUUM INTO 'other.db'",
])
def test_query_cannot_modify_the_database(db_path, capsys, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts = _sql(db_path, "SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM metrics)")
    before = snapshot(db_path)
    rc, out, err = run(capsys, "query", sql, "--db", f"sqlite:///{db_path}")
    assert rc == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert snapshot(db_path) == before
    assert _sql(db_path, "SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM metrics)") == counts
    assert not (tmp_path / "other.db").exists()


def test_query_reads(db_path, capsys):
    rc, out, _ = run(capsys, "query", "SELECT norm, value FROM run_final WHERE name = 'acc' ORDER BY norm",
                     "--db", f"sqlite:///{db_path}", "--csv")
    assert rc == 0
    assert list(csv.reader(io.StringIO(out))) == [["norm", "value"], ["bn", "0.8"], ["none", "0.1"]]
    rc, out, _ = run(capsys, "query", "PRAGMA table_info(runs)", "--db", f"sqlite:///{db_path}")
    assert rc == 0 and "config_hash" in out
    rc, _, err = run(capsys, "query", "SELEC 1", "--db", f"sqlite:///{db_path}")
    assert rc == 1 and "syntax error" in err


def test_runs_and_show(db_path, capsys):
    rc, out, _ = run(capsys, "runs", "--db", f"sqlite:///{db_path}", "--status", "completed,diverged")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["id", "status", "task"]
    assert [line.split()[:2] for line in lines[1:3]] == [["1", "completed"], ["2", "diverged"]]
    assert lines[-1] == "2 of 2 matching runs"
    rc, out, _ = run(capsys, "runs", "--db", f"sqlite:///{db_path}", "--limit", "1")
    assert out.splitlines()[1].split()[:2] == ["3", "running"] and "1 of 3" in out
    rc, out, _ = run(capsys, "show", "2", "--db", f"sqlite:///{db_path}")
    assert rc == 0 and "test loss became nan at epoch 2" in out
    table = out[out.index("metrics ("):].splitlines()
    assert table[1].split() == ["epoch", "test/acc", "test/loss"]
    assert table[3].split() == ["2", "0.1", "nan"]
    rc, _, err = run(capsys, "show", "42", "--db", f"sqlite:///{db_path}")
    assert rc == 1 and err == "error: no run with id 42\n"


def test_export_equals_the_tables(db_path, tmp_path, capsys):
    target = tmp_path / "metrics.csv"
    assert run(capsys, "export", "metrics", "--db", f"sqlite:///{db_path}", "-o", str(target))[0] == 0
    rows = list(csv.DictReader(target.open()))
    raw = _sql(db_path, "SELECT run_id, epoch, split, name, value FROM metrics "
                        "ORDER BY run_id, epoch, split, name")
    assert [(int(r["run_id"]), int(r["epoch"]), r["split"], r["name"],
             float(r["value"]) if r["value"] else None) for r in rows] == raw
    rc, out, _ = run(capsys, "export", "runs", "--db", f"sqlite:///{db_path}", "--norm", "bn")
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert (row["id"], json.loads(row["config"])) == ("1", {"optim": {"name": "adam"}})
    rc, out, _ = run(capsys, "export", "final", "--db", f"sqlite:///{db_path}")
    assert len(out.splitlines()) == 1 + 5


def test_bad_input_is_one_line_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "missing.db"
    for argv in (["runs", "--db", f"sqlite:///{missing}"], ["query", "SELECT 1", "--db", "nope"],
                 ["runs", "--db", "mysql://x/y"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert not missing.exists()


@pytest.mark.parametrize("argv, allowed", [
    (["show", "abc"], "argument RUN_ID: 'abc' is not allowed (allowed: a run id, a whole number >= 1)"),
    (["show", "0"], "'0' is not allowed (allowed: a run id"),
    (["runs", "--limit", "abc"], "argument --limit: 'abc' is not allowed (allowed: a whole number >= 0"),
    (["runs", "--limit", "-1"], "'-1' is not allowed"),
    (["export", "nope"], "invalid choice: 'nope' (choose from 'final', 'metrics', 'runs')"),
    (["nope"], "invalid choice: 'nope' (choose from 'runs', 'show', 'query', 'export', 'merge', "
              "'mark-stale')"),
    ([], "the following arguments are required: COMMAND (try `python -m db --help`)"),
])
def test_bad_arguments_are_one_line_and_exit_2(db_path, capsys, argv, allowed):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *(["--db", f"sqlite:///{db_path}"] if argv and argv[0] != "nope" else [])])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and allowed in err, err
    assert "usage:" not in err


def test_a_path_instead_of_a_url_gets_the_url_suggested(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "runs", "--db", "results/bench.db")
    message = "cannot open results database 'results/bench.db': not a URL (did you mean sqlite:///results/bench.db?)"
    assert rc == 1 and err == f"error: {message}\n"
    with pytest.raises(UserError) as raised:  # the writers' engine (bench.run, ResultsDB) says the same
        open_engine("results/bench.db")
    assert str(raised.value) == message
    with pytest.raises(UserError, match=r"did you mean sqlite:////abs/bench\.db\?"):
        open_engine("/abs/bench.db")
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_db(db_path):
    proc = subprocess.run([sys.executable, "-m", "db", "runs", "--db", f"sqlite:///{db_path}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "3 of 3 matching runs" in proc.stdout


def test_every_command_reads_a_read_only_database_and_leaves_it_as_it_was(db_path, capsys):
    before = snapshot(db_path)
    with read_only(db_path):
        url = f"sqlite:///{db_path}"
        rc, out, err = run(capsys, "runs", "--db", url)
        assert (rc, err) == (0, "") and out.splitlines()[-1] == "3 of 3 matching runs"
        rc, out, err = run(capsys, "show", "1", "--db", url)
        assert (rc, err) == (0, "") and "versions\n" in out
        rc, out, err = run(capsys, "export", "final", "--db", url)
        assert (rc, err) == (0, "") and len(out.splitlines()) == 1 + 5
        rc, out, err = run(capsys, "query", "DELETE FROM runs", "--db", url)
        assert rc == 1 and "read-only" in err
        assert snapshot(db_path) == before
    assert snapshot(db_path) == before
    assert _sql(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_show_lists_the_library_versions(db_path, capsys):
    rc, out, _ = run(capsys, "show", "1", "--db", f"sqlite:///{db_path}")
    [(stored,)] = _sql(db_path, "SELECT versions FROM runs WHERE id = 1")
    block = out[out.index("versions\n"):out.index("config\n")].splitlines()[1:]
    assert rc == 0 and [line.split() for line in block] == [[k, v] for k, v in json.loads(stored).items()]
    assert "torch" in json.loads(stored)


def test_a_missing_or_foreign_file_is_one_line_and_unchanged(tmp_path, capsys):
    missing = tmp_path / "nothing" / "here.db"
    rc, _, err = run(capsys, "runs", "--db", f"sqlite:///{missing}")
    assert rc == 1 and err == (f"error: no results database at {str(missing)!r} (train with "
                               "`python -m bench.run`, or pass --db URL)\n")
    assert not missing.parent.exists()
    text = tmp_path / "notes.db"
    text.write_text("not a database, but long enough to hold an SQLite header: " * 4)
    before = snapshot(text)
    rc, _, err = run(capsys, "runs", "--db", f"sqlite:///{text}")
    assert rc == 1 and err == (f"error: cannot open results database 'sqlite:///{text}': "
                               "file is not a database\n")
    assert snapshot(text) == before


def test_one_line_shows_the_drivers_message_on_one_line():
    driver = sqlite3.OperationalError("no such\n   table: runs")
    wrapped = sqlalchemy.exc.OperationalError("SELECT * FROM runs", {}, driver)
    assert one_line(wrapped, with_type=False) == "no such table: runs"
    assert one_line(wrapped) == "OperationalError: no such table: runs"
    assert one_line(ValueError("a\tb\n c")) == "ValueError: a b c"
    assert one_line(KeyError(), with_type=False) == "KeyError"
