"""Heartbeats: a training run writes runs.heartbeat_at from a thread, within epochs too, and stops
before its final status; a 'running' run whose heartbeat is old is dead, from any host, and is
marked failed by `python -m db mark-stale` (and by the next sweep: tests/test_submitit.py)."""

import io
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import assert_user_error, compose_config, query, run_bench
from omegaconf import OmegaConf

from bench.config_hash import config_hash
from bench.heartbeat import Heartbeat
from db import ResultsDB
from db import cli as db_cli
from db.mark_stale import DEFAULT_AFTER_S

RUN = dict(task="classify", dataset="digits", model="convnet", norm="bn", bs=8, lr=0.1, seed=0,
           epochs=5, config={}, config_hash="0" * 64)


def test_the_heartbeat_thread_beats_on_time_and_never_after_its_block():
    times = []
    with Heartbeat(lambda: times.append(time.monotonic()), every_s=0.05) as hb:
        start = time.monotonic()
        time.sleep(0.5)
    ended = time.monotonic()
    time.sleep(0.2)  # a thread still running would beat 4 more times meanwhile
    assert not hb._thread.is_alive() and all(t < ended for t in times)
    assert 5 <= len(times) <= 10  # 0.5 s / 0.05 s: 9 or 10 on idle cores
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    assert min(gaps) >= 0.045 and max(gaps) < 0.2


def test_a_failing_beat_is_logged_once_and_the_block_goes_on(caplog):
    calls = []

    def beat():
        calls.append(1)
        raise OSError("database unreachable")

    with caplog.at_level(logging.WARNING, logger="bench"), Heartbeat(beat, every_s=0.02):
        time.sleep(0.2)
    assert len(calls) >= 4
    warnings = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert warnings == ["heartbeat: could not write a heartbeat (retrying every 0.02 s): "
                        "OSError: database unreachable"]


def test_a_real_run_beats_within_its_first_epoch_and_stops_before_it_ends(tmp_path):
    db = tmp_path / "bench.db"
    seen, stop = [], threading.Event()

    def watch():  # another reader of the file, as mark-stale on another host would be
        while not stop.is_set():
            try:
                seen.extend(query(db, "SELECT heartbeat_at, epochs_done, status FROM runs"))
            except Exception:  # no file or table yet
                pass
            time.sleep(0.03)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # Full digits (1,437 images) at bs=8, one thread: an epoch of about 2 s here.
        run_bench(tmp_path, "epochs=1", "bs=8", "norm=none", "threads=1",
                  "db.heartbeat.every_s=0.2", "db.heartbeat.stale_after_s=1", check_rc=0)
    finally:
        stop.set()
        watcher.join()
    (train_s,), = query(db, "SELECT value FROM metrics WHERE split = 'train' AND name = 'time_s'")
    assert train_s > 1.0  # the premise: one epoch that lasts several heartbeat periods
    in_epoch_1 = sorted({beat for beat, done, status in seen if done == 0 and status == "running"})
    assert len(in_epoch_1) >= 4, seen[-5:]  # start + beats every 0.2 s during the epoch
    stamps = [datetime.fromisoformat(b) for b in in_epoch_1]
    assert max(b - a for a, b in zip(stamps, stamps[1:], strict=False)) < timedelta(seconds=0.6)
    (beat, ended, status), = query(db, "SELECT heartbeat_at, ended_at, status FROM runs")
    assert status == "completed" and beat <= ended
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat of run id")]


def _rows(path):
    return {i: (s, e) for i, s, e in query(path, "SELECT id, status, error FROM runs")}


def test_mark_stale_marks_silent_runs_of_any_host_and_leaves_live_ones(tmp_path):
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    now = datetime.now(UTC).replace(microsecond=0)
    with ResultsDB(url) as db:
        ids = [db.start_run(**RUN) for _ in range(4)]
        db.finish(ids[3], "completed")
    old, recent = now - timedelta(seconds=400), now - timedelta(seconds=10)
    for run_id, host, beat in [(ids[0], "node-3", old), (ids[1], "node-4", recent),
                               (ids[2], "node-5", old), (ids[3], "node-6", old)]:
        query(path, "UPDATE runs SET host = ?, pid = 77, heartbeat_at = ? WHERE id = ?", host,
              beat.strftime("%Y-%m-%d %H:%M:%S.%f"), run_id)
    out = io.StringIO()
    assert db_cli.main(["mark-stale", "--db", url, "--after", "300"], out=out) == 0
    rows = _rows(path)
    when = f"{old:%Y-%m-%d %H:%M:%S} UTC"
    for run_id, host in [(ids[0], "node-3"), (ids[2], "node-5")]:
        status, error = rows[run_id]
        assert status == "failed"
        assert error.startswith(f"no heartbeat since {when} (host {host}, pid 77): marked failed by "
                                f"python -m db mark-stale on {socket.gethostname()} at ")
        marked_at = datetime.strptime(error.rsplit(" at ", 1)[1], "%Y-%m-%d %H:%M:%S UTC")
        assert abs(marked_at.replace(tzinfo=UTC) - now) < timedelta(seconds=30)
    assert rows[ids[1]] == ("running", None)  # 10 s old: alive
    assert rows[ids[3]] == ("completed", None)  # finished runs are never touched
    assert out.getvalue().splitlines()[-1] == "marked 2 runs failed"
    out = io.StringIO()
    assert db_cli.main(["mark-stale", "--db", url], out=out) == 0  # the default: 300 s
    assert out.getvalue().startswith("no stale runs")


