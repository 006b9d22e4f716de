"""Shared test helpers: run the real command line (in this process, or in a subprocess where a
test needs a real process), compose configs as the command line does, read the database with
sqlite3."""

import contextlib
import io
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

# Under `pytest -n 2` each worker gets one core's worth of threads, so the two don't fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def bench(tmp_path):
    """Run `python -m bench.run ARGS` in tmp_path (in this process) with a database there;
    returns a runner."""

    return lambda *args, **kw: run_bench(tmp_path, *args, **kw)


def bench_args(cwd: Path, args, db: str) -> list[str]:
    """The command line's arguments as the tests run it: ARGS plus the tests' defaults."""
    args = list(args)
    # The default dataset is Fashion-MNIST (60,000 images); the tests train on scikit-learn's
    # digits unless they name a dataset or a preset (which names its own).
    if not any(a.startswith(("dataset=", "experiment=")) for a in args):
        args.append("dataset=digits")
    if not any(a.startswith("db.url=") for a in args):
        args.append(f"db.url=sqlite:///{cwd / db}")
    if os.environ.get("PYTEST_XDIST_WORKER") and not any(a.startswith("threads=") for a in args):
        args.append("threads=1")
    return args


def bench_env(cwd: Path) -> dict[str, str]:
    return {"NORMBENCH_DATA": str(cwd / "data"), "HYDRA_FULL_ERROR": "0"}


def _check(proc, check_rc):
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_bench_subprocess(cwd: Path, *args, db="bench.db", timeout=600, check_rc=None, env=None):
    """`python -m bench.run ARGS` in a new process in `cwd`; db.url defaults to the file `db`
    there; `env`: more environment variables (PGPASSWORD). For what only a real process shows:
    the exit code the OS sees, signals, and the joblib launcher (its loky workers write to the
    process's own stdout, and a worker reused from an earlier test would keep that test's
    working directory)."""
    cmd = [sys.executable, "-m", "bench.run", *bench_args(cwd, args, db)]
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **bench_env(cwd), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    return _check(proc, check_rc)


def start_bench(cwd: Path, *args, db="bench.db", env=None) -> subprocess.Popen:
    """`python -m bench.run ARGS` started in a new process in `cwd` (not waited for: to be killed
    at a chosen point, `kill_at_epoch`, or run alongside another); its output goes to
    `cwd/bench-<n>.log`."""
    log = open(cwd / f"bench-{len(list(cwd.glob('bench-*.log')))}.log", "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "bench.run", *bench_args(cwd, args, db)]
    return subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **bench_env(cwd), **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def kill_at_epoch(proc: subprocess.Popen, db: Path, epochs: int, delay_s: float = 0.0,
                  timeout: float = 120) -> bool:
    """SIGKILL `proc` `delay_s` seconds after the SQLite file `db` (read with sqlite3) holds the
    metrics of `epochs` epochs >= 1 in all, over all its runs. False if `proc` ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if query(db, "select count(distinct run_id || ':' || epoch) from metrics "
                         "where epoch >= 1")[0][0] >= epochs:
                break
        except sqlite3.OperationalError:  # no file or table yet
            pass
        time.sleep(0.01)
    time.sleep(delay_s)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


class _Timeout(BaseException):
    """The in-process run took longer than `timeout` (a BaseException: Hydra and the job turn
    an Exception into exit code 1; this must reach run_bench)."""


# The warning filters a fresh `python` starts with (no -W, no PYTHONWARNINGS): the subprocess
# printed such warnings on stderr, where assert_user_error would see them; so does run_bench.
PYTHON_DEFAULT_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"),
                                  ("ignore", DeprecationWarning, ""),
                                  ("ignore", PendingDeprecationWarning, ""),
                                  ("ignore", ImportWarning, ""),
                                  ("ignore", ResourceWarning, "")]


def _show_on_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _logger_state():
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger)]
    return {lg: (lg.level, list(lg.handlers), list(lg.filters), lg.propagate, lg.disabled)
            for lg in loggers}


def _restore_loggers(before: dict, disable_level: int) -> None:
    """Undo Hydra's logging configuration (its dictConfig at every launch): handlers that write
    to this run's StringIO or its job's log file are closed and removed, and every logger that
    existed before is as it was, so a later test's records go where they went before. A logger
    made during the run keeps its level: e.g. sqlalchemy sets its own to WARNING when first
    imported, and NOTSET would turn on its INFO log of every SQL statement."""
    old_handlers = {h for state in before.values() for h in state[1]}
    for lg in _logger_state():
        for h in lg.handlers:
            if h not in old_handlers:
                h.close()
        if lg in before:
            level, handlers, filters, propagate, disabled = before[lg]
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        else:
            lg.handlers[:] = [h for h in lg.handlers if h in old_handlers]
    logging.disable(disable_level)


@contextlib.contextmanager
def _process_state(cwd: Path, argv: list[str], env: dict[str, str], timeout: float | None):
    """What `python -m bench.run` would get from a fresh process, set for the block, and
    everything the run changes in this process's global state put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    saved_hydra_cfg = HydraConfig.instance().cfg
    hydra_was_initialized = GlobalHydra.instance().is_initialized()
    saved_threads = torch.get_num_threads()
    saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    loggers, disable_level = _logger_state(), logging.root.manager.disable
    use_alarm = timeout is not None and threading.current_thread() is threading.main_thread()
    if use_alarm:
        def on_alarm(signum, frame):
            raise _Timeout()
        saved_alarm = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(PYTHON_DEFAULT_WARNING_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            warnings.showwarning = _show_on_stderr  # restored by catch_warnings
            sys.argv = argv
            os.chdir(cwd)
            os.environ.update(env)
            yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, saved_alarm)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        HydraConfig.instance().cfg = saved_hydra_cfg
        if not hydra_was_initialized and GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        torch.set_num_threads(saved_threads)
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])
        torch.set_rng_state(saved_rng[2])
        signal.signal(signal.SIGTERM, saved_sigterm)
        _restore_loggers(loggers, disable_level)


