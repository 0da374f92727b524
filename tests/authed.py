"""A TestClient that authenticates like a real caller: a user token on the public API, the worker token on /worker/*.

Give an ``Authorization`` header to send another, or use ``client.as_user(token)`` / ``client.anonymous()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi.testclient import TestClient

from devtools.servers import WORKER_TOKEN


class AuthedClient(TestClient):
    def __init__(self, app: Any, user_token: str | None, worker_token: str | None = WORKER_TOKEN) -> None:
        super().__init__(app)
        self.user_token, self.worker_token = user_token, worker_token

    def request(self, method: str, url: Any, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
        given = httpx.Headers(headers)
        if "authorization" not in given:
            token = self.worker_token if str(url).startswith("/worker/") else self.user_token
            if token is not None:
                given["Authorization"] = f"Bearer {token}"
        return super().request(method, url, *args, headers=given, **kwargs)

    @contextmanager
    def as_user(self, token: str | None) -> Iterator[AuthedClient]:
        """Act for another user (None: send no user token) inside the block."""
        before, self.user_token = self.user_token, token
        try:
            yield self
        finally:
            self.user_token = before

    @contextmanager
    def anonymous(self) -> Iterator[AuthedClient]:
        """Send no token at all inside the block."""
        before = self.user_token, self.worker_token
        self.user_token = self.worker_token = None
        try:
            yield self
        finally:
            self.user_token, self.worker_token = before
