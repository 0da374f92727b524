"""job relations named for what they are: depends_on becomes init_job_id; parent_id added

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

On SQLite, batch mode rebuilds the jobs table: its partial indexes and check constraints are
reflected and rebuilt; AUTOINCREMENT is not reflected, so it is restated, and the table's counter
(sqlite_sequence) is carried over, so that a deleted job's id is still never handed out again.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARENT_FK = "fk_jobs_parent_id_jobs"
SQLITE_TABLE = {"sqlite_autoincrement": True}


def _rebuild_jobs() -> Iterator[BatchOperations]:
    """A batch of changes to jobs; on SQLite a rebuild that keeps the table's AUTOINCREMENT counter."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    counter = "SELECT seq FROM sqlite_sequence WHERE name = 'jobs'"
    last_id = op.get_bind().exec_driver_sql(counter).scalar() if sqlite else None
    with op.batch_alter_table("jobs", table_kwargs=SQLITE_TABLE) as batch:
        yield batch
    if last_id is not None:
        op.execute(
            sa.text("UPDATE sqlite_sequence SET seq = max(seq, :last) WHERE name = 'jobs'").bindparams(last=last_id)
        )


rebuild_jobs = contextmanager(_rebuild_jobs)


def upgrade() -> None:
    op.drop_index("ix_jobs_depends_on", table_name="jobs")
    with rebuild_jobs() as batch:
        batch.alter_column("depends_on", new_column_name="init_job_id", existing_type=sa.Integer())
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(PARENT_FK, "jobs", ["parent_id"], ["id"], ondelete="RESTRICT")
    op.create_index("ix_jobs_init_job_id", "jobs", ["init_job_id"], unique=False)
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    op.drop_index("ix_jobs_init_job_id", table_name="jobs")
    with rebuild_jobs() as batch:
        batch.drop_constraint(PARENT_FK, type_="foreignkey")
        batch.drop_column("parent_id")
        batch.alter_column("init_job_id", new_column_name="depends_on", existing_type=sa.Integer())
    op.create_index("ix_jobs_depends_on", "jobs", ["depends_on"], unique=False)
