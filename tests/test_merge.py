"""Per-job SQLite shards and `python -m db merge`, checked against the shards read with sqlite3
(and a PostgreSQL target read with psycopg), not with our ORM; and the writers benchmark."""

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pg
import pytest
from conftest import compose_config, run_bench

from db import ResultsDB
from db.cli import main

RUN = dict(task="classify", dataset="digits", model="convnet", norm="bn", bs=8, lr=1e-3, seed=0,
           epochs=3, config={"optim": {"name": "adam"}})
LINE = re.compile(r"(shard .+|total of \d+ shards into .+): (\d+) runs added, (\d+) updated, "
                  r"(\d+) metric rows added")


def sql(path, query, *args):
    # Closed on return: an open connection keeps -wal and -shm beside the file.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, args).fetchall()


IDENTITY = "COALESCE(r.uid, r.host || ' ' || r.pid || ' ' || r.started_at || ' ' || r.config_hash)"


def content(path) -> dict:
    """Everything a merge copies, keyed by a run's identity (its uid, or else host, pid,
    started_at and config_hash) instead of its id: every runs column but id, every metric value
    and artifact path."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        runs = {r[0]: {k: r[k] for k in r.keys()[1:] if k != "id"}
                for r in conn.execute(f"SELECT {IDENTITY}, * FROM runs AS r")}
        metrics = {tuple(r[:4]): r[4] for r in conn.execute(
            f"SELECT {IDENTITY}, m.epoch, m.split, m.name, m.value FROM metrics m "
            "JOIN runs r ON r.id = m.run_id")}
        artifacts = {tuple(r[:2]): r[2] for r in conn.execute(
            f"SELECT {IDENTITY}, a.kind, a.path FROM artifacts a JOIN runs r ON r.id = a.run_id")}
    return {"runs": runs, "metrics": metrics, "artifacts": artifacts}


def union(*contents) -> dict:
    return {k: {key: v for c in contents for key, v in c[k].items()} for k in contents[0]}


def dump(path) -> list[str]:
    """The file's tables as SQL, ids included: equal dumps mean nothing changed."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(conn.iterdump())


def merge(capsys, *argv) -> tuple[int, list[tuple], str]:
    """`python -m db merge ARGV` in this process: (exit code, the counts lines, stderr)."""
    rc = main(["merge", *map(str, argv)])
    captured = capsys.readouterr()
    lines = [LINE.fullmatch(line) for line in captured.out.splitlines()]
    assert all(lines), captured.out
    return rc, [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in lines], captured.err


def sha256(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real two-job sweep, one job per batch, each job writing its own shard by job number."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_bench(cwd, "-m", "norm=none", "bs=64,128", "epochs=1", "dataset.train_subset=256",
                     "hydra.sweeper.max_batch_size=1",
                     f"db.url=sqlite:///{cwd}/shards/job_${{hydra:job.num}}.db", check_rc=0)
    return cwd, proc


def test_a_sweep_writes_a_shard_per_job_and_they_merge_into_one(sweep, tmp_path, capsys):
    cwd, proc = sweep
    shards = [cwd / "shards" / "job_0.db", cwd / "shards" / "job_1.db"]
    assert sorted((cwd / "shards").glob("*.db")) == shards
    # Job N's run is in job_N.db: bs=64 is job 0 (its folder multirun/.../0), bs=128 job 1.
    for num, (shard, bs) in enumerate(zip(shards, (64, 128), strict=True)):
        [(status, run_bs, output_dir, url)] = sql(
            shard, "SELECT status, bs, output_dir, json_extract(config, '$.db.url') FROM runs")
        assert (status, run_bs, output_dir.rsplit("/", 1)[1], url) == (
            "completed", bs, str(num), f"sqlite:///{shard}")
    log = proc.stdout + proc.stderr
    assert f"results in sqlite:///{shards[0]}, sqlite:///{shards[1]}\n" in log
    assert f"next: python -m db merge {shards[0]} {shards[1]} --into sqlite:///results/bench.db, " \
           "then make report" in log

    target = tmp_path / "merged.db"
    rc, lines, err = merge(capsys, *shards, "--into", f"sqlite:///{target}")
    n_metrics = [sql(s, "SELECT COUNT(*) FROM metrics")[0][0] for s in shards]
    assert rc == 0 and err == "" and min(n_metrics) > 0
    assert lines == [(f"shard {shards[0]}", 1, 0, n_metrics[0]), (f"shard {shards[1]}", 1, 0, n_metrics[1]),
                     (f"total of 2 shards into sqlite:///{target}", 2, 0, sum(n_metrics))]
    assert content(target) == union(content(shards[0]), content(shards[1]))
    assert sql(target, "SELECT id FROM runs ORDER BY id") == [(1,), (2,)]  # both were id 1
    before = dump(target)
    rc, lines, _ = merge(capsys, shards[1], shards[0], "--into", f"sqlite:///{target}")
    assert rc == 0 and [counts for _, *counts in lines] == [[0, 0, 0]] * 3
    assert dump(target) == before


