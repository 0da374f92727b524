"""resources: jobs say the GPUs and nodes they need, workers how many devices they have free; job_nodes holds
the workers of a multi-node job

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.migrate import rebuild_table

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every job stored so far asked for one device on one node: the server defaults are theirs.
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), server_default="1", nullable=False))
    op.add_column("jobs", sa.Column("nodes", sa.Integer(), server_default="1", nullable=False))
    op.add_column("workers", sa.Column("gpus", sa.Integer(), server_default="0", nullable=False))
    op.add_column("workers", sa.Column("free", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "job_nodes",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("node", sa.Integer(), primary_key=True),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(length=300), nullable=True),
    )
    op.create_index("ix_job_nodes_worker_id", "job_nodes", ["worker_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_nodes_worker_id", table_name="job_nodes")
    op.drop_table("job_nodes")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("free")
        batch.drop_column("gpus")
    with rebuild_table("jobs") as batch:
        batch.drop_column("nodes")
        batch.drop_column("gpus")
