"""Schema 2 (commit f9d3471): runs.uid, launcher, scheduler_job_id, attempts, and schema_info.

Also `threads` and `versions`, for a first-release file written before them. Only nullable
columns: an old row reads NULL in each, no row is rewritten.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

COLUMNS = {"threads": sa.Integer, "versions": sa.Text, "uid": lambda: sa.String(32),
           "launcher": sa.Text, "scheduler_job_id": sa.Text, "attempts": sa.Integer}


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    for name, kind in COLUMNS.items():
        if name not in have:
            op.add_column("runs", sa.Column(name, kind()))
    op.create_index("ix_runs_uid", "runs", ["uid"], if_not_exists=True)
    op.create_table("schema_info", sa.Column("version", sa.Integer, primary_key=True),
                    if_not_exists=True)


def downgrade() -> None:
    raise NotImplementedError("normbench's revisions only add: there is no downgrade")