def test_as_launched_gives_each_job_its_own_folder_and_number():
    cfg = compose_config("db.url=sqlite:///${hydra:runtime.output_dir}/run_${hydra:job.num}.db",
                         return_hydra_config=True)
    from hydra_plugins.normbench_sweeper import as_launched

    folder = os.path.abspath(f"{cfg.hydra.sweep.dir}/3")  # Hydra's sweep.subdir is the job number
    assert as_launched(cfg, 3).db.url == f"sqlite:///{folder}/run_3.db"


def test_a_running_run_merges_as_it_is_and_a_later_merge_updates_it(tmp_path, capsys):
    shard, target, early = tmp_path / "shard.db", tmp_path / "target.db", tmp_path / "early.db"
    with ResultsDB(f"sqlite:///{shard}") as db:
        done = db.start_run(**RUN, config_hash="a")
        db.log_epoch(done, 1, {("test", "acc"): 0.5, ("train", "loss"): float("nan")})
        db.add_artifact(done, "samples", "/x/a.png")
        db.finish(done, "completed")
        running = db.start_run(**RUN, config_hash="b")
        db.log_epoch(running, 1, {("test", "acc"): 0.25, ("test", "loss"): float("inf")})
    shutil.copy(shard, early)  # a copy taken while the second run was still running
    rc, lines, _ = merge(capsys, shard, "--into", f"sqlite:///{target}")
    assert rc == 0 and lines[0] == (f"shard {shard}", 2, 0, 4)
    assert content(target) == content(shard)
    assert sql(target, "SELECT status, epochs_done FROM runs ORDER BY id") == [("completed", 1),
                                                                              ("running", 1)]

    with ResultsDB(f"sqlite:///{shard}") as db:
        for epoch in (2, 3):
            db.log_epoch(running, epoch, {("test", "acc"): epoch / 4, ("test", "loss"): 1 / epoch})
        db.add_artifact(running, "samples", "/x/b.png")
        db.finish(running, "failed", "RuntimeError: out of memory")
    rc, lines, _ = merge(capsys, shard, "--into", f"sqlite:///{target}")
    assert rc == 0 and lines[0] == (f"shard {shard}", 0, 1, 4)
    assert content(target) == content(shard)  # status, epochs_done, ended_at, error, heartbeat ...
    assert sql(target, "SELECT status, epochs_done, error FROM runs WHERE id = 2") == [
        ("failed", 3, "RuntimeError: out of memory")]
    before = dump(target)
    rc, lines, _ = merge(capsys, early, "--into", f"sqlite:///{target}")  # the stale copy: behind
    assert rc == 0 and lines[0] == (f"shard {early}", 0, 0, 0) and dump(target) == before


