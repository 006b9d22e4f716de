"""Data-parallel runs (`ddp.replicas`): real gloo replicas started by the real command line,
against one-process references, and the bad input around them.

References: `sync_bn` over 2 replicas of 16 must train as `bn` does in one process on the 32
(the whole global batch: Ioffe & Szegedy's BN), and `bn` over 2 replicas as `ghost_bn` with
virtual_bs=16 in one process (BN over each half of every batch). Training numerics differ by
float32 summation order only (the replicas' gradients are averaged by an all-reduce).
"""

import contextlib
import json
import os
import signal
import socket
import time

import pytest
from conftest import assert_user_error, query, start_bench

from bench.config_hash import config_hash

SMALL = ("dataset.train_subset=128", "dataset.test_subset=100", "model=convnet", "bs=32",
         "threads=1")


def _metrics(db, run_id):
    return {(s, n): v for s, n, v in query(db, "select split, name, value from metrics where "
                                                "run_id = ? and epoch = 1", run_id)}


def test_two_replicas_train_as_one_process_on_the_global_batch(bench, tmp_path):
    grids = ('hydra.sweeper.grids=[{ddp.replicas:"2",norm:sync_bn},{ddp.replicas:"1",norm:bn},'
             '{ddp.replicas:"2",norm:bn},{ddp.replicas:"1",norm:ghost_bn,norm.virtual_bs:"16"}]')
    proc = bench("-m", *SMALL, "epochs=1", grids, check_rc=0)
    assert "4 completed" in proc.stdout + proc.stderr
    db = tmp_path / "bench.db"
    rows = query(db, "select id, norm, status, threads, config from runs order by id")
    assert len(rows) == 4  # one row per run: only rank 0 writes
    by = {(json.loads(c)["ddp"]["replicas"], norm): _metrics(db, i) for i, norm, _, _, c in rows}
    assert {r[2] for r in rows} == {"completed"} and {r[3] for r in rows} == {1}
    sync, bn = by[2, "sync_bn"], by[1, "bn"]
    per_replica, ghost = by[2, "bn"], by[1, "ghost_bn"]
    for split, name in (("train", "loss"), ("train", "acc")):
        assert sync[split, name] == pytest.approx(bn[split, name], rel=2e-3)
        assert per_replica[split, name] == pytest.approx(ghost[split, name], rel=2e-3)
    # the two pairs differ: per-replica statistics are not the global batch's
    assert abs(per_replica["train", "loss"] - sync["train", "loss"]) > 5e-3
    # Evaluation is rank 0's alone, as in one process: sync_bn's running statistics are the
    # global batch's, so every BN mode agrees with one-process bn (the same weights, to float
    # rounding through 8 steps).
    for split in ("test", "test_precise", "test_batchstats"):
        assert sync[split, "loss"] == pytest.approx(bn[split, "loss"], rel=5e-3), split
    assert sync["train", "comm_s"] > 0 and per_replica["train", "comm_s"] > 0
    assert ("train", "comm_s") not in bn


