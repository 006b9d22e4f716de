"""Shared test helpers: run the real command line in a subprocess, read the database with sqlite3."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Under `pytest -n 2` each worker gets one core's worth of threads, so the two don't fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def bench(tmp_path):
    """Run `python -m bench.run ARGS` in tmp_path with a database there; returns a runner."""

    return lambda *args, **kw: run_bench(tmp_path, *args, **kw)


def run_bench(cwd: Path, *args, db="bench.db", timeout=600, check_rc=None):
    """`python -m bench.run ARGS` in `cwd`; db.url defaults to the file `db` there."""
    env = {**os.environ, "NORMBENCH_DATA": str(cwd / "data"), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "bench.run", *args]
    # The default dataset is Fashion-MNIST (60,000 images); the tests train on scikit-learn's
    # digits unless they name a dataset or a preset (which names its own).
    if not any(a.startswith(("dataset=", "experiment=")) for a in args):
        cmd.append("dataset=digits")
    if not any(a.startswith("db.url=") for a in args):
        cmd.append(f"db.url=sqlite:///{cwd / db}")
    if os.environ.get("PYTEST_XDIST_WORKER") and not any(a.startswith("threads=") for a in args):
        cmd.append("threads=1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def one_run_db(tmp_path_factory) -> Path:
    """A database holding one completed run (digits, 1 epoch, a 256-image subset), made once."""
    cwd = tmp_path_factory.mktemp("one_run")
    run_bench(cwd, "epochs=1", "bs=128", "dataset.train_subset=256", check_rc=0)
    return cwd / "bench.db"


def query(path: Path, sql: str, *params):
    """Rows of `sql` on the SQLite file at `path`, read with the sqlite3 module (not our ORM)."""
    with sqlite3.connect(path) as con:
        return con.execute(sql, params).fetchall()


def assert_user_error(proc, message: str) -> None:
    """A user's mistake as the CLI must report it: non-zero exit, one line `error: ...` on stderr
    containing `message`, no traceback anywhere."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
