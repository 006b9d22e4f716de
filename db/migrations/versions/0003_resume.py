"""Schema 3 (issue 12, resume): runs.failure (why a 'failed' run failed) and runs.repeat_of (the
run that a deliberate `resume=false` run repeats). Nullable: old rows read NULL.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    for name, kind in (("failure", sa.Text), ("repeat_of", sa.Integer)):
        if name not in have:  # a file stamped from its tables alone may have one (revision 2 too)
            op.add_column("runs", sa.Column(name, kind))


def downgrade() -> None:
    raise NotImplementedError("normbench's revisions only add: there is no downgrade")
