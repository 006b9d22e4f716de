"""The results database: one row per training run, one row per (run, epoch, split, metric).

This schema is a public interface: query it with plain SQL (sqlite3, psql, pandas.read_sql).

Table ``runs``
    id            integer primary key, assigned on insert.
    status        'running' while training; then 'completed', 'failed' (an exception, or the
                  process died: see ``ResultsDB.mark_stale_runs``) or 'diverged' (loss became
                  NaN/inf; training stopped on purpose).
    task          runner name, e.g. 'classify'.
    dataset       dataset name, e.g. 'cifar10'.
    model         model name, e.g. 'resnet18'.
    norm          normalization layer name, e.g. 'bn', 'gn'.
    bs            batch size (> 0).
    lr            learning rate (> 0).
    seed          random seed.
    epochs        number of epochs configured (> 0).
    epochs_done   highest epoch logged so far (0 before the first); < epochs if the run ended early.
    config        the full resolved config as JSON (``json_extract(config, '$.optim.wd')`` in
                  SQLite, ``config->'optim'->>'wd'`` in PostgreSQL).
    config_hash   64 hex chars identifying the config; equal hashes mean the same experiment.
    output_dir    the job's output directory (Hydra job dir), or NULL.
    started_at    when the run's latest attempt started (see ``attempts``).
    ended_at      when it ended, NULL while running.
    heartbeat_at  written at the start, at each epoch's end and every ``db.heartbeat.every_s``
                  seconds while training (a thread of the run's process); a 'running' row older
                  than ``db.heartbeat.stale_after_s`` is taken for dead and marked 'failed'
                  (``ResultsDB.mark_silent_runs``, ``python -m db mark-stale``).
    duration_s    ended_at - started_at in seconds; NULL while running, and for a run whose
                  process died (its end time is unknown: ended_at is when that was noticed).
    host          hostname of the machine that ran it.
    pid           process id of the run on that host.
    device        'cpu', 'cuda', 'cuda:0', ...
    threads       CPU threads the run's process used (torch.get_num_threads()). CPU reductions
                  are summed in an order that depends on it, so the same seed gives the same
                  numbers only at the same thread count. NULL in rows written before it existed.
    torch_version torch version string, 'unknown' if torch was not installed.
    versions      JSON text: the versions of the libraries that shape the numbers or the config,
                  {"torch": "2.5.1", "torchvision", "numpy", "scipy", "torchmetrics",
                  "scikit-learn", "pillow", "hydra-core", "omegaconf", "sqlalchemy", "python"},
                  'not installed' for one that was not (``json_extract(versions, '$.numpy')`` in
                  SQLite, ``versions::json->>'numpy'`` in PostgreSQL). NULL in rows written
                  before it existed.
    code_version  ``git describe --always --dirty --tags`` of the code, else the package version.
    error         why the run failed or diverged, else NULL; while a requeued scheduler job waits
                  for its next attempt, the requeue note.
    uid           a random 32-hex-digit id given when the row is written: the run's identity across
                  databases (``python -m db merge`` copies a shard's run once, whatever its id).
                  NULL in rows written before it existed.
    launcher      the Hydra launcher that started the job: 'basic' (one job at a time), 'joblib',
                  'submitit_local', 'submitit_slurm'. NULL in rows written before it existed.
    scheduler_job_id  the scheduler's id of the job: SLURM's ``SLURM_JOB_ID``, as
                  ``ARRAYJOB_TASK`` (``SLURM_ARRAY_JOB_ID`` + '_' + ``SLURM_ARRAY_TASK_ID``) for an
                  array task, or submitit's local job id; NULL outside a scheduler.
    attempts      how many times this run was started: 1, plus one for each requeue of the same
                  scheduler job (a timeout or preemption), which continues in this row.
                  NULL in rows written before it existed. A run resumed from its checkpoint
                  (a rerun of the same command, or a requeue) continues in its row: + 1.
    failure       why a 'failed' run failed, as a kind (``FAILURES``): 'error' (an exception in
                  its own code: not resumed by default, it would fail again), 'killed' (its
                  process died, or its heartbeat stopped), 'sigterm', 'interrupt' (Ctrl-C),
                  'requeued' (submitit), 'checkpoint' (an unusable checkpoint with
                  checkpoint.strict=true); a rerun resumes all but 'error'. NULL otherwise, and
                  in rows written before it existed.
    repeat_of     for a run trained again on purpose (``resume=false``) while another run of the
                  same config_hash existed: that run's id; the analysis averages one run per
                  config unless asked for repeats. NULL for every other run.

Table ``schema_info`` (one row)
    version       the schema's version, ``db.schema.SCHEMA_VERSION``; a file written before the
                  table existed has none and is version 1. A writer brings an older file up to date
                  (it only adds nullable columns and tables); ``python -m db merge`` refuses
                  to mix versions.

Table ``alembic_version`` (one row; Alembic's, https://alembic.sqlalchemy.org)
    version_num   the schema's revision in db/migrations/versions: '0003' is version 3, equal to
                  ``schema_info.version``. A file without it was written before Alembic (version 1
                  or 2); a writer stamps and upgrades it. A revision this code does not know (a
                  newer normbench's) is refused and the file is not touched.

Table ``metrics`` (primary key run_id, epoch, split, name: each value is written once)
    run_id        runs.id; deleting a run deletes its metrics.
    epoch         1..epochs; 0 is an evaluation before training.
    split         'train', 'test', 'val', ...
    name          'loss', 'acc', 'time_s', 'images_per_s', ...
    value         the value; NULL means NaN (SQLite cannot store NaN; we write NULL on every
                  backend so the meaning is the same). +inf and -inf are stored as they are.

Table ``artifacts`` (primary key run_id, kind: one file of each kind per run)
    run_id        runs.id; deleting a run deletes its rows (not the files).
    kind          what the file is: 'samples' (the GAN's grid of generated images, a PNG).
    path          absolute path of the file, on the host that ran the run (`runs.host`).

All times are UTC. SQLite has no time zone type: times are stored as naive UTC text
('2025-01-31 12:00:00.123456'); PostgreSQL stores ``timestamptz``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# 1: before schema_info; 2: runs.uid, launcher, scheduler_job_id, attempts and schema_info;
# 3: runs.failure, repeat_of. The number of db/migrations' head revision (tests check they agree).
SCHEMA_VERSION = 3

STATUSES = ("running", "completed", "failed", "diverged")
FINAL_STATUSES = STATUSES[1:]
# runs.failure: why a 'failed' run failed; every kind but 'error' is resumed by a rerun.
FAILURES = ("error", "killed", "sigterm", "interrupt", "requeued", "checkpoint")

class UtcDateTime(TypeDecorator):
    """A time, aware and in UTC in Python on every backend. SQLite stores no zone (we always
    write UTC) and gives back naive times; PostgreSQL gives back the session's zone (PGTZ):
    read back, both are UTC here, so no reader has to mend them."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="ck_runs_status"),
        CheckConstraint("bs > 0", name="ck_runs_bs_positive"),
        CheckConstraint("lr > 0", name="ck_runs_lr_positive"),
        CheckConstraint("epochs > 0", name="ck_runs_epochs_positive"),
        # The analysis groups and filters by these (one curve per norm at each batch size).
        Index("ix_runs_experiment", "task", "dataset", "model", "norm", "bs"),
        Index("ix_runs_status", "status"),
        Index("ix_runs_config_hash", "config_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(Text)
    dataset: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    norm: Mapped[str] = mapped_column(Text)
    bs: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Double)
    seed: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    output_dir: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    duration_s: Mapped[float | None] = mapped_column(Double)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(Text)
    threads: Mapped[int | None] = mapped_column(Integer)
    torch_version: Mapped[str] = mapped_column(Text)
    # Text holding JSON, not a JSON column: ALTER TABLE adds it as TEXT to older files
    # (db.engine.ADDED_COLUMNS), and a new file must have the same type on every backend.
    versions: Mapped[str | None] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    uid: Mapped[str | None] = mapped_column(String(32), index=True)
    launcher: Mapped[str | None] = mapped_column(Text)
    scheduler_job_id: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int | None] = mapped_column(Integer)
    failure: Mapped[str | None] = mapped_column(Text)
    repeat_of: Mapped[int | None] = mapped_column(Integer)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (CheckConstraint("epoch >= 0", name="ck_metrics_epoch_nonnegative"),)

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE", name="fk_metrics_run_id"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    # NULL = NaN (see the module docstring).
    value: Mapped[float | None] = mapped_column(Double)


class Artifact(Base):
    __tablename__ = "artifacts"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE", name="fk_artifacts_run_id"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    path: Mapped[str] = mapped_column(Text)


class SchemaInfo(Base):
    __tablename__ = "schema_info"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
