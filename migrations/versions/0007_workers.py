"""workers: what each worker can run, and when it was last heard from; jobs get arch and dataset to match

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.migrate import rebuild_table

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), primary_key=True),
        sa.Column("host", sa.String(length=200), nullable=True),
        sa.Column("version", sa.String(length=50), nullable=True),
        sa.Column("capabilities", sa.JSON(), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen"], unique=False)
    # Plain columns, no table rebuild: jobs keep their ids and rows; existing jobs get theirs from the spec.
    op.add_column("jobs", sa.Column("arch", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("dataset", sa.String(length=64), nullable=True))
    op.create_index("ix_jobs_lease_owner_finished_at", "jobs", ["lease_owner", "finished_at"], unique=False)
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "UPDATE jobs SET arch = substr(json_extract(spec, '$.model.arch'), 1, 64),"
            " dataset = substr(json_extract(spec, '$.dataset.name'), 1, 64) WHERE json_valid(spec)"
        )
    else:
        op.execute(
            "UPDATE jobs SET arch = left(spec::json #>> '{model,arch}', 64),"
            " dataset = left(spec::json #>> '{dataset,name}', 64)"
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_lease_owner_finished_at", table_name="jobs")
    with rebuild_table("jobs") as batch:
        batch.drop_column("dataset")
        batch.drop_column("arch")
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
