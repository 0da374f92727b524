"""sweeps: a table of sweeps; jobs get sweep_id, trial_index, trial_params (parent_id, never used, goes)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.migrate import rebuild_table

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARENT_FK = "fk_jobs_parent_id_jobs"
SWEEP_FK = "fk_jobs_sweep_id_sweeps"


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "owner_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="RESTRICT", name="fk_sweeps_owner_id_users"),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("trial_count", sa.Integer(), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sweeps_owner_id_id", "sweeps", ["owner_id", "id"], unique=False)
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    with rebuild_table("jobs") as batch:
        batch.drop_constraint(PARENT_FK, type_="foreignkey")
        batch.drop_column("parent_id")
        batch.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("trial_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("trial_params", sa.JSON(), nullable=True))
        batch.create_foreign_key(SWEEP_FK, "sweeps", ["sweep_id"], ["id"], ondelete="RESTRICT")
    op.create_index("ix_jobs_sweep_id_status", "jobs", ["sweep_id", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_sweep_id_status", table_name="jobs")
    with rebuild_table("jobs") as batch:
        batch.drop_constraint(SWEEP_FK, type_="foreignkey")
        batch.drop_column("trial_params")
        batch.drop_column("trial_index")
        batch.drop_column("sweep_id")
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(PARENT_FK, "jobs", ["parent_id"], ["id"], ondelete="RESTRICT")
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"], unique=False)
    op.drop_index("ix_sweeps_owner_id_id", table_name="sweeps")
    op.drop_table("sweeps")
