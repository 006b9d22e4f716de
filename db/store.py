"""`ResultsDB`: how a training run records itself, one short transaction per call.

Opening the file safely for many processes is `db.engine`'s job; this module only writes rows.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, delete, insert, select, update

from bench.errors import choices
from db.claims import Claim, claim
from db.engine import open_engine
from db.provenance import code_version, torch_version, versions_json
from db.schema import FAILURES, FINAL_STATUSES, Artifact, Metric, Run


def _now() -> datetime:
    return datetime.now(UTC)


def _nan_to_null(value) -> float | None:
    # SQLite turns NaN into NULL by itself; do it explicitly so PostgreSQL rows mean the same.
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # signal 0 is CTRL_C_EVENT on Windows: never send it, assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class ResultsDB:
    """Writes runs and their per-epoch metrics; every method is one short transaction."""

    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        self._reader = self.engine.execution_options(sqlite_begin="DEFERRED")

    def start_run(
        self, *, task: str, dataset: str, model: str, norm: str, bs: int, lr: float, seed: int,
        epochs: int, config: dict, config_hash: str, output_dir: str | None = None,
        device: str = "cpu", threads: int | None = None, launcher: str | None = None,
        scheduler_job_id: str | None = None,
    ) -> int:
        """Insert a 'running' row describing this process; returns its id."""
        row = self.new_row(task=task, dataset=dataset, model=model, norm=norm, bs=bs, lr=lr,
                           seed=seed, epochs=epochs, config=config, config_hash=config_hash,
                           output_dir=output_dir, device=device, threads=threads,
                           launcher=launcher, scheduler_job_id=scheduler_job_id)
        with self.engine.begin() as conn:
            return conn.execute(insert(Run), row).inserted_primary_key[0]

    @staticmethod
    def new_row(
        *, task: str, dataset: str, model: str, norm: str, bs: int, lr: float, seed: int,
        epochs: int, config: dict, config_hash: str, output_dir: str | None = None,
        device: str = "cpu", threads: int | None = None, launcher: str | None = None,
        scheduler_job_id: str | None = None,
    ) -> dict:
        """The 'running' row `start_run` inserts (and `claim` inserts or resumes from)."""
        now = _now()
        row = dict(
            status="running", task=task, dataset=dataset, model=model, norm=norm, bs=int(bs),
            lr=float(lr), seed=int(seed), epochs=int(epochs), epochs_done=0, config=config,
            config_hash=config_hash, output_dir=None if output_dir is None else str(output_dir),
            started_at=now, heartbeat_at=now, host=socket.gethostname(), pid=os.getpid(),
            device=str(device), threads=None if threads is None else int(threads),
            torch_version=torch_version(), versions=versions_json(), code_version=code_version(),
            uid=uuid.uuid4().hex, launcher=launcher, scheduler_job_id=scheduler_job_id, attempts=1,
        )
        return row

    def claim(self, new_row: dict, **how) -> Claim:
        """Skip, resume or start this config's run, atomically: `db.claims.claim`."""
        return claim(self.engine, new_row, **how)

    def rewind(self, run_id: int, epoch: int) -> None:
        """A resumed run continues after `epoch` (its checkpoint's; 0: from the start): its
        metric rows of later epochs are removed (epoch 0's too, and its artifacts, when it
        starts over), so no epoch is written twice and none is lost. The checkpoint is written
        after the epoch's metrics: a kill between the two leaves rows this removes."""
        run_id, epoch = int(run_id), int(epoch)
        with self.engine.begin() as conn:
            conn.execute(delete(Metric).where(Metric.run_id == run_id,
                                              Metric.epoch > epoch if epoch else Metric.epoch >= 0))
            if not epoch:
                conn.execute(delete(Artifact).where(Artifact.run_id == run_id))
            conn.execute(update(Run).where(Run.id == run_id).values(epochs_done=epoch))

    def log_epoch(self, run_id: int, epoch: int, metrics: dict[tuple[str, str], float]) -> None:
        """Write {(split, name): value} for one epoch; NaN is stored as NULL.

        Writing a (split, name) already written for this epoch raises IntegrityError and writes
        nothing of this call.
        """
        run_id, epoch = int(run_id), int(epoch)  # sqlite3 stores a numpy int64 as a BLOB
        rows = [
            dict(run_id=run_id, epoch=epoch, split=str(split), name=str(name),
                 value=_nan_to_null(value))
            for (split, name), value in metrics.items()
        ]
        with self.engine.begin() as conn:
            done = conn.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    epochs_done=case((Run.epochs_done < epoch, epoch), else_=Run.epochs_done),
                    heartbeat_at=_now(),
                )
            )
            if done.rowcount != 1:
                raise ValueError(f"no run with id {run_id}")
            if rows:
                conn.execute(insert(Metric), rows)  # one executemany: ~7 us per row

    def add_artifact(self, run_id: int, kind: str, path: str) -> None:
        """Record the file of `kind` (e.g. 'samples') run `run_id` wrote; a new path replaces it."""
        key = (Artifact.run_id == int(run_id), Artifact.kind == str(kind))
        with self.engine.begin() as conn:
            if not conn.execute(update(Artifact).where(*key).values(path=str(path))).rowcount:
                conn.execute(insert(Artifact), dict(run_id=int(run_id), kind=str(kind), path=str(path)))

    def finish(self, run_id: int, status: str, error: str | None = None,
               failure: str | None = None) -> None:
        """End a run: status is 'completed', 'failed' or 'diverged'; failure: the kind of a
        failure (`db.schema.FAILURES`; 'error' if not given)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status {status!r} is not one of {choices(FINAL_STATUSES)}")
        if status == "failed" and failure is None:
            failure = "error"
        if failure is not None and failure not in FAILURES:
            raise ValueError(f"failure {failure!r} is not one of {choices(FAILURES)}")
        now = _now()
        with self.engine.begin() as conn:
            started = conn.scalar(select(Run.started_at).where(Run.id == run_id))
            if started is None:
                raise ValueError(f"no run with id {run_id}")
            conn.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(status=status, ended_at=now, duration_s=(now - started).total_seconds(),
                        error=error, failure=failure)
            )

    def find_completed(self, config_hash: str) -> int | None:
        """Id of the latest completed run with this config hash, else None."""
        with self._reader.connect() as conn:
            return conn.scalar(
                select(Run.id)
                .where(Run.config_hash == config_hash, Run.status == "completed")
                .order_by(Run.id.desc())
                .limit(1)
            )

    def mark_stale_runs(self) -> list[int]:
        """Mark 'failed' the 'running' runs of this host whose process is gone; returns their ids.

        A SIGKILLed (or OOM-killed) job cannot mark itself; the next sweep on its host does.
        The process id may have been reused since, which leaves such a run 'running' (safe).
        """
        host, now = socket.gethostname(), _now()
        with self.engine.begin() as conn:
            candidates = conn.execute(
                select(Run.id, Run.pid).where(
                    Run.status == "running", Run.host == host, Run.pid != os.getpid()
                )
            ).all()
            dead = [(run_id, pid) for run_id, pid in candidates if not _process_alive(pid)]
            for run_id, pid in dead:
                conn.execute(
                    update(Run)
                    .where(Run.id == run_id)
                    .values(
                        status="failed", ended_at=now, failure="killed",
                        error=f"process {pid} on {host} ended without finishing the run (killed?)",
                    )
                )
        return [run_id for run_id, _ in dead]

    def beat(self, run_id: int) -> bool:
        """Write the heartbeat of run `run_id` if it is still 'running'; True if it was."""
        with self.engine.begin() as conn:
            return conn.execute(update(Run).where(Run.id == int(run_id), Run.status == "running")
                                .values(heartbeat_at=_now())).rowcount == 1

    def mark_silent_runs(self, after_s: float, by: str) -> list[tuple[int, str]]:
        """Mark 'failed' the 'running' runs of any host whose heartbeat is older than `after_s`
        seconds; returns [(id, error)]. `by` says who marked them ('python -m db mark-stale on
        host h'). A live run writes its heartbeat every db.heartbeat.every_s seconds."""
        now = _now()
        cutoff = now - timedelta(seconds=float(after_s))
        marked = []
        with self.engine.begin() as conn:
            silent = (Run.status == "running", Run.heartbeat_at < cutoff)
            rows = conn.execute(select(Run.id, Run.host, Run.pid, Run.heartbeat_at).where(*silent)).all()
            for run_id, host, pid, beat in rows:
                error = (f"no heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC (host {host}, pid {pid}): "
                         f"marked failed by {by} at {now:%Y-%m-%d %H:%M:%S} UTC")
                # Still silent when written (PostgreSQL's READ COMMITTED: a beat may land between).
                if conn.execute(update(Run).where(Run.id == run_id, *silent)
                                .values(status="failed", ended_at=now, error=error,
                                        failure="killed")).rowcount:
                    marked.append((run_id, error))
        return marked

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
