"""One live run per config: what a job does with each earlier row of its config (db/claims.py),
and two sweeps started together ending with one completed run per config, on SQLite and
PostgreSQL."""

import subprocess
import sys

import pytest
from conftest import query, run_bench, start_bench

from db import ResultsDB

ROW = dict(task="classify", dataset="digits", model="convnet", norm="bn", bs=8, lr=1e-3, seed=0,
           epochs=2, config={}, config_hash="ab" * 32, device="cpu", threads=1)


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def claim(db, **how):
    return db.claim(db.new_row(**ROW), **{"resume": True, "stale_after_s": 300, **how})


@pytest.mark.parametrize(("status", "failure", "set_sql", "how", "action"), [
    ("failed", "error", "", {}, "new"),                    # its own exception: would fail again
    ("failed", "error", "", {"resume_failed": True}, "resume"),
    ("failed", "sigterm", "", {}, "resume"),
    ("failed", "interrupt", "", {}, "resume"),
    ("failed", "requeued", "", {}, "resume"),
    ("failed", "killed", "", {}, "resume"),
    ("running", None, "", {}, "skip"),                     # this process: alive
    ("running", None, "pid = {dead}", {}, "resume"),      # its process is gone
    ("running", None, "host = 'elsewhere', heartbeat_at = '2000-01-01 00:00:00'", {}, "resume"),
    ("running", None, "host = 'elsewhere'", {}, "skip"),  # another host, fresh heartbeat
    ("completed", None, "", {}, "skip"),
    ("diverged", None, "", {}, "skip"),
    ("diverged", None, "", {"retry_diverged": True}, "new"),
    ("completed", None, "", {"resume": False}, "new"),
])
def test_what_a_job_does_with_an_earlier_run_of_its_config(tmp_path, status, failure, set_sql,
                                                           how, action):
    path = tmp_path / "c.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        first = db.start_run(**ROW)
        if status != "running":
            db.finish(first, status, failure=failure)
        if set_sql:
            query(path, f"update runs set {set_sql.format(dead=dead_pid())} where id = 1")
        got = claim(db, **how)
    assert got.action == action
    rows = query(path, "select id, status, attempts, repeat_of, pid from runs order by id")
    if action == "resume":
        assert got.run_id == first and got.attempt == 2
        assert rows == [(1, "running", 2, None, rows[0][4])] and rows[0][4] != dead_pid()
    elif action == "new":
        assert got.run_id == 2 and rows[1][1] == "running"
        # resume=false trains a config again on purpose: recorded, so it is no silent duplicate
        assert rows[1][3] == (first if how.get("resume") is False else None)
    else:
        assert got.run_id == first and len(rows) == 1
        if status == "running":
            assert got.status == "running elsewhere" and f"run id {first} on host" in got.why