def _second_replica(proc, db):
    """The pid of the replica `proc` (rank 0) started, once the run has logged an epoch."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            started = query(db, "select count(*) from metrics")[0][0] > 0
        except Exception:  # noqa: BLE001 - no file or table yet
            started = False
        if started:
            child = next((pid for pid in _children(proc.pid) if "spawn_main" in _cmdline(pid)), None)
            if child is not None:
                return child
    pytest.fail("the run never trained with a second replica")


def test_a_dead_replica_fails_the_run_at_once_with_its_error(tmp_path):
    proc = start_bench(tmp_path, *SMALL, "epochs=500", "ddp.replicas=2")
    db = tmp_path / "bench.db"
    child = _second_replica(proc, db)
    t0 = time.monotonic()
    os.kill(child, signal.SIGKILL)
    proc.wait(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    status, error, failure = query(db, "select status, error, failure from runs")[0]
    # killed from outside, as a SIGKILLed job is: a rerun continues it from its checkpoint
    assert status == "failed" and failure == "killed"
    assert error == "ReplicaFailed: replica 1 of 2 died: killed by SIGKILL"
    assert 1 <= query(db, "select max(epoch) from metrics")[0][0] < 500


@pytest.mark.slow
def test_a_hung_replica_fails_the_run_after_the_timeout(tmp_path):
    proc = start_bench(tmp_path, *SMALL, "dataset.train_subset=512", "epochs=50",
                       "ddp.replicas=2", "ddp.timeout_s=10")
    db = tmp_path / "bench.db"
    child = _second_replica(proc, db)
    os.kill(child, signal.SIGSTOP)
    try:
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # rank 0 kills what it cannot stop
            os.kill(child, signal.SIGKILL)
    status, error = query(db, "select status, error from runs")[0]
    assert status == "failed"
    assert error.startswith("ReplicaFailed: a collective waited longer than ddp.timeout_s=10 s "
                            "(a replica hung?): ")


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.parametrize(("args", "message"), [
    (("bs=30", "ddp.replicas=4"), "ddp.replicas=4 does not divide bs=30 (the global batch"),
    (("bs=8", "ddp.replicas=2", "accum_steps=8"), "accum_steps=8 does not divide the 4 samples per replica"),
    (("ddp.replicas=64", "bs=64"), "ddp.replicas=64 is more than the"),
    (("ddp.replicas=2", "task=gan"), "ddp.replicas=2 is not supported by task gan"),
    (("ddp.buffers=mean", "ddp.replicas=2"),
     "ddp.buffers='mean' is not allowed (allowed: average, broadcast)"),
    (("ddp.replicas=0",), "ddp.replicas=0"),
    # sync_bn in one process is BN over the whole bs: 1 sample meets resnet18's 1x1 maps
    (("norm=sync_bn", "bs=1", "model=resnet18"),
     "bs=1 leaves norm 'sync_bn' (sync_bn with one replica is plain BN) 1 sample"),
    (("norm=bn", "bs=2", "ddp.replicas=2", "model=resnet18"),
     "bs=2 leaves norm 'bn' 1 sample per replica, and model 'resnet18' has 1x1 feature maps"),
])
def test_bad_replica_settings_are_one_line_and_write_nothing(bench, tmp_path, args, message):
    proc = bench(*args, "epochs=1")
    assert_user_error(proc, message)
    assert not (tmp_path / "bench.db").exists()


def test_a_taken_port_is_refused_before_anything_is_written(bench, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = bench("ddp.replicas=2", f"ddp.port={port}", "epochs=1")
    assert_user_error(proc, f"ddp.port={port} is already taken on 127.0.0.1 (allowed: a free port")
    assert not (tmp_path / "bench.db").exists()


@pytest.mark.slow
def test_hydras_joblib_workers_start_replicas(tmp_path):
    # A loky worker's start method is 'loky', which a spawned child cannot set
    # (runners.replicas._spawnable); 2 jobs at a time.
    from conftest import run_bench_subprocess

    proc = run_bench_subprocess(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                *SMALL, "epochs=1", "ddp.replicas=1,2", timeout=300, check_rc=0)
    assert "2 completed" in proc.stdout + proc.stderr
    assert query(tmp_path / "bench.db", "select status, launcher from runs") == [
        ("completed", "joblib")] * 2


@pytest.mark.slow
def test_more_replicas_than_cores_run_when_oversubscription_is_allowed(bench, tmp_path):
    from bench.launchers import usable_cores

    n = usable_cores() + 1
    bench(*SMALL, "dataset.train_subset=96", f"bs={8 * n}", f"ddp.replicas={n}",
          "ddp.oversubscribe=true", "epochs=1", "bn_eval.modes=false", check_rc=0)
    assert query(tmp_path / "bench.db", "select status from runs") == [("completed",)]


def test_one_replica_keeps_the_hash_every_older_config_had():
    config = {"bs": 32, "norm": {"name": "bn"}, "lr": 0.001}
    assert config_hash({**config, "ddp": {"replicas": 1, "buffers": "broadcast", "port": 5}}) \
        == config_hash(config)
    two = config_hash({**config, "ddp": {"replicas": 2, "buffers": "average", "port": 5}})
    assert two != config_hash(config)
    assert two == config_hash({**config, "ddp": {"replicas": 2, "buffers": "average", "port": 9,
                                                 "timeout_s": 3, "oversubscribe": True}})
    assert two != config_hash({**config, "ddp": {"replicas": 2, "buffers": "broadcast"}})


def test_the_report_shows_the_replica_count_as_a_setting():
    import pandas as pd

    from analysis.cells import settings_table, swept

    base = {"task": "classify", "dataset": "digits", "model": "convnet", "norm": "bn", "bs": 32,
            "lr": 1e-3, "epochs": 1}
    configs = [{"seed": 0}, {"seed": 1, "ddp": {"replicas": 1, "buffers": "average", "port": "auto"}},
               {"seed": 0, "ddp": {"replicas": 2, "buffers": "average", "port": 1234}}]
    runs = pd.DataFrame([{**base, "config": c} for c in configs])
    table = settings_table(runs)
    # a run from before ddp existed is a one-replica run; the port is bookkeeping
    assert table["ddp.replicas"].tolist() == [1, 1, 2]
    assert "ddp.replicas" in swept(table) and "ddp.port" not in table.columns
    assert "ddp.buffers" not in table.columns  # one value wherever it means something
    configs[2]["ddp"]["buffers"] = "broadcast"
    configs.append({"seed": 0, "ddp": {"replicas": 2, "buffers": "average"}})
    table = settings_table(pd.DataFrame([{**base, "config": c} for c in configs]))
    assert table["ddp.buffers"].tolist()[2:] == ["broadcast", "average"]


@pytest.mark.slow
def test_a_killed_two_replica_run_resumes_to_exactly_the_uninterrupted_metrics(tmp_path):
    from conftest import kill_at_epoch, run_bench

    args = (*SMALL, "epochs=3", "ddp.replicas=2", "norm=sync_bn")
    curve = ("select epoch, split, name, value from metrics where name != 'time_s' and "
             "name != 'images_per_s' and name != 'comm_s' order by epoch, split, name")
    ref = tmp_path / "ref"
    ref.mkdir()
    run_bench(ref, *args, check_rc=0)
    proc = start_bench(tmp_path, *args)
    assert kill_at_epoch(proc, tmp_path / "bench.db", 2), "ended before the kill"
    proc = run_bench(tmp_path, *args, check_rc=0)
    assert "training continues after epoch" in proc.stderr + proc.stdout
    db = tmp_path / "bench.db"
    assert query(db, "select status, attempts, epochs_done from runs") == [("completed", 2, 3)]
    # rank 0's checkpoint carries the optimizer, schedule and data order the other replica gets
    assert query(db, curve) == query(ref / "bench.db", curve)


def test_an_outside_launchers_ranks_are_read_and_must_match_the_replicas(monkeypatch):
    from conftest import compose_config

    from bench.errors import UserError
    from runners.replicas import Launched, check_launched, launched

    for key in ("SUBMITIT_EXECUTOR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launched() is None
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: one process, no replicas
    monkeypatch.setenv("RANK", "0")
    assert launched() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched() == Launched(1, 2, 1, "torchrun")
    with pytest.raises(UserError, match=r"^ddp.replicas=4 does not match the 2 processes torchrun "
                                        r"started \(allowed: ddp.replicas=2\)$"):
        check_launched(compose_config("ddp.replicas=4"), launched())


@pytest.mark.slow
def test_torchrun_and_submitit_tasks_train_exactly_as_the_replicas_a_job_starts(tmp_path):
    import subprocess
    import sys

    from conftest import bench_args, bench_env, run_bench, run_bench_subprocess

    args = (*SMALL, "epochs=2", "ddp.replicas=2", "norm=sync_bn")
    curve = ("select epoch, split, name, value from metrics where name not in "
             "('time_s', 'images_per_s', 'comm_s') order by epoch, split, name")
    dirs = {k: tmp_path / k for k in ("spawn", "torchrun", "submitit")}
    for d in dirs.values():
        d.mkdir()
    run_bench(dirs["spawn"], *args, check_rc=0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
           "bench.run", *bench_args(dirs["torchrun"], args, "bench.db")]
    proc = subprocess.run(cmd, cwd=dirs["torchrun"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **bench_env(dirs["torchrun"])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replica 1: done (trained); rank 0 logs and writes the run" in proc.stdout + proc.stderr
    run_bench_subprocess(dirs["submitit"], "-m", "hydra/launcher=submitit_local",
                         "hydra.launcher.tasks_per_node=2", *args, timeout=300, check_rc=0)
    ref = query(dirs["spawn"] / "bench.db", curve)
    assert len(ref) > 10
    for how in ("torchrun", "submitit"):
        db = dirs[how] / "bench.db"
        assert query(db, "select count(*), min(status) from runs") == [(1, "completed")], how
        assert query(db, curve) == ref, how
