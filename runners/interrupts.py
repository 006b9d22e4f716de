"""How a job is stopped from outside, and what each way means for its run's row:

- SIGTERM (`kill`, a scheduler's cancel) and Ctrl-C: the run is 'failed' ("terminated by
  SIGTERM" / KeyboardInterrupt), written before the process ends;
- submitit's requeue: a SLURM job near its time limit, or preempted, gets SIGUSR2 (`--signal`,
  submitit's `signal_delay_s`); submitit_local's controller sends the same signal
  `signal_delay_s` (30) seconds before `timeout_min`. submitit's handler then requeues the job
  (`scontrol requeue`, or the local controller starts it again) and ends this attempt with
  `SystemExit` (exit code 144 locally, -1 under SLURM), raised in the middle of training. The
  next attempt runs the same job and continues in the same row from its last checkpoint
  (`db.claims.claim`, `bench.checkpoint`). Where submitit does not requeue (timed out more
  than `max_num_timeout` times) it raises `UncompletedJobError` instead: the run is 'failed'.
"""

import os
import signal
import threading
from contextlib import contextmanager

from bench.launchers import SUBMITIT
from bench.parent_watch import ParentDied


class Terminated(BaseException):
    """SIGTERM turned into an exception, so the run's row is closed before the process ends."""


def _on_sigterm(signum, frame):
    raise Terminated("terminated by SIGTERM")


@contextmanager
def sigterm_as_exception(launcher: str = "basic"):
    """Within the block, SIGTERM raises `Terminated` (only possible in the main thread: with
    joblib's threading backend the job runs elsewhere and keeps the default handler).

    Not under submitit, whose handler logs SIGTERM and goes on: on a preemption SLURM sends
    SIGTERM before the signal that makes submitit requeue the job (https://slurm.schedmd.com/
    preempt.html; why submitit ignores it: facebookincubator/submitit issue #1677), so ending
    the run at SIGTERM would lose the requeue."""
    if threading.current_thread() is not threading.main_thread() or launcher in SUBMITIT:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def requeued(e: BaseException, launcher: str) -> bool:
    """`e` ended this attempt because submitit requeued the job: its signal handler's exit.
    Nothing else in a run raises SystemExit (`bench.cli.fail` runs only outside training)."""
    return launcher in SUBMITIT and isinstance(e, SystemExit)


def requeue_note(epochs_done: int, epochs: int, attempt: int) -> str:
    """The interrupted attempt's one line, also the row's `error` until the next attempt starts."""
    sig = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # submitit's setting
    return (f"requeued by submitit after {sig} (time limit or preemption) with {epochs_done} of "
            f"{epochs} epochs done in attempt {attempt}; the next attempt continues in this row "
            "from its last checkpoint")


class ReplicaFailed(RuntimeError):
    """Another replica of a data-parallel run died, failed or could not start
    (`runners.replicas`); the message is its error. `killed`: a signal ended it (from outside,
    as a SIGKILLed job: resumed by a rerun), not an exception of its own."""

    def __init__(self, message: str, killed: bool = False):
        super().__init__(message)
        self.killed = killed


def failure_kind(e: BaseException, launcher: str) -> str:
    """runs.failure for a run ended by `e` (`db.schema.FAILURES`): every kind but 'error' (an
    exception of the run's own code, which would happen again) is resumed by a rerun."""
    if requeued(e, launcher):
        return "requeued"
    if isinstance(e, Terminated):
        return "sigterm"
    if isinstance(e, ParentDied):  # the sweep's process died or was stopped: bench/parent_watch.py
        return "killed"
    if isinstance(e, ReplicaFailed) and e.killed:
        return "killed"
    if isinstance(e, KeyboardInterrupt):
        return "interrupt"
    return "error"
