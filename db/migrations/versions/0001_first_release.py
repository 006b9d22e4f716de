"""Schema 1, the first release: runs, metrics, artifacts (no schema_info).

Frozen: the tables as db/schema.py described them at commit 2164b52, the last one before
schema_info. Files written before `threads` and `versions` existed lack them; revision 2 adds
whatever is missing, so it takes such a file too.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

UtcDateTime = sa.DateTime(timezone=True)
STATUSES = "status IN ('running', 'completed', 'failed', 'diverged')"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(16), nullable=False),
        *(sa.Column(name, sa.Text, nullable=False) for name in ("task", "dataset", "model", "norm")),
        sa.Column("bs", sa.Integer, nullable=False),
        sa.Column("lr", sa.Double, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("epochs", sa.Integer, nullable=False),
        sa.Column("epochs_done", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("output_dir", sa.Text),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("ended_at", UtcDateTime),
        sa.Column("heartbeat_at", UtcDateTime, nullable=False),
        sa.Column("duration_s", sa.Double),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("threads", sa.Integer),
        sa.Column("torch_version", sa.Text, nullable=False),
        sa.Column("versions", sa.Text),
        sa.Column("code_version", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.CheckConstraint(STATUSES, name="ck_runs_status"),
        sa.CheckConstraint("bs > 0", name="ck_runs_bs_positive"),
        sa.CheckConstraint("lr > 0", name="ck_runs_lr_positive"),
        sa.CheckConstraint("epochs > 0", name="ck_runs_epochs_positive"),
    )
    op.create_index("ix_runs_experiment", "runs", ["task", "dataset", "model", "norm", "bs"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_config_hash", "runs", ["config_hash"])
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE",
                                                      name="fk_metrics_run_id"), primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("split", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Double),
        sa.CheckConstraint("epoch >= 0", name="ck_metrics_epoch_nonnegative"),
    )
    op.create_table(
        "artifacts",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE",
                                                      name="fk_artifacts_run_id"), primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("normbench's revisions only add: there is no downgrade")