def test_a_later_attempt_replaces_the_metrics_of_the_earlier_one(tmp_path, capsys):
    shard, target = tmp_path / "shard.db", tmp_path / "target.db"
    with ResultsDB(f"sqlite:///{shard}") as db:
        run = db.start_run(**RUN, config_hash="a", scheduler_job_id="7")
        db.log_epoch(run, 1, {("test", "acc"): 0.5})
        db.log_epoch(run, 2, {("test", "acc"): 0.6})
    merge(capsys, shard, "--into", f"sqlite:///{target}")
    with contextlib.closing(sqlite3.connect(shard)) as conn, conn:  # as a requeued job's restart
        conn.execute("DELETE FROM metrics")
        conn.execute("UPDATE runs SET attempts = 2, epochs_done = 0")
    with ResultsDB(f"sqlite:///{shard}") as db:
        db.log_epoch(run, 1, {("test", "acc"): 0.4})  # another value at epoch 1: a new attempt
    rc, lines, _ = merge(capsys, shard, "--into", f"sqlite:///{target}")
    assert rc == 0 and lines[0] == (f"shard {shard}", 0, 1, 1)
    assert content(target) == content(shard)


def test_a_failing_shard_leaves_the_target_as_it_was(tmp_path, capsys):
    first, other, bad, target = (tmp_path / f"{n}.db" for n in ("first", "other", "bad", "target"))
    for path, hashes in ((first, "ab"), (other, "c")):
        with ResultsDB(f"sqlite:///{path}") as db:
            for h in hashes:
                db.log_epoch(db.start_run(**RUN, config_hash=h), 1, {("test", "acc"): 0.5})
    merge(capsys, first, "--into", f"sqlite:///{target}")
    shutil.copy(first, bad)
    with contextlib.closing(sqlite3.connect(bad)) as conn, conn:
        conn.execute("UPDATE runs SET uid = ? WHERE id = 1", (uuid.uuid4().hex,))  # new: copied first
        conn.execute("UPDATE metrics SET value = 0.75 WHERE run_id = 2")  # then a clash
    uid = sql(bad, "SELECT uid FROM runs WHERE id = 2")[0][0]
    rc, lines, err = merge(capsys, other, bad, "--into", f"sqlite:///{target}")
    assert rc == 1 and lines == [(f"shard {other}", 1, 0, 1)]  # the shard before it stays merged
    assert err == (f"error: shard {str(bad)!r}: run {uid} has test/acc = 0.75 at epoch 1 here but 0.5 "
                   "in the target (metrics are written once: two runs with one identity?); nothing "
                   "of this shard was merged, the shards before it were\n")
    assert content(target) == union(content(first), content(other))


