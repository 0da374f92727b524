"""accounts: users, API tokens, an owner for every job, idempotency keys per owner

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A database that already holds jobs gets one admin, ``admin``, who owns them all; it has no password
and no token until the service's first start gives it both (app/core/accounts.py, written to
``var/admin-credentials``).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from app.core.migrate import rebuild_table

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER_FK = "fk_jobs_owner_id_users"


def _now() -> datetime:
    return datetime.now(UTC)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('user', 'worker')", name="token_kind_valid"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_hash"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"], unique=False)

    bind = op.get_bind()
    with rebuild_table("jobs") as batch:
        batch.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
    if bind.execute(sa.text("SELECT 1 FROM jobs LIMIT 1")).first() is not None:
        users = sa.table(
            "users",
            sa.column("id", sa.Integer()),
            sa.column("username", sa.String()),
            sa.column("is_admin", sa.Boolean()),
            sa.column("is_active", sa.Boolean()),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        values = {"username": "admin", "is_admin": True, "is_active": True, "created_at": _now()}
        admin_id = bind.execute(sa.insert(users).values(**values).returning(users.c.id)).scalar_one()
        op.execute(sa.text("UPDATE jobs SET owner_id = :owner").bindparams(owner=admin_id))
    with rebuild_table("jobs") as batch:
        batch.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(OWNER_FK, "users", ["owner_id"], ["id"], ondelete="RESTRICT")
    op.create_index("ix_jobs_owner_status_id", "jobs", ["owner_id", "status", "id"], unique=False)

    # Keys are per owner now: a new table with (owner_id, key) as its key, the old rows copied over.
    op.create_table(
        "idempotency_keys_v3",
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("owner_id", "key"),
    )
    op.execute(
        "INSERT INTO idempotency_keys_v3 (owner_id, key, request_hash, job_id, created_at) "
        "SELECT jobs.owner_id, k.key, k.request_hash, k.job_id, k.created_at "
        "FROM idempotency_keys k JOIN jobs ON jobs.id = k.job_id"
    )
    op.drop_table("idempotency_keys")
    op.rename_table("idempotency_keys_v3", "idempotency_keys")


def downgrade() -> None:
    op.create_table(
        "idempotency_keys_v2",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key"),
    )
    # One key per value again: where two owners used the same key, the newest is kept.
    op.execute(
        "INSERT INTO idempotency_keys_v2 (key, request_hash, job_id, created_at) "
        "SELECT k.key, k.request_hash, k.job_id, k.created_at FROM idempotency_keys k "
        "WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys newer WHERE newer.key = k.key "
        "AND (newer.created_at > k.created_at OR (newer.created_at = k.created_at AND newer.owner_id > k.owner_id)))"
    )
    op.drop_table("idempotency_keys")
    op.rename_table("idempotency_keys_v2", "idempotency_keys")
    op.drop_index("ix_jobs_owner_status_id", table_name="jobs")
    with rebuild_table("jobs") as batch:
        batch.drop_constraint(OWNER_FK, type_="foreignkey")
        batch.drop_column("owner_id")
    op.drop_index("ix_api_tokens_user_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
