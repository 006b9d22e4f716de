"""PostgreSQL for real: the whole flow against the server of tests/pg.py, each test in a database
of its own, checked with psycopg and sqlite3 directly (not db/).

One sweep (the `sweep` fixture, ~10-13 s: five tests share it) trains 2 jobs into PostgreSQL and the
same 2 into SQLite, in one command with 2 joblib workers, as a role with a password that only
PGPASSWORD holds. This server trusts 127.0.0.1 (pg_hba.conf `trust`), so it does not check that
password: what is tested is that the run works with it in the environment and that it appears in
no file and no output.
"""

import csv
import io
import secrets
import shutil
import socket
import subprocess
import tempfile
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import pg
import pytest
from conftest import assert_user_error, query, run_bench, run_bench_subprocess, run_main
from psycopg import sql
from sqlalchemy.engine import make_url

from analysis import report
from db import ResultsDB
from db.cli import main as db_main

SECRET = f"pw-{secrets.token_hex(8)}"
SWEEP = ("-m", "norm=bn,gn", "epochs=1", "dataset.train_subset=256", "threads=1")
TIMING = ("time_s", "images_per_s")  # measured durations: no two runs share them


@dataclass
class Sweep:
    cwd: Path
    database: str
    writer: str
    url: str  # as the writer, plain postgresql://, no password
    sqlite: Path
    output: str  # its stdout and stderr


def _make_sweep(cwd: Path) -> dict:
    writer = pg.create_role("nb_writer", password=SECRET)
    name = pg.create_database(owner=writer)
    try:
        url, sqlite = pg.url_of(name, writer), cwd / "bench.db"
        proc = run_bench_subprocess(cwd, *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                    f"db.url=sqlite:///{sqlite},{url}", env={"PGPASSWORD": SECRET},
                                    check_rc=0)
    except BaseException:
        _drop_sweep({"database": name, "writer": writer})
        raise
    return dict(cwd=str(cwd), database=name, writer=writer, url=url, sqlite=str(sqlite),
                output=proc.stdout + proc.stderr)


def _drop_sweep(made: dict) -> None:
    pg.drop_database(made["database"])
    pg.drop_role(made["writer"])


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """The sweep of the module docstring, made once per test session (`pg.shared`)."""
    pg.require_server()
    cwd = tmp_path_factory.mktemp("pg_sweep")
    with pg.shared(tmp_path_factory, "normbench_pg_sweep", lambda: _make_sweep(cwd),
                   _drop_sweep) as made:
        yield Sweep(**{**made, "cwd": Path(made["cwd"]), "sqlite": Path(made["sqlite"])})


def db_cli(*args) -> tuple[int, str, str]:
    """`python -m db ARGS` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err):
        rc = db_main(list(args), out=out)
    return rc, out.getvalue(), err.getvalue()


def report_cli(*args) -> tuple[int, str]:
    """`python -m analysis.report ARGS` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with redirect_stderr(err):
        rc = report.main(list(args))
    return rc, err.getvalue()


# --- The sweep ---------------------------------------------------------------------------------

def test_sweep_of_parallel_jobs_writes_postgres_as_the_url_says(sweep):
    assert "sweep done, 4 jobs: 4 completed" in sweep.output
    runs = pg.rows(sweep.database, "SELECT norm, status, epochs_done, pid FROM runs ORDER BY norm")
    assert [r[:3] for r in runs] == [("bn", "completed", 1), ("gn", "completed", 1)]
    pids = {r[3] for r in runs} | {r[0] for r in query(sweep.sqlite, "SELECT pid FROM runs")}
    assert len(pids) == 2  # 4 jobs in 2 worker processes
    # A plain postgresql:// URL (psycopg 3) connected as its user: the writer created the tables.
    assert pg.rows(sweep.database, "SELECT DISTINCT tableowner FROM pg_tables "
                                   "WHERE schemaname = 'public'") == [(sweep.writer,)]


def test_password_from_pgpassword_is_in_no_file_and_no_output(sweep):
    assert SECRET not in sweep.output
    files = [p for p in sweep.cwd.rglob("*") if p.is_file()]
    assert any(p.name == "multirun.yaml" for p in files)  # Hydra's files are among them
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    assert SECRET not in repr(pg.dump(sweep.database))
    configs = pg.rows(sweep.database, "SELECT config->'db'->>'url' FROM runs")
    assert configs == [(sweep.url,), (sweep.url,)]


