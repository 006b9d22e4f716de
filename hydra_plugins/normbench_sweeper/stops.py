"""How a sweep ends when it is stopped from outside, in one line and with every run's row final.

- SIGTERM or Ctrl-C to the sweep's process: one line and exit code 128 + the signal (143, 130).
  Under the joblib launcher it first sends SIGUSR1 to its workers, which close their runs' rows
  and exit (bench/parent_watch.py), and waits for them: an exception that reaches joblib's
  `Parallel` with workers alive makes joblib kill them (loky `terminate(kill_workers=True)`),
  which left their rows 'running' (measured before this change: one worker's SIGTERM left the
  other's row 'running'). Under the basic launcher the job itself closed its row ('terminated
  by SIGTERM', KeyboardInterrupt) before the signal's exception reaches here.
- a worker that dies (SIGKILL, out of memory): joblib raises `TerminatedWorkerError` and kills
  the other workers; their rows, and the dead one's, are marked failed here (their processes are
  gone), and the sweep ends in one line (after the summary of earlier batches), exit code 1.
- a signal to one worker: that job is 'failed' (`parent_watch.Stopped`), the sweep goes on.
"""

import os
import signal
import time
from contextlib import contextmanager

from bench.parent_watch import GRACE_S, watching
from runners.interrupts import Terminated

SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
# joblib kills the other workers from loky's manager thread (process_executor.py,
# `kill_workers`), not before raising: their rows are marked once they are gone.
REAP_S = 5.0


class SweepStopped(BaseException):
    """SIGTERM to the sweep's process, outside a job's training (where the job's own handler
    raises `Terminated`)."""

    def __init__(self, signum: int):
        super().__init__(SIGNALS[signum])
        self.signum = signum


def stopped_line(signum: int, jobs_ended: int, total: int) -> str:
    return (f"sweep stopped by {SIGNALS[signum]} after {jobs_ended} of {total} jobs ended; the "
            "running jobs closed their runs as 'failed'; rerun the same command to continue")


def exit_code(e: BaseException) -> int | None:
    """128 + the signal for a stop from outside (`SweepStopped`, `Terminated`, Ctrl-C), else None."""
    if isinstance(e, SweepStopped):
        return 128 + e.signum
    if isinstance(e, Terminated):
        return 128 + signal.SIGTERM
    if isinstance(e, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return None


@contextmanager
def on_signals(launcher: str):
    """Within the block, SIGTERM and Ctrl-C end the sweep as the module docstring says."""
    def handler(signum, frame):
        if launcher == "joblib":
            stop_workers()
        raise SweepStopped(signum)

    # Ctrl-C elsewhere stays Python's KeyboardInterrupt, which the job records as its error.
    ours = SIGNALS if launcher == "joblib" else [signal.SIGTERM]
    previous = {s: signal.signal(s, handler) for s in ours}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _children() -> list[int]:
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                if name.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def stop_workers() -> None:
    """Tell each worker that watches this process (`parent_watch.watching`) to stop: it closes
    its run's row and exits. Waits up to `parent_watch.GRACE_S` for them to be gone, so that
    joblib, once the signal's exception reaches it, has nothing left to kill."""
    workers = [pid for pid in _children() if watching(pid)]
    for pid in workers:
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + GRACE_S
    while any(_child_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)


def worker_died(e: BaseException) -> bool:
    """`e` is joblib's report that a worker process died (loky's TerminatedWorkerError)."""
    return type(e).__name__ == "TerminatedWorkerError"


def _running_children(db) -> list[int]:
    """Pids of this host's 'running' runs that are processes this one started, still alive."""
    import socket

    from sqlalchemy import select

    from db.schema import Run

    with db.engine.connect() as conn:
        pids = conn.execute(select(Run.pid).where(Run.status == "running",
                                                  Run.host == socket.gethostname())).scalars()
        return [p for p in pids if p != os.getpid() and _child_alive(p)]


def _child_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            _, rest = f.read().rsplit(")", 1)
    except OSError:
        return False
    state, ppid = rest.split()[:2]
    if int(ppid) != os.getpid():
        return False
    if state == "Z":  # dead, not yet reaped: reap it, so that the row's check sees it gone
        os.waitpid(pid, os.WNOHANG)
        return False
    return True


def mark_dead_workers(urls) -> list[int]:
    """Mark failed the runs whose worker is gone (`ResultsDB.mark_stale_runs`, this host), once
    the workers joblib killed are gone (up to `REAP_S`)."""
    from db import ResultsDB

    deadline, marked = time.monotonic() + REAP_S, []
    for url in sorted(urls):
        with ResultsDB(url) as db:
            while _running_children(db) and time.monotonic() < deadline:
                time.sleep(0.05)
            marked += db.mark_stale_runs()
    return marked
