"""Shared fixtures: every database test runs on a real SQLite file and on the real PostgreSQL server.

``TRAINJOBS_TEST_BACKENDS=sqlite`` (or ``postgresql``) narrows the run; CI runs both.
PostgreSQL is started if it is down. Each test gets a clean database: a copy of a
migrated SQLite template, or a truncated PostgreSQL database made for this session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from app.core import accounts
from app.core.config import Settings
from app.core.db import Database
from app.core.migrate import upgrade
from app.core.models import User
from app.core.states import TokenKind
from devtools.servers import WORKER_TOKEN
from tests.authed import AuthedClient

BACKENDS = [b.strip() for b in os.environ.get("TRAINJOBS_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]
PG_ADMIN_URL = os.environ.get("TRAINJOBS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = (
    "job_nodes, metric_buckets, metric_points, checkpoints, idempotency_keys, jobs, sweeps, workers, api_tokens, users"
)
USERS = (("root", True), ("alice", False), ("bob", False))
"""Every API test's users: an admin and two users; the test client acts for alice."""


def ensure_postgres_running() -> None:
    def ready() -> bool:
        return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0

    if ready():
        return
    versions = os.listdir("/etc/postgresql")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"], check=False)
    for _ in range(60):
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError("PostgreSQL at 127.0.0.1:5432 is not running and could not be started")


@contextmanager
def new_postgres_database() -> Iterator[str]:
    """The URL of a new, migrated PostgreSQL database, dropped afterwards."""
    if "postgresql" not in BACKENDS:
        pytest.skip("TRAINJOBS_TEST_BACKENDS leaves out postgresql (CI runs both)")
    ensure_postgres_running()
    name = f"trainjobs_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "trainjobs.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, migrated database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "trainjobs.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url)
    yield database
    database.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        artifacts_dir=tmp_path / "artifacts",
        data_dir=tmp_path / "data",
        worker_token=SecretStr(WORKER_TOKEN),
        admin_credentials_file=tmp_path / "admin-credentials",
        claim_poll_seconds=0.2,
        _env_file=None,  # type: ignore[call-arg]
    )


def store_owner(session: Session) -> int:
    """The id of the user 'tester' (made on first use): the owner of the jobs the store tests submit."""
    found = session.scalars(select(User.id).where(User.username == "tester")).first()
    return found if found is not None else accounts.create_user(session, "tester").id


@pytest.fixture
def tokens(db: Database) -> dict[str, str]:
    """A user token of each of USERS, by name (token-only users: no password hashing to wait for)."""
    made = {}
    with db.write() as session:
        for name, is_admin in USERS:
            user = accounts.create_user(session, name, is_admin=is_admin)
            made[name] = accounts.issue_token(session, user, TokenKind.USER, "tests").token
    return made


@pytest.fixture
def client(settings: Settings, db: Database, tokens: dict[str, str]) -> Iterator[AuthedClient]:
    from app.main import create_app

    with AuthedClient(create_app(settings, db), tokens["alice"]) as c:
        yield c


def pretrain_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "pretrain",
        "name": "ae",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp_autoencoder", "hidden": [32], "bottleneck": 8},
        "train": {"epochs": 2, "batch_size": 64},
    }
    body.update(overrides)
    return body


def finetune_body(base_id: int | None = None, **overrides: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"arch": "mlp", "num_classes": 10, "hidden": [32], "bottleneck": 8}
    if base_id is not None:
        model["init"] = {"from": "job", "job_id": base_id}
    body: dict[str, Any] = {
        "kind": "finetune",
        "name": "clf",
        "dataset": {"name": "digits", "labels_per_class": 10},
        "model": model,
        "train": {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
    }
    body.update(overrides)
    return body


# The smallest real training job: a second or so on one CPU core.
TINY_JOB: dict[str, Any] = {
    "kind": "pretrain",
    "dataset": {"name": "synthetic", "num_samples": 32, "image_shape": [1, 8, 8]},
    "model": {"arch": "mlp_autoencoder", "hidden": [16], "bottleneck": 4},
    "train": {"epochs": 1, "batch_size": 16},
}