def test_views_give_each_metric_at_its_own_last_epoch(pg_url):
    with ResultsDB(pg_url) as db:
        run_id = db.start_run(task="classify", dataset="digits", model="convnet", norm="bn", bs=8,
                              lr=1e-3, seed=0, epochs=3, config={}, config_hash="a")
        for epoch, loss in ((1, 2.0), (2, 1.0), (3, float("nan"))):
            db.log_epoch(run_id, epoch, {("test", "loss"): loss,
                                         **({("test", "fid"): 40.0} if epoch == 2 else {})})
        db.finish(run_id, "diverged", "loss is nan")
    name = make_url(pg_url).database
    assert pg.rows(name, "SELECT run_id, status, split, name, epoch, value FROM run_final "
                         "ORDER BY name") == [(run_id, "diverged", "test", "fid", 2, 40.0),
                                              (run_id, "diverged", "test", "loss", 3, None)]
    (summary,) = pg.rows(name, "SELECT run_id, epochs_done, final_metrics, s_per_epoch * 3, "
                               "duration_s FROM run_summary")
    assert summary[:3] == (run_id, 3, {"test/fid": 40.0, "test/loss": None})
    assert summary[3] == pytest.approx(summary[4])


def test_sqlite_and_postgres_hold_the_same_final_metrics(sweep):
    select = ("SELECT r.config_hash, f.split, f.name, f.value FROM run_final AS f "
              "JOIN runs AS r ON r.id = f.run_id")
    in_sqlite = {row[:3]: row[3] for row in query(sweep.sqlite, select) if row[2] not in TIMING}
    in_postgres = {row[:3]: row[3] for row in pg.rows(sweep.database, select)
                   if row[2] not in TIMING}
    assert len({key[0] for key in in_sqlite}) == 2  # both configs, every metric but the timings
    assert in_sqlite == in_postgres  # exactly, every bit


# --- Readers: python -m db and the report, as a role that may only SELECT ----------------------

def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_every_reader_works_as_a_select_only_role_and_changes_nothing(sweep, tmp_path):
    with pg.role("nb_reader") as reader:
        grant = sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(reader))
        with pg.connect(database=sweep.database) as conn:
            conn.execute(grant)
        try:
            before, url = pg.dump(sweep.database), pg.url_of(sweep.database, reader)
            runs = pg.rows(sweep.database, "SELECT id, norm, config_hash FROM runs ORDER BY id")
            metrics = pg.rows(sweep.database, "SELECT run_id, epoch, split, name, value FROM metrics")
            final = pg.rows(sweep.database, "SELECT run_id, split, name, value FROM run_final")

            rc, out, err = db_cli("runs", "--db", url)
            assert (rc, err) == (0, "") and "2 of 2 matching runs" in out
            rc, out, err = db_cli("show", str(runs[0][0]), "--db", url)
            assert rc == 0 and f"config_hash   {runs[0][2]}" in out
            assert f"metrics ({sum(m[0] == runs[0][0] for m in metrics)} values" in out
            rc, out, err = db_cli("query", "--csv", "--db", url, "SELECT current_user, "
                                  "current_setting('transaction_read_only') AS ro, COUNT(*) "
                                  "FROM metrics")
            assert rc == 0 and _csv(out) == [{"current_user": reader, "ro": "on",
                                              "count": str(len(metrics))}]
            exported = {}
            for what in ("runs", "metrics", "final"):
                rc, out, err = db_cli("export", what, "--db", url)
                assert (rc, err) == (0, ""), err
                exported[what] = _csv(out)
            assert [(int(r["id"]), r["norm"]) for r in exported["runs"]] == [r[:2] for r in runs]
            assert len(exported["metrics"]) == len(metrics)
            assert {(int(r["run_id"]), r["split"], r["name"]): float(r["value"])
                    for r in exported["final"]} == {row[:3]: row[3] for row in final}

            assert report_cli("--db", url, "--out", str(tmp_path / "report")) == (0, "")
            assert (tmp_path / "report" / "index.html").stat().st_size > 0
            assert pg.dump(sweep.database) == before
        finally:
            with pg.connect(database=sweep.database) as conn:
                conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(
                    sql.Identifier(reader)))


# --- python -m db query cannot change anything --------------------------------------------------

@pytest.fixture(scope="module")
def attack_db(tmp_path_factory):
    """A database with one run, owned by a role of its own, and a function that writes and a
    procedure that commits, made through a writer's connection; yields (name, owner, a folder
    for the files COPY would write). The folder is one the server's user may write: else COPY
    would fail for that reason alone."""
    folder = Path(tempfile.mkdtemp(prefix="nb_copy_"))
    folder.chmod(0o777)
    try:
        with pg.role("nb_owner") as owner, pg.database(owner=owner) as name:
            with ResultsDB(pg.url_of(name, owner)) as db:
                run_id = db.start_run(task="classify", dataset="digits", model="convnet",
                                      norm="bn", bs=8, lr=1e-3, seed=0, epochs=1, config={},
                                      config_hash="a")
                db.log_epoch(run_id, 1, {("test", "acc"): 0.5, ("test", "loss"): 1.5})
                db.finish(run_id, "completed")
            with pg.connect(database=name) as conn:
                conn.execute("CREATE FUNCTION nb_delete() RETURNS int LANGUAGE sql AS "
                             "'DELETE FROM metrics RETURNING 1'")
                conn.execute("CREATE PROCEDURE nb_commit() LANGUAGE plpgsql AS "
                             "$$ BEGIN COMMIT; DELETE FROM metrics; COMMIT; END $$")
            yield name, owner, folder
    finally:
        shutil.rmtree(folder)


