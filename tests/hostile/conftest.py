"""A real API process per backend, shared by a module's hostile tests, and ways to send it what a client would not.

Each module gets its own server and database on each backend; its tests make the jobs they need.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine

from app.core.migrate import upgrade
from devtools.servers import ApiServer
from tests.conftest import BACKENDS, new_postgres_database

pytestmark = pytest.mark.slow


@dataclass
class Live:
    """A running API (its first admin acts on the public API) and its database."""

    api: ApiServer
    http: httpx.Client
    backend: str
    database_url: str

    def raw(self, method: str, path: str, body: str | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """Send ``body`` as it is, as JSON: what ``json=`` would refuse to make (NaN, ``"\\ud800"``, depth)."""
        content = body.encode() if isinstance(body, str) else body
        return self.http.request(
            method, path, content=content, headers={"Content-Type": "application/json", **(headers or {})}
        )

    def engine(self) -> Engine:
        """A connection to its database, to store what the API never would."""
        return create_engine(self.database_url)

    def assert_up(self) -> None:
        """The service still answers everyone: health and the job list."""
        assert self.http.get("/healthz").status_code == 200
        assert self.http.get("/jobs").status_code == 200, self.http.get("/jobs").text


def dumps(value: Any) -> str:
    """JSON as the standard library writes it: lone surrogates as escapes, NaN as NaN."""
    return json.dumps(value)


MAX_UPLOAD_BYTES = 16 * 1024 * 1024
SETTINGS = {"max_upload_bytes": str(MAX_UPLOAD_BYTES)}
"""The settings of every hostile test's server: small limits, to reach them quickly."""


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp(f"live-{request.param}")
    with (
        database_for(request.param, root) as url,
        ApiServer(root, url, **SETTINGS) as api,
        api.client(timeout=30) as http,
    ):
        yield Live(api, http, request.param, url)


def database_for(backend: str, root: Path) -> AbstractContextManager[str]:
    """A new, migrated database on ``backend``, removed afterwards (PostgreSQL) or left under ``root``."""
    if backend == "postgresql":
        return new_postgres_database()
    url = f"sqlite:///{root / 'trainjobs.db'}"
    upgrade(url)
    return nullcontext(url)
