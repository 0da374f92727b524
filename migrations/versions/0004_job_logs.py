"""job logs: each job's stdout, stderr and system lines, per attempt; how much of it is stored; metric
batches numbered (the event stream's cursor)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.migrate import rebuild_table

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


COUNTERS = ("log_bytes", "log_dropped_bytes", "log_dropped_lines", "metric_batches")


def upgrade() -> None:
    op.create_table(
        "job_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("stream", sa.String(length=16), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.CheckConstraint("stream IN ('stdout', 'stderr', 'system')", name="stream_valid"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "attempt", "seq", name="uq_job_logs_job_attempt_seq"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_logs_job_id_id", "job_logs", ["job_id", "id"], unique=False)
    with rebuild_table("jobs") as batch:
        for column in COUNTERS:
            batch.add_column(sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("metric_points", sa.Column("batch", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_metric_points_job_id_batch", "metric_points", ["job_id", "batch"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_metric_points_job_id_batch", table_name="metric_points")
    with op.batch_alter_table("metric_points") as points:
        points.drop_column("batch")
    with rebuild_table("jobs") as batch:
        for column in COUNTERS:
            batch.drop_column(column)
    op.drop_index("ix_job_logs_job_id_id", table_name="job_logs")
    op.drop_table("job_logs")
