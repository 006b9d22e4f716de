"""`python -m db mark-stale`: mark 'failed' the runs whose process died without saying so.

A run killed with SIGKILL, by the OOM killer or with its node stays 'running'. Two ways to
know it is dead, both used here and by every sweep (`runners.job.prepare_sweep`):
- on the host that ran it, its process id is gone (`ResultsDB.mark_stale_runs`);
- from any host, its heartbeat (written every `db.heartbeat.every_s` seconds while it trains) is
  older than `--after` seconds (`ResultsDB.mark_silent_runs`).

Unlike the other commands of `python -m db`, this one writes: it opens the database as training
does (`db.engine.open_engine`, through `ResultsDB`).
"""

from __future__ import annotations

import argparse
import socket

from bench.errors import UserError

# conf/config.yaml's db.heartbeat.stale_after_s (tests/test_heartbeat.py keeps them equal).
DEFAULT_AFTER_S = 300


def add_parser(sub, common: argparse.ArgumentParser, seconds) -> None:
    """The subcommand's parser; `seconds`: the argparse type of --after."""
    p = sub.add_parser(
        "mark-stale", parents=[common],
        help="mark failed the running runs whose heartbeat stopped (any host) or whose process "
             "is gone (this host); writes: opens the database with db.engine.open_engine",
        description="Mark failed the running runs whose heartbeat is older than --after seconds "
                    "(any host) or whose process is gone (this host). Unlike the other commands "
                    "this one writes: it opens the database as training does "
                    "(db.engine.open_engine).")
    p.add_argument("--after", type=seconds, default=DEFAULT_AFTER_S, metavar="SECONDS",
                   help="a heartbeat older than this is a dead run (default: %(default)s, "
                        "db.heartbeat.stale_after_s)")


def mark_stale(url: str, after_s: int, out) -> None:
    """Mark the dead runs of `url` failed and print one line per run and a count."""
    from sqlalchemy.engine import make_url

    from db.engine import open_readonly, schema_version
    from db.store import ResultsDB

    probe = open_readonly(url)  # a missing file is an error here, not a new empty database
    try:
        with probe.connect() as conn:
            if schema_version(conn) is None:
                shown = make_url(url).render_as_string(hide_password=True)
                raise UserError(f"{shown!r} is not a results database (it has no runs table)")
    finally:
        probe.dispose()
    host = socket.gethostname()
    with ResultsDB(url) as db:
        gone = db.mark_stale_runs()
        silent = db.mark_silent_runs(after_s, f"python -m db mark-stale on {host}")
    for run_id in gone:
        print(f"run id {run_id}: failed (its process on {host} is gone)", file=out)
    for run_id, error in silent:
        print(f"run id {run_id}: failed ({error})", file=out)
    n = len(gone) + len(silent)
    print(f"marked {n} run{'s' if n != 1 else ''} failed" if n else
          f"no stale runs: every running run wrote a heartbeat in the last {after_s} s "
          f"(and none of {host}'s has lost its process)", file=out)
