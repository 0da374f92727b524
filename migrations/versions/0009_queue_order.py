"""queue order: the claim's index in the claim's order (priority DESC, created_at, id), so it stops at the first
row instead of sorting the whole queue

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = "status = 'queued'"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_queue",
        "jobs",
        [sa.text("priority DESC"), "created_at", "id"],
        unique=False,
        sqlite_where=sa.text(QUEUED),
        postgresql_where=sa.text(QUEUED),
    )
    op.drop_index("ix_jobs_claimable", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "ix_jobs_claimable",
        "jobs",
        ["priority", "created_at", "id"],
        unique=False,
        sqlite_where=sa.text(QUEUED),
        postgresql_where=sa.text(QUEUED),
    )
    op.drop_index("ix_jobs_queue", table_name="jobs")
