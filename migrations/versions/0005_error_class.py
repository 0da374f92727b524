"""error class: why a job's last failed attempt failed (user, oom, crash, infra), for retries by class

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from app.core.migrate import rebuild_table

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VALID = "error_class IS NULL OR error_class IN ('user', 'oom', 'crash', 'infra')"


def upgrade() -> None:
    with rebuild_table("jobs") as batch:
        batch.add_column(sa.Column("error_class", sa.String(length=16), nullable=True))
        batch.create_check_constraint("error_class_valid", sa.text(VALID))


def downgrade() -> None:
    with rebuild_table("jobs") as batch:
        batch.drop_constraint("error_class_valid", type_="check")
        batch.drop_column("error_class")
