"""metric buckets: each series summed up per range of steps and per epoch (reads of long series), and on SQLite
metric_points stored in (job, name, step) order (WITHOUT ROWID); the buckets of the points already stored

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POINT_COLUMNS = "job_id, name, step, epoch, value, time, batch"


def point_table(name: str, *, rowid: bool) -> None:
    op.create_table(
        name,
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("batch", sa.BigInteger(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name", "step"),
        sqlite_with_rowid=rowid,
    )


def rebuild_points(*, rowid: bool) -> None:
    """SQLite: metric_points again, with or without its rowid (its rows copied, its index made again)."""
    op.drop_index("ix_metric_points_job_id_batch", table_name="metric_points")
    point_table("metric_points_new", rowid=rowid)
    op.execute(f"INSERT INTO metric_points_new ({POINT_COLUMNS}) SELECT {POINT_COLUMNS} FROM metric_points")
    op.drop_table("metric_points")
    op.rename_table("metric_points_new", "metric_points")
    op.create_index("ix_metric_points_job_id_batch", "metric_points", ["job_id", "batch"], unique=False)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        rebuild_points(rowid=False)
    parts = ("step", "epoch", "value", "time")
    op.create_table(
        "metric_buckets",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        *(
            sa.Column(
                f"{which}_{part}",
                sa.BigInteger() if part == "step" else sa.Integer() if part == "epoch" else sa.Float(),
                nullable=part == "epoch",
            )
            for which in ("first", "last", "low", "high")
            for part in parts
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name", "level", "bucket"),
        sqlite_with_rowid=False,
    )
    backfill()


def backfill() -> None:
    """The buckets of every series stored so far, read a series at a time in step order."""
    from sqlalchemy.orm import Session

    from app.core import rollups

    bind = op.get_bind()
    session = Session(bind=bind)
    series = bind.execute(sa.text("SELECT DISTINCT job_id, name FROM metric_points")).all()
    for job_id, name in series:
        rows = bind.execute(
            sa.text("SELECT step, epoch, value, time FROM metric_points WHERE job_id = :j AND name = :n ORDER BY step"),
            {"j": job_id, "n": name},
        )
        buckets = rollups.group(tuple(row) for row in rows)
        rollups.write(session, job_id, {(name, level, bucket): b for (level, bucket), b in buckets.items()})
    session.flush()


def downgrade() -> None:
    op.drop_table("metric_buckets")
    if op.get_bind().dialect.name == "sqlite":
        rebuild_points(rowid=True)
