"""A run's heartbeat: a daemon thread that calls `beat()` every `every_s` seconds while a block
runs, so a run that trains for an hour without ending an epoch still shows it is alive
(runs.heartbeat_at), and a run whose heartbeat stopped is known dead from any host.

The thread is stopped and joined when the block ends, before the caller writes the run's final
status: no beat is written after it (the database's beat also only touches a 'running' row).
"""

import logging
import threading
from collections.abc import Callable

from bench.checks import fail, require_number
from bench.errors import one_line

log = logging.getLogger("bench")


def check_heartbeat(every_s, stale_after_s) -> None:
    """`db.heartbeat.every_s` a positive number of seconds; `db.heartbeat.stale_after_s` longer
    than that: a live run would otherwise be taken for dead between two beats."""
    require_number("db.heartbeat.every_s", every_s, gt=0)
    require_number("db.heartbeat.stale_after_s", stale_after_s, gt=0)
    if stale_after_s <= every_s:
        fail("db.heartbeat.stale_after_s", stale_after_s,
             f"is not longer than db.heartbeat.every_s={every_s}",
             f"a number of seconds > {every_s}; a few heartbeat periods, e.g. {5 * every_s:g}")


class Heartbeat:
    """`with Heartbeat(beat, every_s):` calls `beat()` every `every_s` seconds in a daemon thread
    until the block ends. A failing beat (the database briefly unreachable) is logged once and
    retried at the next period; it never stops the block."""

    def __init__(self, beat: Callable[[], object], every_s: float, name: str = "heartbeat"):
        self.beat, self.every_s, self.name = beat, float(every_s), name
        self.beats = 0  # how many beats were written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
                self.beats += 1
                failing = False
            except Exception as e:  # the block goes on; the next period tries again
                if not failing:
                    log.warning("%s: could not write a heartbeat (retrying every %g s): %s",
                                self.name, self.every_s, one_line(e))
                failing = True

    def __enter__(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # a beat in progress ends before the caller's next write