def race(url: str, jobs: int = 4) -> list:
    """`jobs` threads, each with its own engine (connection), claim one config at once."""
    import threading

    dbs = [ResultsDB(url) for _ in range(jobs)]
    start, got = threading.Barrier(jobs), []

    def job(db):
        start.wait()
        got.append(claim(db))
    threads = [threading.Thread(target=job, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for db in dbs:
        db.close()
    return sorted(g.action for g in got)


def test_jobs_claiming_one_config_at_once_start_one_run_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert race(url) == ["new", "skip", "skip", "skip"]
    assert query(tmp_path / "c.db", "select count(*) from runs") == [(1,)]


def test_jobs_claiming_one_config_at_once_start_one_run_on_postgresql(pg_url):
    """READ COMMITTED alone lets every job see no row and insert its own; the advisory lock on
    the hash makes the later ones see the first's row."""
    import pg

    assert race(pg_url) == ["new", "skip", "skip", "skip"]
    with pg.connect(pg_url) as conn:
        assert conn.execute("select count(*) from runs").fetchone() == (1,)


SWEEP = ["-m", "norm=bn,gn,none", "epochs=2", "bs=32", "dataset.train_subset=256", "threads=1",
         "model=convnet"]


def two_sweeps(tmp_path, *args):
    procs = [start_bench(tmp_path, *SWEEP, *args) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, "".join(f.read_text() for f in tmp_path.glob("bench-*.log"))
    return "".join(f.read_text() for f in tmp_path.glob("bench-*.log"))


@pytest.mark.slow  # two processes: ~12 s; the claim's atomicity is the race tests' above
def test_two_sweeps_started_together_train_each_config_once_on_sqlite(tmp_path):
    logs = two_sweeps(tmp_path)
    db = tmp_path / "bench.db"
    assert query(db, "select norm, status, count(*) from runs group by norm order by norm") == [
        ("bn", "completed", 1), ("gn", "completed", 1), ("none", "completed", 1)]
    # Each of the 3 configs: trained by one sweep, skipped by the other (done, or running there).
    assert logs.count("run id") and logs.count("skipped: ") == 3
    assert query(db, "pragma integrity_check") == [("ok",)]


@pytest.mark.slow
def test_two_sweeps_started_together_train_each_config_once_on_postgresql(tmp_path, pg_url):
    import pg

    two_sweeps(tmp_path, f"db.url={pg_url}")
    with pg.connect(pg_url) as conn:
        rows = conn.execute("select norm, status, count(*) from runs group by norm, status "
                            "order by norm").fetchall()
    assert rows == [("bn", "completed", 1), ("gn", "completed", 1), ("none", "completed", 1)]


def test_a_diverged_config_is_a_result_a_rerun_skips_unless_asked(tmp_path):
    args = ["epochs=1", "bs=32", "dataset.train_subset=128", "threads=1", "diverge.max_loss=1e-3"]
    run_bench(tmp_path, *args, check_rc=0)
    out = run_bench(tmp_path, *args, check_rc=0)
    assert "diverged with this config" in out.stderr + out.stdout
    db = tmp_path / "bench.db"
    assert query(db, "select status from runs") == [("diverged",)]
    run_bench(tmp_path, *args, "checkpoint.retry_diverged=true", check_rc=0)
    assert query(db, "select status from runs order by id") == [("diverged",), ("diverged",)]


def test_one_run_per_config_is_averaged_duplicates_and_repeats_are_marked():
    import pandas as pd

    from analysis import repeats

    runs = pd.DataFrame({"config_hash": ["a", "a", "a", "b", "c", "c"], "seed": 0,
                         "repeat_of": [None, None, 1, None, None, 5],
                         "status": ["completed", "completed", "completed", "completed",
                                    "failed", "completed"]}, index=[1, 2, 3, 4, 5, 6])
    frame = runs[["status"]].assign(error=None)
    marked, note = repeats.mark(frame, runs)
    # c: its first run failed, so its repeat (6) is the one completed run of c: averaged
    assert list(marked["status"]) == ["completed", "duplicate", "repeat", "completed", "failed",
                                      "completed"]
    assert marked.loc[3, "error"].startswith("the same config as run id 1")
    assert note.startswith("One completed run per config is averaged: 1 duplicate and 1 repeat")
    marked, _ = repeats.mark(frame, runs, repeats=True)
    assert list(marked["status"])[:3] == ["completed", "duplicate", "completed"]


@pytest.mark.slow  # a whole report (figures): ~6 s
def test_the_report_averages_one_run_per_config_and_repeats_only_when_asked(tmp_path):
    """Runs written directly: config A has an accidental duplicate (two rows, as two sweeps on
    the code before claims left) and a deliberate repeat (repeat_of); B one run. The report's
    n per cell counts configs, not rows, and --repeats adds the repeat."""
    import csv

    from analysis import report

    path = tmp_path / "r.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        def run(seed, acc, repeat_of=None):
            row = {**ROW, "seed": seed, "config": {"seed": seed}, "config_hash": f"{seed:064d}"}
            run_id = db.start_run(**row)
            db.log_epoch(run_id, 1, {("test", "acc"): acc})
            db.finish(run_id, "completed")
            if repeat_of:
                query(path, "update runs set repeat_of = ? where id = ?", repeat_of, run_id)
        run(0, 0.5), run(0, 0.5), run(0, 0.9, repeat_of=1), run(1, 0.7)

    def acc(*flags):
        out = tmp_path / f"out{len(flags)}"
        assert report.main(["--db", f"sqlite:///{path}", "--out", str(out), *flags]) == 0
        with open(out / "tables" / "final_metrics.csv") as f:
            (row,) = [r for r in csv.DictReader(f) if r["split"] == "test" and r["name"] == "acc"]
        return float(row["mean"]), int(float(row["n"])), (out / "index.html").read_text()

    mean, n, html = acc()
    assert (n, mean) == (2, pytest.approx((0.5 + 0.7) / 2))  # runs 1 and 4
    assert "1 duplicate and 1 repeat" in html and "--repeats averages" in html
    mean, n, html = acc("--repeats")
    assert (n, mean) == (3, pytest.approx((0.5 + 0.9 + 0.7) / 3))


def test_a_sweep_skips_a_config_live_elsewhere_and_says_so(tmp_path):
    """A live claim (fresh heartbeat, its process alive: this one) on the config of job bn:
    the sweep's bn job skips it in one line and the summary counts it on its own."""
    import socket

    from conftest import compose_config
    from omegaconf import OmegaConf

    from bench.config_hash import config_hash

    args = ["epochs=1", "bs=32", "dataset.train_subset=128", "threads=1", "dataset=digits"]
    cfg = OmegaConf.to_container(compose_config(*args, "norm=bn"), resolve=True)
    with ResultsDB(f"sqlite:///{tmp_path / 'bench.db'}") as db:
        live = db.start_run(**{**ROW, "config_hash": config_hash(cfg)})
    out = run_bench(tmp_path, "-m", "norm=bn,gn", *args, check_rc=0)
    text = out.stdout + out.stderr
    assert (f"skipped: running elsewhere: run id {live} on host {socket.gethostname()}"
            in text)
    assert ("1 completed, 0 diverged, 0 failed, 0 skipped, 1 skipped (running elsewhere: run id "
            f"{live})") in text
    assert query(tmp_path / "bench.db", "select norm, status from runs order by id") == [
        ("bn", "running"), ("gn", "completed")]
