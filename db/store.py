"""`ResultsDB`: how a training run records itself, one short transaction per call.

Opening the file safely for many processes is `db.engine`'s job; this module only writes rows.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import case, insert, select, update

from bench.errors import choices
from db.engine import open_engine
from db.schema import FINAL_STATUSES, Artifact, Metric, Run


@functools.cache
def code_version() -> str:
    """`git describe` of the checkout holding this package, else the installed version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():  # not an unrelated repo that merely contains site-packages
        try:
            out = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--tags"],
                cwd=root, capture_output=True, text=True, timeout=5, check=True,
                # --dirty may refresh .git/index; parallel jobs must not fight over index.lock.
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass  # no git, no commit yet, or too slow
    try:
        return importlib.metadata.version("normbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _torch_version() -> str:
    # `import torch` takes ~3.6 s here; a training process has it loaded already, and the
    # installed package's metadata gives the same string without importing it.
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# The distributions whose versions change what a run computes (torch's and torchvision's kernels
# and transforms, numpy's and scipy's numerics, torchmetrics' FID, scikit-learn's and pillow's
# datasets and image decoding) or how its config is composed (hydra-core, omegaconf), and the
# database layer that stores the numbers (sqlalchemy).
VERSIONED = ("torch", "torchvision", "numpy", "scipy", "torchmetrics", "scikit-learn", "pillow",
             "hydra-core", "omegaconf", "sqlalchemy")


@functools.cache
def _versions_json() -> str:
    # Installed metadata, not `import`: importing torch or scipy only to read a version takes
    # seconds; the metadata gives the same strings, once per process.
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return json.dumps(versions)


def library_versions() -> dict[str, str]:
    """{distribution name: version} of `VERSIONED` ('not installed' if absent), and 'python'."""
    return json.loads(_versions_json())


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
        now = _now()
        row = dict(
            status="running", task=task, dataset=dataset, model=model, norm=norm, bs=int(bs),
            lr=float(lr), seed=int(seed), epochs=int(epochs), epochs_done=0, config=config,
            config_hash=config_hash, output_dir=None if output_dir is None else str(output_dir),
            started_at=now, heartbeat_at=now, host=socket.gethostname(), pid=os.getpid(),
            device=str(device), threads=None if threads is None else int(threads),
            torch_version=_torch_version(), versions=_versions_json(), code_version=code_version(),
            uid=uuid.uuid4().hex, launcher=launcher, scheduler_job_id=scheduler_job_id, attempts=1,
        )
        with self.engine.begin() as conn:
            return conn.execute(insert(Run), row).inserted_primary_key[0]

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

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        """End a run: status is 'completed', 'failed' or 'diverged'."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status {status!r} is not one of {choices(FINAL_STATUSES)}")
        now = _now()
        with self.engine.begin() as conn:
            started = conn.scalar(select(Run.started_at).where(Run.id == run_id))
            if started is None:
                raise ValueError(f"no run with id {run_id}")
            if started.tzinfo is None:  # SQLite gives back naive UTC
                started = started.replace(tzinfo=UTC)
            conn.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(status=status, ended_at=now, duration_s=(now - started).total_seconds(),
                        error=error)
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
                        status="failed", ended_at=now,
                        error=f"process {pid} on {host} ended without finishing the run (killed?)",
                    )
                )
        return [run_id for run_id, _ in dead]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