READ_ONLY = "the database is opened read-only and was not changed"
ATTACKS = {  # what each one would do, were it allowed
    "read write, then delete": "SET TRANSACTION READ WRITE; DELETE FROM metrics WHERE run_id=1; "
                               "COMMIT",
    "commit, then a new transaction": "COMMIT; BEGIN READ WRITE; CREATE TABLE t(x int); COMMIT",
    "read write alone": "SET TRANSACTION READ WRITE",
    "delete": "DELETE FROM metrics",
    "nextval": "SELECT nextval('runs_id_seq')",
    "setval": "SELECT setval('runs_id_seq', 1000)",
    "a function that deletes": "SELECT nb_delete()",
    "read write by set_config": "SELECT set_config('transaction_read_only', 'off', false)",
    "session default off, then write": "SELECT set_config('default_transaction_read_only', 'off', "
                                       "false), nb_delete()",
    "DO block": "DO $$ BEGIN DELETE FROM metrics; END $$",
    "a procedure that commits": "CALL nb_commit()",
    "COPY TO PROGRAM": "COPY (SELECT 1) TO PROGRAM 'touch {dir}/program'",
    "COPY to a server file": "COPY runs TO '{dir}/runs.csv'",
    "COPY to the client": "COPY runs TO STDOUT",
    "lo_import a server file": "SELECT lo_import('/etc/hostname')",
    "terminate a backend": "SELECT pg_terminate_backend({pid})",
    "a replication slot": "SELECT pg_create_physical_replication_slot('nb_slot')",
    "temp table": "CREATE TEMP TABLE t AS SELECT * FROM runs",
    "row locks": "SELECT * FROM runs FOR UPDATE",
    "VACUUM": "VACUUM runs",
    "CREATE DATABASE": "CREATE DATABASE nb_evil",
}
# Allowed, but nothing of them outlives the command: the transaction is rolled back and the
# connection closed.
HARMLESS = {"a large object": "SELECT lo_create(0)", "an advisory lock": "SELECT pg_advisory_lock(7)",
            "NOTIFY": "NOTIFY nb_channel"}


@pytest.mark.parametrize("user", ["admin (superuser)", "owner"])
@pytest.mark.parametrize("attack", [*ATTACKS, *HARMLESS])
def test_query_changes_nothing_whatever_the_sql_says(attack_db, attack, user):
    name, owner, folder = attack_db
    url = pg.url_of(name, None if user.startswith("admin") else owner)
    # Another session: a backend for pg_terminate_backend to aim at, and a NOTIFY listener.
    with pg.connect(database=name) as victim:
        victim.execute("LISTEN nb_channel")
        before = pg.dump(name)
        statement = {**ATTACKS, **HARMLESS}[attack].format(dir=folder, pid=victim.info.backend_pid)
        rc, out, err = db_cli("query", "--db", url, statement)
        assert victim.execute("SELECT 1").fetchone() == (1,)
        if attack == "NOTIFY":
            assert list(victim.notifies(timeout=0.2)) == []
    assert pg.dump(name) == before
    assert list(folder.iterdir()) == []
    assert pg.rows(name, "SELECT 1 FROM pg_database WHERE datname = 'nb_evil' UNION ALL "
                         "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'nb_slot'") == []
    if attack in HARMLESS:
        assert (rc, err) == (0, "")
        return
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert READ_ONLY in err, err


# --- Stale runs and resume ----------------------------------------------------------------------