def run_main(cwd: Path, *args, timeout=600):
    """`python -m bench.run ARGS` with exactly these arguments, in `cwd`, in this process:
    `bench.run.main()` with that sys.argv, working directory and environment. Returns a
    CompletedProcess: the exit code as Python would give it, stdout and stderr."""
    from bench import run

    # Its loky workers would log to this process's real stdout, not to the output returned here,
    # and would keep the working directory of the test that started them.
    assert not any(a.startswith("hydra/launcher=joblib") for a in args), "use run_bench_subprocess"
    argv = ["bench.run", *args]
    out, err = io.StringIO(), io.StringIO()
    try:
        with _process_state(cwd, argv, bench_env(cwd), timeout), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run.main()
                returncode = 0
            except SystemExit as e:  # what the interpreter makes of it at exit
                if e.code is None or isinstance(e.code, int):
                    returncode = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    returncode = 1
            except Exception:  # an uncaught exception: its traceback on stderr, exit code 1
                traceback.print_exc()
                returncode = 1
    except _Timeout:
        raise subprocess.TimeoutExpired(argv, timeout, out.getvalue(), err.getvalue()) from None
    return subprocess.CompletedProcess(argv, returncode, out.getvalue(), err.getvalue())


def run_bench(cwd: Path, *args, db="bench.db", timeout=600, check_rc=None):
    """`python -m bench.run ARGS` in `cwd`, in this process (`run_main`), with the tests'
    defaults (`bench_args`): db.url defaults to the file `db` there."""
    return _check(run_main(cwd, *bench_args(cwd, args, db), timeout=timeout), check_rc)


@pytest.fixture
def pg_url():
    """The URL of a new, empty PostgreSQL database of this test's own (tests/pg.py), dropped
    afterwards even when the test fails. Skipped when no server answers; failed instead under
    NORMBENCH_REQUIRE_POSTGRES=1 (CI)."""
    import pg

    with pg.database() as name:
        yield pg.url_of(name)


@pytest.fixture(scope="session")
def one_run_db(tmp_path_factory) -> Path:
    """A database holding one completed run (digits, 1 epoch, a 256-image subset), made once."""
    cwd = tmp_path_factory.mktemp("one_run")
    run_bench(cwd, "epochs=1", "bs=128", "dataset.train_subset=256", check_rc=0)
    return cwd / "bench.db"


def compose_config(*overrides, return_hydra_config=False):
    """The config `python -m bench.run OVERRIDES` composes (conf/config.yaml and the overrides),
    without running anything; with `return_hydra_config` also its `hydra` node (the sweeper's
    params and grids)."""
    from hydra import compose, initialize_config_dir

    from runners.validate import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def assert_every_parameter_learns(model: torch.nn.Module) -> None:
    """After a backward pass: every parameter got a finite gradient, and every conv and linear
    weight a non-zero one (a norm's own parameters may get an exact 0, e.g. FRN's tau where no
    activation is below it)."""
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    layers = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    weights = [(f"{n}.{pn}", p) for n, m in model.named_modules() if isinstance(m, layers)
               for pn, p in m.named_parameters() if p.dim() > 1]  # a weight-standardized one too
    assert weights and all(p.grad.abs().max() > 0 for _, p in weights), [
        n for n, p in weights if not p.grad.abs().max() > 0]


def randomize(layer: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """`layer` with every parameter drawn from N(0, 1): a norm's affine parameters away from
    their 1 and 0, so a test sees them used."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return layer


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
