"""A sweep's worker process stops when the sweep's own process dies.

joblib's loky workers do not notice their parent's death: a sweep whose main process was killed
(SIGKILL, or SIGTERM before this module) left its two workers training, and they went on to the
queued jobs, over 110 s after the parent was gone. Here a daemon thread in each worker polls
`os.getppid()` every `EVERY_S`; once the parent is gone it interrupts the worker's main thread
with SIGUSR1, whose handler raises `ParentDied` inside the job (its run's row is then closed
'failed' with that one line, like any exception) or ends an idle worker at once. The thread
ends the process itself `GRACE_S` after that, should the main thread be stuck (a database lock).
A sweep stopped by SIGTERM or Ctrl-C sends its watching workers SIGUSR1 itself, at once.

Why not `prctl(PR_SET_PDEATHSIG)`: Linux sends that signal when the *thread* that forked the
child exits (prctl(2)), and loky also starts workers from its executor manager thread
(loky/process_executor.py, `_adjust_process_count` after an idle worker's timeout), a thread
that ends when the executor is resized or shut down: a live sweep's workers would be killed.
Polling costs one system call (0.3 us) per `EVERY_S`.

Plain values only (no Hydra): `bench.run` starts it in a job whose process is not the sweep's.
"""

import os
import signal
import threading
import time

SWEEP_PID_KEY = "NORMBENCH_SWEEP_PID"  # the sweep's pid, in every job's hydra.job.env_set
EVERY_S = 0.5  # a dead parent is noticed within this; a getppid() call took 0.3 us here
GRACE_S = 20.0  # then the thread exits the process itself; closing a row takes ~10 ms

_state = {"pid": None, "in_job": False, "thread": None}


class ParentDied(BaseException):
    """The sweep's process ended while this worker ran its job (a BaseException, as
    KeyboardInterrupt: no `except Exception` in training may swallow it)."""


def parent_alive(pid: int) -> bool:
    """The process `pid` that started this one still runs: it is still our parent. When it dies
    the kernel reparents us (to init or a subreaper), so a reused pid cannot fool this."""
    return os.getppid() == pid


def _message(pid: int) -> str:
    if parent_alive(pid):  # its SIGUSR1: hydra_plugins/normbench_sweeper/stops.py
        return f"the sweep (pid {pid}) was stopped by SIGTERM or Ctrl-C; this worker stopped"
    return f"the sweep's process (pid {pid}) died before this run finished; this worker stopped"


def _on_signal(signum, frame):
    if _state["in_job"]:
        raise ParentDied(_message(_state["pid"]))
    os._exit(1)  # idle, between jobs: nothing to close


def watching(pid: int) -> bool:
    """The process `pid` runs this module's watch: it catches SIGUSR1 (bit 9 of SigCgt in
    /proc/PID/status, proc(5)). Other children of a sweep (loky's resource tracker) do not."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught >> (signal.SIGUSR1 - 1) & 1)


def _watch(pid: int) -> None:
    while parent_alive(pid):
        time.sleep(EVERY_S)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # wakes a blocking call
    time.sleep(GRACE_S)
    os._exit(1)


def start(pid: int) -> bool:
    """Watch the sweep's process `pid` from here on (once per process; again is a no-op). False,
    and nothing started, where `pid` is not this process's parent: a job in the sweep's own
    process (basic launcher), or a parent already gone."""
    if _state["thread"] is not None:
        return True
    if pid == os.getpid() or not parent_alive(pid):
        return False
    _state["pid"] = pid
    signal.signal(signal.SIGUSR1, _on_signal)  # from the main thread: where handlers run
    _state["thread"] = threading.Thread(target=_watch, args=(pid,), daemon=True,
                                        name=f"watch of the sweep's process {pid}")
    _state["thread"].start()
    return True


class Stopped(Exception):  # noqa: N818 (a job's end, as Hydra's JobStatus names it)
    """A worker's job ended by a signal to the worker (SIGTERM, Ctrl-C), its row closed. An
    Exception, not a BaseException: Hydra then returns it as this job's failure and the sweep's
    other jobs go on (a BaseException reached joblib, which killed the other workers mid-run and
    left their rows 'running'); the sweep reports it in one line, without a traceback."""


class job:
    """`with job():` a job runs: a dead parent raises `ParentDied` in it instead of exiting."""

    def __enter__(self):
        if _state["pid"] is not None and not parent_alive(_state["pid"]):
            raise ParentDied(_message(_state["pid"]))  # died while the job was queued
        _state["in_job"] = True

    def __exit__(self, *exc):
        _state["in_job"] = False
