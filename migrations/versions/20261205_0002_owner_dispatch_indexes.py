"""indexes for the fair dispatch: when each owner was last served

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 21:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_owner_started_at", ["owner", "started_at"], unique=False)
        batch_op.create_index("ix_jobs_owner_finished_at", ["owner", "finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner_finished_at")
        batch_op.drop_index("ix_jobs_owner_started_at")