def _downgrade_to_version_1(path):
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # as version 1 wrote it
        conn.execute("DROP INDEX ix_runs_uid")
        for column in ("uid", "launcher", "scheduler_job_id", "attempts", "failure", "repeat_of"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        conn.execute("DROP TABLE schema_info")
        conn.execute("DROP TABLE alembic_version")


BAD_SHARDS = {
    "missing": (lambda p: None, "shard {p!r}: no such file"),
    "text": (lambda p: p.write_text("not a database\n" * 100),
             "shard {p!r}: cannot open results database 'sqlite:///{p}': file is not a database"),
    "other_sqlite": (lambda p: sql(p, "CREATE TABLE runs_x (a)"),
                     "shard {p!r} is not a normbench database (it has no runs table)"),
    "version_1": (lambda p: (ResultsDB(f"sqlite:///{p}").close(), _downgrade_to_version_1(p)),
                  "shard {p!r} has schema version 1 and this code writes 3 (merge does not mix"),
}


@pytest.mark.parametrize("case", BAD_SHARDS)
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    good, bad, target = tmp_path / "good.db", tmp_path / "bad.db", tmp_path / "target.db"
    with ResultsDB(f"sqlite:///{good}") as db:
        db.start_run(**RUN, config_hash="a")
    make, message = BAD_SHARDS[case]
    make(bad)
    hashes = sha256(tmp_path)
    rc, lines, err = merge(capsys, good, bad, "--into", f"sqlite:///{target}")
    assert rc == 1 and lines == [] and err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(p=str(bad)) in err
    assert sha256(tmp_path) == hashes  # no target file, the shards as they were


def test_into_a_shard_itself_is_refused(tmp_path, capsys):
    shard = tmp_path / "s.db"
    ResultsDB(f"sqlite:///{shard}").close()
    hashes = sha256(tmp_path)
    spelled = f"sqlite:///{tmp_path}/../{tmp_path.name}/s.db"
    rc, _, err = merge(capsys, shard, "--into", spelled)
    assert rc == 1 and err == (f"error: --into {spelled!r} is the shard {str(shard)!r} itself "
                               "(allowed: a database that is none of the shards)\n")
    assert sha256(tmp_path) == hashes


def test_a_target_that_is_not_ours_to_write_is_refused(tmp_path, capsys):
    shard, other, newer = tmp_path / "s.db", tmp_path / "other.db", tmp_path / "newer.db"
    ResultsDB(f"sqlite:///{shard}").close()
    sql(other, "CREATE TABLE notes (a)")
    ResultsDB(f"sqlite:///{newer}").close()
    with contextlib.closing(sqlite3.connect(newer)) as conn, conn:  # as a later version wrote it
        conn.execute("UPDATE alembic_version SET version_num = '0004'")
    hashes = sha256(tmp_path)
    for target, why in ((other, "is not a normbench database (it has tables but no runs table): "
                                "merge into a normbench database or a new file"),
                        (newer, "has schema version 4, newer than this code's 3: update normbench "
                                "to merge into it")):
        rc, _, err = merge(capsys, shard, "--into", f"sqlite:///{target}")
        assert rc == 1 and err == f"error: --into 'sqlite:///{target}' {why}\n"
    assert sha256(tmp_path) == hashes


def test_a_version_1_shard_merges_after_the_upgrade_its_message_gives(tmp_path, capsys):
    shard, target = tmp_path / "old.db", tmp_path / "target.db"
    with ResultsDB(f"sqlite:///{shard}") as db:  # two runs of one process
        for h, acc in (("a", 0.5), ("b", 0.25)):
            db.log_epoch(db.start_run(**RUN, config_hash=h), 1, {("test", "acc"): acc})
    _downgrade_to_version_1(shard)
    rc, _, err = merge(capsys, shard, "--into", f"sqlite:///{target}")
    command = shlex.split(err.split("e.g. ", 1)[1])
    assert rc == 1 and command[0] == "python" and not target.exists()
    subprocess.run([sys.executable, *command[1:]], check=True)
    assert sql(shard, "SELECT uid FROM runs") == [(None,), (None,)]  # upgraded; old runs: no uid
    for added in (2, 0):  # identified by (host, pid, started_at, config_hash): copied once
        rc, lines, _ = merge(capsys, shard, "--into", f"sqlite:///{target}")
        assert rc == 0 and lines[0] == (f"shard {shard}", added, 0, added)
    assert len(content(shard)["runs"]) == 2 and content(target) == content(shard)


def test_a_shard_on_a_read_only_file_system_merges_and_is_not_changed(sweep, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a read-only bind mount in a private namespace")
    folder = tmp_path / "ro"
    shutil.copytree(sweep[0] / "shards", folder)
    hashes, target = sha256(folder), tmp_path / "target.db"
    # A mount namespace of its own: the read-only mount ends with the process.
    script = (f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && "
              f"! touch {folder}/probe 2>/dev/null && exec {sys.executable} -m db merge "
              f"{folder}/job_0.db {folder}/job_1.db --into sqlite:///{target}")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)
    if "mount" in proc.stderr and proc.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("total of 2 shards into sqlite:///")
    assert sha256(folder) == hashes  # the same files, byte for byte, and no -wal or -shm left
    assert content(target) == union(content(folder / "job_0.db"), content(folder / "job_1.db"))


def _as_stored_in_sqlite(column: str, value):
    """A PostgreSQL value as SQLite holds it: naive UTC text for times, JSON text for config."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return json.dumps(value) if column == "config" else value


def test_merge_into_postgresql_and_back_keeps_every_value(sweep, pg_url, tmp_path, capsys, monkeypatch):
    import psycopg

    shards = [sweep[0] / "shards" / "job_0.db", sweep[0] / "shards" / "job_1.db"]
    # A session zone that is not UTC (libpq reads PGTZ): times must keep their instant.
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    for added in (1, 0):
        rc, lines, _ = merge(capsys, *shards, "--into", pg_url)
        assert rc == 0 and [n for _, n, _, _ in lines] == [added, added, 2 * added]
    with psycopg.connect(pg_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        runs = {r["uid"]: {k: _as_stored_in_sqlite(k, v) for k, v in r.items() if k != "id"}
                for r in cur.execute("SELECT * FROM runs")}
        metrics = {(r["uid"], r["epoch"], r["split"], r["name"]): r["value"] for r in cur.execute(
            "SELECT r.uid, m.epoch, m.split, m.name, m.value FROM metrics m JOIN runs r ON r.id = m.run_id")}
    expected = union(content(shards[0]), content(shards[1]))
    assert runs == expected["runs"] and metrics == expected["metrics"]
    back = tmp_path / "back.db"  # PostgreSQL as a shard: what it gives back is what was put in
    rc, lines, _ = merge(capsys, pg_url, "--into", f"sqlite:///{back}")
    assert rc == 0 and lines[0][1:] == (2, 0, len(expected["metrics"]))
    assert content(back) == expected


def test_the_writers_benchmark_runs_and_counts_its_rows(tmp_path, capsys):
    from db.benchmark import main as benchmark
    from db.benchmark import mean_std

    if pg.REQUIRED:
        pg.require_server()
    url = "" if pg.server_problem() else pg.ADMIN_URL  # '': SQLite alone
    assert benchmark(["--writers", "2", "--epochs", "3", "--metrics", "2", "--repeats", "1",
                      "--pg", url, "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    kinds = ["sqlite", "postgresql"] if url else ["sqlite"]
    repeats = re.findall(r"^(\w+) +repeat 1: (\d+) rows in .* \(counted in the database: (\d+)\)$",
                         out, re.M)
    assert repeats == [(k, "12", "12") for k in kinds]  # 2 writers x 3 epochs x 2 metrics
    # The SQLite file, read with sqlite3: each writer's run has its 3 epochs of 2 metrics.
    assert sql(tmp_path / "writers_1.db", "SELECT run_id, COUNT(*), COUNT(DISTINCT epoch) "
                                          "FROM metrics GROUP BY run_id") == [(1, 6, 3), (2, 6, 3)]
    assert re.search(r"^sqlite +[\d,]+ rows/s \(n=1\)$", out, re.M)
    assert bool(re.search(r"^ratio postgresql/sqlite: \d+\.\d\d \(n=1 repeats\)$", out,
                          re.M)) == bool(url)
    assert mean_std([1000.0, 3000.0]) == "2,000 ± 1,414 rows/s (n=2)"  # sample std: sqrt(2e6)
    if url:  # the database it made is gone
        made = re.search(r"^postgresql: dropped (\w+)$", out, re.M)[1]
        assert pg.rows("postgres", "SELECT datname FROM pg_database WHERE datname = %s", (made,)) == []


def test_the_summary_of_a_sweep_with_shards_names_them_in_job_order():
    from hydra_plugins.normbench_sweeper import summary

    urls = {"sqlite:///shards/job_10.db", "sqlite:///shards/job_2.db", "sqlite:///my shards/job_3.db"}
    assert summary([], 3, urls) == [
        "sweep done, 3 jobs: 0 completed, 0 diverged, 0 failed, 0 skipped, 3 not started (the sweep "
        "stopped at a failed batch); results in sqlite:///my shards/job_3.db, "
        "sqlite:///shards/job_2.db, sqlite:///shards/job_10.db",
        "next: python -m db merge 'my shards/job_3.db' shards/job_2.db shards/job_10.db --into "
        "sqlite:///results/bench.db, then make report"]
