"""Launchers beyond one process: submitit_local for real (a process per job, a requeue by
submitit's own signal handler), submitit_slurm as far as it goes without a cluster (its config
with our sweeper, the job ids SLURM's variables give), and threads=auto against the cores a
process may use and the jobs that share them."""

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import pytest
from conftest import assert_user_error, bench_args, bench_env, compose_config, query, run_bench

from bench.launchers import jobs_at_once, scheduler_job_id, usable_cores
from db import ResultsDB

TINY = ["dataset=digits", "dataset.train_subset=256", "threads=auto"]
AFFINITY = len(os.sched_getaffinity(0))  # the reference: what `taskset`/cgroups allow this process


def popen_bench(cwd: Path, *args, prefix=()) -> subprocess.Popen:
    """`python -m bench.run ARGS` (with the tests' defaults) started in a real process."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "bench.run", *bench_args(cwd, args, "bench.db")],
                            cwd=cwd, env={**os.environ, **bench_env(cwd)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(db: Path, sql: str, timeout=120):
    """The first row of `sql` once there is one (the file may not exist yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if rows := query(db, sql):
                return rows[0]
        except Exception:  # no file or no table yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"nothing matched {sql!r} in {timeout} s")


def test_a_submitit_local_sweep_with_a_requeue_keeps_one_row_per_job(tmp_path):
    """Two jobs, each a process of its own started by submitit's LocalExecutor; job bn gets
    SIGUSR2 after its first epoch, as submitit's controller sends it before `timeout_min` (and
    SLURM before a time limit or a preemption): submitit requeues it, and the next attempt
    continues in the same row. A run another host left 'running' is marked by the sweep."""
    db = tmp_path / "bench.db"
    with ResultsDB(f"sqlite:///{db}") as results:  # a run a dead process on another host left
        dead = results.start_run(task="classify", dataset="digits", model="convnet", norm="bn",
                                 bs=8, lr=0.1, seed=9, epochs=5, config={}, config_hash="x" * 64)
    seen = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    query(db, "UPDATE runs SET host = 'node-17', pid = 4321, heartbeat_at = ? WHERE id = ?",
          seen.strftime("%Y-%m-%d %H:%M:%S"), dead)

    proc = popen_bench(tmp_path, "-m", "hydra/launcher=submitit_local", "norm=bn,gn", "epochs=6", *TINY)
    pid, first_start = wait_for(db, "SELECT pid, started_at FROM runs WHERE norm = 'bn' AND "
                                "seed = 0 AND epochs_done >= 1 AND status = 'running'")
    os.kill(pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]

    runs = query(db, "SELECT norm, status, epochs_done, attempts, threads, launcher, scheduler_job_id, "
                 "started_at, pid, output_dir FROM runs WHERE id != ? ORDER BY norm", dead)
    assert [r[:4] for r in runs] == [("bn", "completed", 6, 2), ("gn", "completed", 6, 1)]
    # 2 jobs at once on this process's cores (2 here): each gets half.
    assert [r[4] for r in runs] == [max(1, AFFINITY // 2)] * 2
    assert {r[5] for r in runs} == {"submitit_local"}
    submitit_dir = Path(runs[0][9]).parent / ".submitit"
    job_ids = {p.name for p in submitit_dir.iterdir() if p.name != "%j"}
    assert {r[6] for r in runs} == job_ids  # submitit's own job ids, one folder each
    bn = runs[0]
    assert bn[7] > first_start and bn[8] != pid  # a new attempt: a new process, started later
    # Attempt 2 continued from attempt 1's checkpoint, as a rerun does (runners.resume), and its
    # log says so; each epoch's metrics are in the database once.
    logs = [p.read_text(errors="replace") for p in (tmp_path / "multirun").rglob("*")
            if p.is_file() and p.suffix in (".log", ".out", ".err")]
    counts = [t.count("training continues after epoch") for t in logs]  # run.log and submitit's
    assert max(counts) == 1, logs
    per_epoch = query(db, "SELECT epoch, COUNT(*) FROM metrics m JOIN runs r ON r.id = m.run_id "
                      "WHERE r.norm = 'bn' AND r.seed = 0 GROUP BY epoch")
    gn_per_epoch = query(db, "SELECT COUNT(*) FROM metrics m JOIN runs r ON r.id = m.run_id "
                         "WHERE r.norm = 'gn' AND m.epoch = 1")[0][0]
    assert [e for e, _ in per_epoch] == [1, 2, 3, 4, 5, 6] and len({n for _, n in per_epoch}) == 1
    assert per_epoch[0][1] > gn_per_epoch  # BN also records its test_precise/test_batchstats

    # The interrupted attempt says so in one line; no traceback anywhere.
    (log,) = [p for p in submitit_dir.glob(f"{bn[6]}/*_log.out")]
    assert re.search(r"run id \d+: requeued by submitit after SIGUSR2 \(time limit or preemption\) "
                     r"with [1-5] of 6 epochs done in attempt 1;", log.read_text())
    assert "attempt 2: the scheduler requeued this job" in log.read_text()
    logs = "".join(p.read_text() for p in submitit_dir.glob("*/*_log.*"))
    assert "Traceback" not in logs + out + err
    # The sweep: launcher lines quieted, the summary, the other host's dead run marked.
    url = f"sqlite:///{db}"
    assert not re.search(r"#\d+ : ", out + err)
    assert (f"sweep done, 2 jobs: 2 completed, 0 diverged, 0 failed, 0 skipped; results in {url}"
            in out + err)
    (status, error), = query(db, "SELECT status, error FROM runs WHERE id = ?", dead)
    assert status == "failed" and error.startswith(
        f"no heartbeat since {seen:%Y-%m-%d %H:%M:%S} UTC (host node-17, pid 4321): marked failed "
        "by a sweep on ")
    # The dataset was prepared once, by the sweep: no job wrote its cache after being submitted.
    (cache,) = (tmp_path / "data" / "cache").iterdir()
    submitted = min(p.stat().st_mtime for p in submitit_dir.glob("*/*_submitted.pkl"))
    assert cache.stat().st_mtime <= submitted


@pytest.mark.parametrize("how", ["in-process", pytest.param("taskset", marks=pytest.mark.slow)])
def test_a_run_pinned_to_one_core_in_a_slurm_array_task(tmp_path, monkeypatch, how):
    """Pinned to core 0 (an affinity mask, as `taskset -c 0`, cgroups and SLURM's core binding
    set one): threads=auto is 1 whatever os.cpu_count() says; the row records SLURM's id of the
    array task. In this process (os.sched_setaffinity, what taskset calls before it starts the
    command), and as a real `taskset -c 0 python -m bench.run` (5 s more: torch's import)."""
    monkeypatch.setenv("SLURM_JOB_ID", "815")  # what SLURM sets in an sbatch array task
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "800")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    if how == "taskset":
        proc = popen_bench(tmp_path, "epochs=1", *TINY, prefix=("taskset", "-c", "0"))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    else:
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(mask)})
        try:
            run_bench(tmp_path, "epochs=1", *TINY, check_rc=0)
        finally:
            os.sched_setaffinity(0, mask)
    assert query(tmp_path / "bench.db", "SELECT threads, launcher, scheduler_job_id FROM runs") == [
        (1, "basic", "800_3")]


