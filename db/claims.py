"""One live run per config: a job claims its config hash in the database before it trains.

`claim` decides, in one write transaction, what a job does with its config hash:
- 'skip' it: a completed run exists (resume=true), or a diverged one (a result too, unless
  `checkpoint.retry_diverged`), or a live run trains it elsewhere ('running', heartbeat fresher
  than `db.heartbeat.stale_after_s`, and on this host its process alive);
- 'resume' a run left unfinished: the earlier attempt of this scheduler job (a requeue), else the
  latest 'running' run whose process is dead or silent, or 'failed' one of a resumable kind
  (`RESUMABLE`; `checkpoint.resume_failed` adds 'error'): its row is reopened, status 'running',
  attempts + 1, this process's host and pid;
- else write a 'new' row, with `repeat_of` set when resume=false trains an existing config again.

Atomic against a second launcher's job: SQLite's writer transactions begin IMMEDIATE (one writer
at a time, db/sqlite.py); on PostgreSQL (READ COMMITTED) the transaction first takes
`pg_advisory_xact_lock` on a key from the hash, so two jobs of one config queue on the lock and
the second sees the first's row.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, text, update

from db.schema import FAILURES, Run

RESUMABLE = tuple(f for f in FAILURES if f != "error")


@dataclass(frozen=True)
class Claim:
    action: str              # 'new', 'resume' or 'skip'
    run_id: int
    uid: str | None = None   # the run's uid: its checkpoint's file name (`bench.checkpoint`)
    attempt: int = 1
    status: str = ""         # of a skip: 'skipped' (a result exists) or 'running elsewhere'
    why: str = ""            # one line: why skipped, or what the resumed run was


def lock_key(config_hash: str) -> int:
    """A signed 64-bit advisory lock key from the hash (60 bits of it: never negative overflow)."""
    return int(config_hash[:15], 16)


def claim(engine, new_row: dict, *, resume: bool, stale_after_s: float,
          scheduler_job_id: str | None = None, output_dir: str | None = None,
          resume_failed: bool = False, retry_diverged: bool = False) -> Claim:
    """Claim `new_row['config_hash']` for this process (see the module docstring). new_row: the
    row `ResultsDB.start_run` would insert; its host, pid, device, threads also go into a
    resumed row."""
    from db.store import _process_alive  # the same liveness test as mark_stale_runs

    digest, host, now = new_row["config_hash"], socket.gethostname(), datetime.now(UTC)
    fresh_after = now - timedelta(seconds=float(stale_after_s))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(digest)})
        rows = conn.execute(
            select(Run.id, Run.status, Run.host, Run.pid, Run.heartbeat_at, Run.failure,
                   Run.scheduler_job_id, Run.output_dir, Run.uid)
            .where(Run.config_hash == digest).order_by(Run.id.desc())).all()

        def alive(r) -> bool:
            if r.heartbeat_at < fresh_after:  # aware UTC on every backend: db.schema.UtcDateTime
                return False
            return r.host != host or r.pid == os.getpid() or _process_alive(r.pid)

        earlier = next((r for r in rows if scheduler_job_id is not None
                        and r.scheduler_job_id == str(scheduler_job_id)
                        and r.output_dir == (None if output_dir is None else str(output_dir))
                        and r.status in ("running", "failed")), None)
        requeue = earlier is not None
        if earlier is None and resume:
            if done := next((r for r in rows if r.status == "completed"), None):
                return Claim("skip", done.id, status="skipped",
                             why=f"run id {done.id} already completed this config")
            if (bad := next((r for r in rows if r.status == "diverged"), None)) and not retry_diverged:
                return Claim("skip", bad.id, status="skipped",
                             why=f"run id {bad.id} diverged with this config (a result; "
                                 "checkpoint.retry_diverged=true trains it again)")
            if live := next((r for r in rows if r.status == "running" and alive(r)), None):
                return Claim("skip", live.id, status="running elsewhere",
                             why=f"running elsewhere: run id {live.id} on host {live.host} "
                                 f"(pid {live.pid})")
            kinds = RESUMABLE + ("error", None) if resume_failed else RESUMABLE
            earlier = next((r for r in rows if r.status == "running"
                            or (r.status == "failed" and r.failure in kinds)), None)
        if earlier is not None:
            was = (f"the scheduler requeued this job (run id {earlier.id})" if requeue else
                   f"resumes run id {earlier.id} ({earlier.status}"
                   f"{f': {earlier.failure}' if earlier.failure else ''})")
            conn.execute(update(Run).where(Run.id == earlier.id).values(
                status="running", started_at=now, heartbeat_at=now, ended_at=None,
                duration_s=None, error=None, failure=None, host=host, pid=os.getpid(),
                device=new_row["device"], threads=new_row["threads"],
                attempts=func.coalesce(Run.attempts, 1) + 1))
            attempt = conn.scalar(select(Run.attempts).where(Run.id == earlier.id))
            uid = earlier.uid
            if uid is None:  # a row written before uids: give it one now, for its checkpoint
                uid = new_row["uid"]
                conn.execute(update(Run).where(Run.id == earlier.id).values(uid=uid))
            return Claim("resume", earlier.id, uid, attempt, why=was)
        others = [r.id for r in rows if r.status != "failed"]
        row = {**new_row, "repeat_of": others[0] if others and not resume else None}
        run_id = conn.execute(insert(Run), row).inserted_primary_key[0]
        return Claim("new", run_id, row["uid"])