def test_next_sweep_marks_a_killed_run_failed_and_skips_the_completed(sweep, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    with pg.database(template=sweep.database) as name:
        (stale,) = pg.rows(name, """
            INSERT INTO runs (status, task, dataset, model, norm, bs, lr, seed, epochs, epochs_done,
                              config, config_hash, started_at, heartbeat_at, host, pid, device,
                              torch_version, code_version, uid)
            SELECT 'running', task, dataset, model, norm, bs, lr, seed, epochs, 0, config,
                   config_hash, now() - interval '1 hour', now() - interval '1 hour', %s, %s,
                   device, torch_version, code_version, md5(random()::text)
            FROM runs WHERE norm = 'bn' RETURNING id""", (host, dead.pid))
        proc = run_bench(tmp_path, *SWEEP, f"db.url={pg.url_of(name)}", check_rc=0)
        assert "2 jobs: 0 completed, 0 diverged, 0 failed, 2 skipped" in proc.stdout + proc.stderr
        assert pg.rows(name, "SELECT status, error FROM runs WHERE id = %s", stale) == [
            ("failed", f"process {dead.pid} on {host} ended without finishing the run (killed?)")]
        assert pg.rows(name, "SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY 1") == [
            ("completed", 2), ("failed", 1)]


# --- Bad URLs: one line naming the URL (no password), nothing written ---------------------------

def bad_urls() -> dict[str, tuple[str, str]]:
    admin = make_url(pg.ADMIN_URL)
    missing = f"normbench_test_missing_{secrets.token_hex(4)}"
    return {
        "refused port": ("postgresql://postgres@127.0.0.1:1/x", "Connection refused"),
        "no such database": (
            f"postgresql://postgres@{admin.host}:{admin.port or 5432}/{missing}",
            f'database "{missing}" does not exist (create it with `createdb -h {admin.host} '
            f'-p {admin.port or 5432} -U postgres {missing}`)'),
        "driver not installed": ("postgresql+pg8000://postgres@127.0.0.1/x",
                                 "database driver not installed: pg8000"),
        "psycopg2 as given": ("postgresql+psycopg2://postgres@127.0.0.1/x",
                              "database driver not installed: psycopg2"),
    }


@pytest.mark.parametrize("case", ["refused port", "no such database", "driver not installed",
                                  "psycopg2 as given"])
def test_an_unusable_url_is_one_line_for_every_command(case, tmp_path):
    url, message = bad_urls()[case]
    if case == "no such database":
        pg.require_server()
    proc = run_bench(tmp_path, "-m", "epochs=1", "threads=1", f"db.url={url}")
    assert proc.returncode == 2
    assert_user_error(proc, f"cannot open results database '{url}': ")
    assert message in proc.stderr and not (tmp_path / "multirun").exists()
    # The readers may take a password in the URL (they record nothing), and never show it.
    with_password = url.replace("postgres@", "postgres:hunter2@")
    shown = url.replace("postgres@", "postgres:***@")
    rc, out, err = db_cli("runs", "--db", with_password)
    assert (rc, out) == (1, "") and err.startswith(f"error: cannot open results database '{shown}'")
    assert message in err and err.count("\n") == 1 and "hunter2" not in err
    rc, err = report_cli("--db", with_password, "--out", str(tmp_path / "report"))
    assert rc == 1 and err.startswith(f"error: cannot open results database '{shown}'")
    assert message in err and err.count("\n") == 1 and "hunter2" not in err
    assert not (tmp_path / "report").exists()


# --- A password in db.url is refused before anything is written ---------------------------------

@pytest.mark.parametrize("args", [
    ["db.url=postgresql://nb:{secret}@127.0.0.1/x"],
    ["-m", "norm=bn,gn", "db.url=sqlite:///a.db,postgresql://nb:{secret}@127.0.0.1/x"],
    ["db={{url:'postgresql://nb:{secret}@127.0.0.1/x'}}"],
    ["--cfg", "job", "db.url=postgresql://nb:{secret}@127.0.0.1/x"],
], ids=["run", "sweep", "db node", "--cfg"])
def test_a_password_on_the_command_line_is_refused(args, tmp_path):
    proc = run_main(tmp_path, *(a.format(secret=SECRET) for a in args), "dataset=digits")
    assert proc.returncode == 2
    assert_user_error(proc, "db.url='postgresql://nb:***@127.0.0.1/x' contains a password "
                            "(allowed: a URL without one; put the password in ~/.pgpass or PGPASSWORD")
    assert SECRET not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", [[], ["-m"]], ids=["run", "sweep"])
def test_a_password_from_a_config_file_is_refused_and_hydra_files_removed(mode, tmp_path):
    conf, cwd = tmp_path / "conf", tmp_path / "work"
    (conf / "db").mkdir(parents=True)
    cwd.mkdir()
    (conf / "db" / "shared.yaml").write_text(f"url: postgresql://nb:{SECRET}@127.0.0.1/x\n")
    proc = run_main(cwd, *mode, f"hydra.searchpath=[file://{conf}]", "+db=shared",
                    "dataset=digits", "epochs=1")
    assert proc.returncode == 2, proc.stderr
    assert_user_error(proc, "db.url='postgresql://nb:***@127.0.0.1/x' contains a password")
    assert SECRET not in proc.stdout + proc.stderr
    assert list(cwd.iterdir()) == []  # Hydra's .hydra/config.yaml held it: removed
