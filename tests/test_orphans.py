"""No orphans: a joblib sweep's workers stop when its process dies, every run's row ends final, a
signal gives one line and no traceback, and every command gets its own output folder.

Real processes throughout (a sweep is started with Popen and signalled mid-training); what the
processes did is read back from /proc and from the database with sqlite3, not from our code."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import bench_args, bench_env, compose_config, query

# 4 jobs, 2 at a time, long enough to be mid-training when signalled (an epoch of 256 digits
# takes ~0.25 s here, so a job ~12 s).
SWEEP = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
         "dataset.train_subset=256", "threads=1"]
FINAL = {"completed", "failed", "diverged"}


def start(cwd: Path, *args) -> subprocess.Popen:
    # Its own session: a signal meant for the sweep must not reach pytest's process group.
    return subprocess.Popen([sys.executable, "-m", "bench.run", *bench_args(cwd, args, "bench.db")],
                            cwd=cwd, env={**os.environ, **bench_env(cwd)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def training(cwd: Path, proc: subprocess.Popen, n: int, timeout: float = 90) -> list[tuple]:
    """(run id, pid) of `n` runs once each has written an epoch: mid-training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (cwd / "bench.db").exists():
            try:
                rows = query(cwd / "bench.db", "select id, pid from runs where status='running' "
                             "and epochs_done >= 1")
            except Exception:  # the schema is being created
                rows = []
            if len(rows) >= n:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"{n} runs did not start training within {timeout} s")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (proc(5): the state after the command's name)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pids, seconds: float) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in pids):
        assert time.monotonic() - t0 < seconds, [p for p in pids if alive(p)]
        time.sleep(0.05)
    return time.monotonic() - t0


def no_traceback(*texts):
    assert not any("Traceback" in t for t in texts), texts


@pytest.mark.parametrize("sig", [
    signal.SIGKILL,
    pytest.param(signal.SIGTERM, marks=pytest.mark.slow),  # 13 s; SIGKILL covers the watch
])
def test_killing_the_sweeps_process_stops_its_workers_and_closes_their_rows(tmp_path, sig):
    proc = start(tmp_path, *SWEEP, "epochs=50")
    runs = training(tmp_path, proc, 2)
    workers = [pid for _, pid in runs]
    assert all(alive(p) for p in workers) and proc.pid not in workers  # the jobs run in workers
    os.kill(proc.pid, sig)
    gone_within(workers, 5.0)  # before: they trained on, and ran the queued jobs, for 110 s
    out, err = proc.communicate(timeout=30)
    rows = query(tmp_path / "bench.db", "select id, status, error, epochs_done, epochs from runs")
    assert len(rows) == 2, rows  # the queued jobs never started
    assert all(status == "failed" and done < epochs for _, status, _, done, epochs in rows), rows
    died = "died before this run finished" if sig == signal.SIGKILL else "was stopped by SIGTERM"
    assert all(f"the sweep (pid {proc.pid})" in error or f"process (pid {proc.pid})" in error
               for _, _, error, _, _ in rows), rows
    assert all(died in error for _, _, error, _, _ in rows), rows
    # a kill, so a rerun resumes them (runs.failure, db/schema.py), not an error of their code
    assert query(tmp_path / "bench.db", "select distinct failure from runs") == [("killed",)]
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        lines = [line for line in (out + err).splitlines() if "sweep stopped by SIGTERM" in line]
        assert len(lines) == 1, out[-2000:] + err[-2000:]
        no_traceback(out, err)


@pytest.mark.parametrize("args, sig, line", [
    ((), signal.SIGTERM, "stopped by SIGTERM (a started run is closed as 'failed')"),
    pytest.param(("-m", "seed=0,1"), signal.SIGINT, "sweep stopped by Ctrl-C after 0 of 2 jobs",
                 marks=pytest.mark.slow),  # 6 s; the basic launcher's sweep
])
def test_a_signal_to_a_single_process_run_is_one_line_and_closes_its_row(tmp_path, args, sig,
                                                                        line):
    proc = start(tmp_path, *args, "epochs=50", "dataset.train_subset=256", "threads=1")
    (run_id, pid), = training(tmp_path, proc, 1)
    assert pid == proc.pid
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=30)
    no_traceback(out, err)
    assert proc.returncode == 128 + sig
    assert len([t for t in (out + err).splitlines() if line in t]) == 1, out[-2000:] + err[-2000:]
    (status, error, ended, done), = query(tmp_path / "bench.db",
                                          "select status, error, ended_at, epochs_done from runs")
    expected = "terminated by SIGTERM" if sig == signal.SIGTERM else "KeyboardInterrupt"
    assert status == "failed" and expected in error and ended is not None
    # the epochs it finished keep their metrics
    n = query(tmp_path / "bench.db", "select count(distinct epoch) from metrics where epoch >= 1")[0][0]
    assert n >= done >= 1


