"""job relations named for what they are: depends_on becomes init_job_id; parent_id added

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

On SQLite the jobs table is rebuilt (``rebuild_table``), keeping its indexes, checks and id counter.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.migrate import rebuild_table

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARENT_FK = "fk_jobs_parent_id_jobs"


def upgrade() -> None:
    op.drop_index("ix_jobs_depends_on", table_name="jobs")
    with rebuild_table("jobs") as batch:
        batch.alter_column("depends_on", new_column_name="init_job_id", existing_type=sa.Integer())
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(PARENT_FK, "jobs", ["parent_id"], ["id"], ondelete="RESTRICT")
    op.create_index("ix_jobs_init_job_id", "jobs", ["init_job_id"], unique=False)
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    op.drop_index("ix_jobs_init_job_id", table_name="jobs")
    with rebuild_table("jobs") as batch:
        batch.drop_constraint(PARENT_FK, type_="foreignkey")
        batch.drop_column("parent_id")
        batch.alter_column("init_job_id", new_column_name="depends_on", existing_type=sa.Integer())
    op.create_index("ix_jobs_depends_on", "jobs", ["depends_on"], unique=False)