def test_slurm_cpus_per_task_caps_the_cores_where_the_cluster_does_not_bind_them(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert usable_cores() == AFFINITY
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cores() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(AFFINITY + 4))  # more than we may use: no effect
    assert usable_cores() == AFFINITY


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_JOB_ID": "812"}, "812"),
    ({"SLURM_JOB_ID": "815", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "3"}, "800_3"),
    ({}, None),
])
def test_the_scheduler_job_id_is_slurms_as_submitit_reads_it(monkeypatch, env, expected):
    import submitit

    for k in ("SUBMITIT_EXECUTOR", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert scheduler_job_id() == expected  # a job SLURM started without submitit (sbatch)
    if env:  # inside a submitit_slurm job: submitit's own reading is the reference
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
        assert scheduler_job_id() == submitit.JobEnvironment().job_id == expected


@pytest.mark.parametrize("n_jobs", [1, 2, 8, -1, -2])
@pytest.mark.parametrize("batch", [1, 3, 50])
def test_joblib_runs_as_many_jobs_at_once_as_joblib_says(n_jobs, batch):
    # joblib's own count of workers for n_jobs (-1: its cpu_count), capped by the jobs to run.
    cores = joblib.cpu_count()
    assert jobs_at_once("joblib", batch, cores, n_jobs) == min(joblib.effective_n_jobs(n_jobs), batch)
    assert jobs_at_once("submitit_local", batch, cores) == batch  # every job of the batch at once
    assert jobs_at_once("submitit_slurm", batch, cores) == jobs_at_once("basic", batch, cores) == 1


@pytest.mark.parametrize("max_batch_size", [None, 2, 3])
def test_a_job_counts_the_jobs_of_its_batch_as_hydra_splits_the_sweep(max_batch_size):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from bench import cli
    from bench.run import batch_jobs

    # Hydra's own split of a 5-job sweep into batches is the reference.
    sweep = OverridesParser.create().parse_overrides(["bs=1,2,3,4,5"])
    expected = [len(b) for b in BasicSweeper.split_arguments(sweep, max_batch_size) for _ in b]
    cfg, saved = compose_config(return_hydra_config=True), HydraConfig.instance().cfg
    try:
        got = []
        for num in range(5):
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.mode, cfg.hydra.job.num = RunMode.MULTIRUN, num
                cfg.hydra.job.env_set[cli.SWEEP_JOBS_KEY] = "5"
                cfg.hydra.sweeper.max_batch_size = max_batch_size
            HydraConfig.instance().set_config(cfg)
            got.append(batch_jobs())
    finally:
        HydraConfig.instance().cfg = saved
    assert got == expected


def test_submitit_slurm_composes_with_our_sweeper_and_the_readme_settings(tmp_path):
    settings = ["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                "hydra.launcher.timeout_min=240", "hydra.launcher.cpus_per_task=8",
                "hydra.launcher.array_parallelism=16"]
    cfg = compose_config("hydra/launcher=submitit_slurm", *settings, return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.normbench_sweeper.ValidatingSweeper"
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.cpus_per_task,
            launcher.array_parallelism) == ("gpu", 1, 240, 8, 16)
    # The command line accepts them (our checks of the overrides, then Hydra's composition).
    proc = run_bench(tmp_path, "--cfg", "hydra", "hydra/launcher=submitit_slurm", *settings)
    assert proc.returncode == 0 and "partition: gpu" in proc.stdout


def test_an_unknown_launcher_is_one_line_naming_the_allowed_ones(tmp_path):
    proc = run_bench(tmp_path, "-m", "hydra/launcher=nope", "epochs=1", *TINY)
    assert proc.returncode == 2
    assert_user_error(proc, "unknown hydra/launcher 'nope' (allowed: basic, joblib, submitit_local, "
                            "submitit_slurm)")


def test_a_launcher_whose_plugin_is_missing_is_one_line(tmp_path, monkeypatch):
    from bench import launchers

    monkeypatch.setitem(launchers.LAUNCHERS, "submitit_slurm",
                        ("hydra_plugins.no_such_launcher", "hydra-submitit-launcher"))
    proc = run_bench(tmp_path, "-m", "hydra/launcher=submitit_slurm", "epochs=1", *TINY)
    assert proc.returncode == 2
    assert_user_error(proc, "hydra/launcher 'submitit_slurm' is not installed (pip install "
                            "hydra-submitit-launcher; installed: basic, joblib, submitit_local)")
    assert not (tmp_path / "bench.db").exists() and not (tmp_path / "multirun").exists()


def test_under_submitit_sigterm_stays_submitits_so_a_preemption_can_requeue():
    from runners.interrupts import Terminated, sigterm_as_exception

    def submitits(signum, frame):  # stands for submitit's SignalHandler.bypass
        pass

    previous = signal.signal(signal.SIGTERM, submitits)
    try:
        for launcher in ("submitit_local", "submitit_slurm"):
            with sigterm_as_exception(launcher):
                assert signal.getsignal(signal.SIGTERM) is submitits
        with pytest.raises(Terminated), sigterm_as_exception("basic"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode
        assert signal.getsignal(signal.SIGTERM) is submitits  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # two attempts of a minute each: submitit_local's shortest time limit
def test_a_job_past_its_time_limit_fails_in_one_row_after_its_requeues(tmp_path):
    """submitit_local's controller sends SIGUSR2 30 s (its signal_delay_s) before timeout_min=1;
    with max_num_timeout=1 submitit requeues the job once, then gives up."""
    proc = popen_bench(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1",
                       "+hydra.launcher.max_num_timeout=1", "epochs=100000", "bs=64", *TINY)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert query(tmp_path / "bench.db", "SELECT status, attempts, error FROM runs") == [
        ("failed", 2, "UncompletedJobError: Job not requeued because: timed-out too many times.")]
    assert "Traceback" not in out + err
    assert re.search(r"job #0 failed: Job not requeued because: timed-out too many times", out + err)
    assert "sweep done, 1 jobs: 0 completed, 0 diverged, 1 failed (job #0), 0 skipped" in out + err
