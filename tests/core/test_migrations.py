"""Alembic owns the schema: it round-trips, matches the models, and a stale database is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.core.config import Settings
from app.core.db import Database
from app.core.migrate import SchemaNotCurrent, alembic_config, check_schema_current, downgrade, upgrade
from app.core.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("postgres_url")
    downgrade(url, "base")
    request.addfinalizer(lambda: upgrade(url))  # leave the session database as the other tests expect it
    return url


def tables(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


ALL_TABLES = {
    "jobs",
    "sweeps",
    "workers",
    "metric_points",
    "checkpoints",
    "idempotency_keys",
    "users",
    "api_tokens",
    "job_logs",
    "job_nodes",
    "metric_buckets",
}


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    upgrade(empty_url)
    assert tables(empty_url) == ALL_TABLES
    downgrade(empty_url, "base")
    assert tables(empty_url) == set()
    upgrade(empty_url)
    assert tables(empty_url) == ALL_TABLES


def test_migrations_match_the_models(database_url: str) -> None:
    db = Database.from_url(database_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.dispose()
    assert diff == []


def test_api_refuses_a_database_behind_the_newest_migration(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.stamp(alembic_config(url), "base")
    settings = Settings(
        database_url=url,
        artifacts_dir=tmp_path / "a",
        admin_credentials_file=tmp_path / "admin-credentials",
        _env_file=None,  # type: ignore[call-arg]
    )
    with pytest.raises(SchemaNotCurrent, match="trainjobs-api migrate"), TestClient(create_app(settings)):
        pass
    upgrade(url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200


def test_check_names_the_revision_it_found(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    db = Database.from_url(url)
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    with pytest.raises(SchemaNotCurrent, match="has no schema yet"):
        check_schema_current(db.engine)
    db.dispose()


def test_0002_carries_depends_on_over_as_init_job_id(empty_url: str) -> None:
    """A database at 0001 with a pipeline in it: the finetune still points at its base after the upgrade."""
    upgrade(empty_url, "0001")
    engine = create_engine(empty_url.replace("postgresql://", "postgresql+psycopg://"))
    row = (
        "INSERT INTO jobs (kind, status, spec, priority, depends_on, attempt, max_attempts, cancel_requested,"
        " created_at, updated_at) VALUES (:kind, 'succeeded', '{}', 0, :base, 0, 3, false, :now, :now)"
    )
    now = "2026-11-30 12:00:00"
    with engine.begin() as conn:
        conn.execute(text(row), {"kind": "pretrain", "base": None, "now": now})
        conn.execute(text(row), {"kind": "finetune", "base": 1, "now": now})
        conn.execute(text(row), {"kind": "pretrain", "base": None, "now": now})
        conn.execute(text("DELETE FROM jobs WHERE id = 3"))
    upgrade(empty_url, "0002")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, init_job_id, parent_id FROM jobs ORDER BY id")).all() == [
            (1, None, None),
            (2, 1, None),
        ]
        conn.execute(text(row.replace("depends_on", "init_job_id")), {"kind": "pretrain", "base": None, "now": now})
        assert conn.execute(text("SELECT max(id) FROM jobs")).scalar_one() == 4  # a deleted job's id is never reused
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    engine.dispose()
    assert {"ix_jobs_claimable", "ix_jobs_running_lease", "ix_jobs_init_job_id", "ix_jobs_parent_id"} <= indexes


def test_0003_gives_existing_jobs_and_keys_to_a_first_admin(empty_url: str) -> None:
    """A database of 0002 with jobs and an Idempotency-Key: all of it belongs to 'admin' after the upgrade."""
    upgrade(empty_url, "0002")
    engine = create_engine(empty_url.replace("postgresql://", "postgresql+psycopg://"))
    now = "2026-11-30 12:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, status, spec, priority, attempt, max_attempts, cancel_requested,"
                " created_at, updated_at) VALUES ('pretrain', 'queued', '{}', 0, 0, 3, false, :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text("INSERT INTO idempotency_keys (key, request_hash, job_id, created_at) VALUES ('k', 'h', 1, :now)"),
            {"now": now},
        )
    upgrade(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, username, is_admin, password_hash FROM users")).all() == [
            (1, "admin", True, None)
        ]
        assert conn.execute(text("SELECT owner_id FROM jobs")).scalars().all() == [1]
        assert conn.execute(text("SELECT owner_id, key, job_id FROM idempotency_keys")).all() == [(1, "k", 1)]
    downgrade(empty_url, "0002")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT key, job_id FROM idempotency_keys")).all() == [("k", 1)]
    engine.dispose()
    upgrade(empty_url)


def test_0006_keeps_every_job_and_gives_them_no_sweep(empty_url: str) -> None:
    """A database of 0005 with jobs (one deleted): after the upgrade they are plain jobs with their ids,
    and a deleted job's id is still never handed out again."""
    upgrade(empty_url, "0005")
    engine = create_engine(empty_url.replace("postgresql://", "postgresql+psycopg://"))
    row = (
        "INSERT INTO jobs (owner_id, kind, status, spec, priority, attempt, max_attempts, cancel_requested,"
        " created_at, updated_at) VALUES (1, 'pretrain', 'succeeded', '{}', 0, 1, 3, false, :now, :now)"
    )
    now = "2026-12-02 12:00:00"
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (username, is_admin, is_active, created_at) VALUES ('a', true, true, :now)"),
            {"now": now},
        )
        for _ in range(3):
            conn.execute(text(row), {"now": now})
        conn.execute(text("DELETE FROM jobs WHERE id = 3"))
    upgrade(empty_url, "0006")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, sweep_id, trial_index FROM jobs ORDER BY id")).all() == [
            (1, None, None),
            (2, None, None),
        ]
        conn.execute(text(row), {"now": now})
        assert conn.execute(text("SELECT max(id) FROM jobs")).scalar_one() == 4
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    engine.dispose()
    assert "ix_jobs_sweep_id_status" in indexes and "ix_jobs_parent_id" not in indexes
    assert "parent_id" not in columns
    downgrade(empty_url, "0005")
    assert "sweeps" not in tables(empty_url)
    upgrade(empty_url)


def test_0007_gives_existing_jobs_their_arch_and_dataset(empty_url: str) -> None:
    upgrade(empty_url, "0006")
    engine = create_engine(empty_url.replace("postgresql://", "postgresql+psycopg://"))
    now = "2026-12-02 12:00:00"
    spec = '{"kind": "pretrain", "model": {"arch": "mlp_autoencoder"}, "dataset": {"name": "digits"}}'
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (username, is_admin, is_active, created_at) VALUES ('a', true, true, :now)"),
            {"now": now},
        )
        for body in (spec, "[]"):
            conn.execute(
                text(
                    "INSERT INTO jobs (owner_id, kind, status, spec, priority, attempt, max_attempts,"
                    " cancel_requested, created_at, updated_at)"
                    " VALUES (1, 'pretrain', 'queued', :spec, 0, 0, 3, false, :now, :now)"
                ),
                {"spec": body, "now": now},
            )
    upgrade(empty_url, "0007")
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT id, arch, dataset FROM jobs ORDER BY id")).all()
    engine.dispose()
    assert rows == [(1, "mlp_autoencoder", "digits"), (2, None, None)]
    downgrade(empty_url, "0006")
    upgrade(empty_url)