def test_a_beat_never_revives_a_finished_run(tmp_path):
    with ResultsDB(f"sqlite:///{tmp_path / 'r.db'}") as db:
        run_id = db.start_run(**RUN)
        assert db.beat(run_id)
        db.finish(run_id, "completed")
        (before,), = query(tmp_path / "r.db", "SELECT heartbeat_at FROM runs")
        assert not db.beat(run_id)
    assert query(tmp_path / "r.db", "SELECT heartbeat_at, status FROM runs") == [(before, "completed")]


def test_mark_stale_on_a_missing_database_creates_nothing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert db_cli.main(["mark-stale", "--db", url]) == 1
    assert capsys.readouterr().err.startswith("error: no results database at ")
    assert not os.listdir(tmp_path)


def test_the_heartbeat_settings_are_bookkeeping_with_the_documented_defaults():
    cfg = compose_config()
    assert (cfg.db.heartbeat.every_s, cfg.db.heartbeat.stale_after_s) == (60, DEFAULT_AFTER_S)
    other = compose_config("db.heartbeat.every_s=1", "db.heartbeat.stale_after_s=7")
    assert config_hash(OmegaConf.to_container(cfg)) == config_hash(OmegaConf.to_container(other))


@pytest.mark.parametrize("setting, message", [
    ("db.heartbeat.every_s=0", "db.heartbeat.every_s=0 is not a positive number (allowed: > 0)"),
    ("db.heartbeat.every_s=abc", "db.heartbeat.every_s='abc' is not a positive number"),
    ("db.heartbeat.stale_after_s=30", "db.heartbeat.stale_after_s=30 is not longer than "
     "db.heartbeat.every_s=60 (allowed: a number of seconds > 60; a few heartbeat periods, e.g. 300)"),
])
def test_bad_heartbeat_settings_are_one_line(tmp_path, setting, message):
    proc = run_bench(tmp_path, "epochs=1", setting)
    assert proc.returncode == 2
    assert_user_error(proc, message)
    assert not (tmp_path / "bench.db").exists()


def test_mark_stale_refuses_a_bad_after(capsys):
    with pytest.raises(SystemExit) as e:
        db_cli.main(["mark-stale", "--after", "-5"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: argument --after: '-5' is not allowed (allowed: a whole number of seconds >= 1)")


def test_silent_runs_and_a_requeued_run_on_postgresql(pg_url):
    """The same writes on PostgreSQL (timestamptz, READ COMMITTED); read back with psycopg."""
    import pg

    old = datetime.now(UTC) - timedelta(seconds=400)
    with ResultsDB(pg_url) as db:
        silent, live = [db.start_run(**RUN, scheduler_job_id="77_1", output_dir="/m/0") for _ in (1, 2)]
        with pg.connect(pg_url) as conn:
            conn.execute("UPDATE runs SET host = 'node-9', heartbeat_at = %s WHERE id = %s", (old, silent))
            db.log_epoch(silent, 1, {("train", "loss"): 0.5})
            conn.execute("UPDATE runs SET heartbeat_at = %s WHERE id = %s", (old, silent))
            assert [i for i, _ in db.mark_silent_runs(300, "a test")] == [silent]
            # The requeued attempt of job 77_1 reopens its unfinished row (`db.claims.claim`), and
            # starting over removes the earlier attempt's metrics (`ResultsDB.rewind`).
            def requeue(folder):
                return db.claim(db.new_row(**RUN, threads=3, scheduler_job_id="77_1", output_dir=folder),
                                resume=True, stale_after_s=300, scheduler_job_id="77_1",
                                output_dir=folder)

            db.finish(live, "completed")
            # another job's folder: not this job's requeue, so the completed run decides
            assert (requeue("/m/1").action, requeue("/m/1").run_id) == ("skip", live)
            got = requeue("/m/0")
            assert (got.action, got.run_id, got.attempt) == ("resume", silent, 2)
            db.rewind(silent, 0)
            rows = conn.execute("SELECT status, attempts, threads, host, error, ended_at, "
                                "(SELECT COUNT(*) FROM metrics WHERE run_id = r.id) FROM runs r "
                                "WHERE id = %s", (silent,)).fetchall()
    assert rows == [("running", 2, 3, socket.gethostname(), None, None, 0)]