@pytest.mark.slow  # 45 s: a whole sweep
def test_sigterm_to_one_worker_fails_its_job_and_the_sweep_goes_on(tmp_path):
    proc = start(tmp_path, *SWEEP, "epochs=20")
    (run_id, pid), *_ = training(tmp_path, proc, 2)
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    no_traceback(out, err)
    assert proc.returncode == 1
    rows = dict(query(tmp_path / "bench.db", "select id, status from runs"))
    assert rows.pop(run_id) == "failed" and sorted(rows.values()) == ["completed"] * 3, rows
    (error,), = query(tmp_path / "bench.db", "select error from runs where id=?", run_id)
    assert "terminated by SIGTERM" in error
    assert re.search(r"sweep done, 4 jobs: 3 completed, 0 diverged, 1 failed \(job #\d\)", out + err)
    assert len(re.findall(r"job #\d failed: terminated by SIGTERM", out + err)) == 1


@pytest.mark.slow  # 15 s
def test_a_worker_killed_ends_the_sweep_in_one_line_with_every_row_final(tmp_path):
    proc = start(tmp_path, *SWEEP, "epochs=50")
    runs = training(tmp_path, proc, 2)
    os.kill(runs[0][1], signal.SIGKILL)  # joblib then kills the other worker itself
    out, err = proc.communicate(timeout=60)
    no_traceback(out, err)
    assert proc.returncode == 1
    assert len(re.findall(r"sweep stopped: a worker process died", out + err)) == 1
    rows = query(tmp_path / "bench.db", "select id, status, error, pid from runs")
    assert {status for _, status, _, _ in rows} == {"failed"}, rows
    assert all(f"process {pid} on " in error for _, _, error, pid in rows), rows
    assert query(tmp_path / "bench.db", "select distinct failure from runs") == [("killed",)]
    gone_within([pid for _, _, _, pid in rows], 1.0)


@pytest.mark.slow  # 24 s
def test_everything_sigkilled_leaves_rows_the_next_sweep_marks(tmp_path):
    proc = start(tmp_path, *SWEEP, "epochs=50")
    runs = training(tmp_path, proc, 2)
    for pid in [proc.pid] + [pid for _, pid in runs]:  # as the OOM killer or a node's power loss
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    gone_within([pid for _, pid in runs], 5.0)
    assert {s for s, in query(tmp_path / "bench.db", "select status from runs")} == {"running"}
    nxt = start(tmp_path, "-m", "seed=9", "epochs=1", "dataset.train_subset=128")
    out, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err[-2000:]
    rows = query(tmp_path / "bench.db", "select id, status, error from runs where seed != 9")
    assert all(status == "failed" and "ended without finishing the run" in error
               for _, status, error in rows), rows


def test_commands_in_the_same_second_resolve_their_own_folders():
    """The folders of two commands composed within one second (here in one process, so only the
    random part tells them apart; the slow test below starts two real sweeps)."""
    from omegaconf import OmegaConf

    for _ in range(5):  # until both fall within one second (two composes take ~0.2 s)
        t0 = time.time()
        dirs = [OmegaConf.select(cfg, f"hydra.{key}.dir")
                for cfg in [compose_config(return_hydra_config=True) for _ in range(2)]
                for key in ("sweep", "run")]
        if int(time.time()) == int(t0):
            break
    assert len(set(dirs)) == 4 and dirs[0] != dirs[2], dirs
    for d, top in zip(dirs, ["multirun", "outputs"] * 2, strict=True):
        assert re.fullmatch(rf"{top}/\d{{4}}-\d\d-\d\d/\d\d-\d\d-\d\d-{os.getpid()}-[0-9a-f]{{4}}",
                            d), d
    assert dirs[0].split("/")[-1] == dirs[1].split("/")[-1]  # one id per command, in every key


@pytest.mark.slow  # 17 s: two real sweeps
def test_two_sweeps_started_together_get_their_own_folders(tmp_path):
    dbs = ("a.db", "b.db")
    procs = [subprocess.Popen([sys.executable, "-m", "bench.run",
                               *bench_args(tmp_path, ["-m", "epochs=1", "dataset.train_subset=128",
                                                      "bs=64", f"seed={i}"], db)],
                              cwd=tmp_path, env={**os.environ, **bench_env(tmp_path)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, db in enumerate(dbs)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.communicate()
    folders = sorted(tmp_path.glob("multirun/*/*"))
    assert len(folders) == 2, folders
    for db in dbs:
        (run_id, out_dir, pid), = query(tmp_path / db, "select id, output_dir, pid from runs")
        job = Path(out_dir)
        # multirun/DATE/TIME-PID-RANDOM/<job number>, PID the sweep's (the basic launcher runs the
        # job in the sweep's own process, so the row's pid is the sweep's)
        assert job.name == "0" and job.parent in folders
        assert re.fullmatch(rf"\d\d-\d\d-\d\d-{pid}-[0-9a-f]{{4}}", job.parent.name), job
        (log,) = job.glob("*.log")
        text = log.read_text()
        assert f"= run id {run_id}: " in text and f"seed={int(db == 'b.db')} " in text
        assert f"seed={int(db == 'a.db')} " not in text  # the other sweep's lines are elsewhere
