"""Request bodies are bounded before they are buffered: from Content-Length, and while they stream.

Public routes take at most ``MAX_BODY_BYTES`` (1 MiB), the worker protocol's JSON routes at most
``WORKER_BODY_BYTES``, a checkpoint upload at most ``MAX_UPLOAD_BYTES``. Over the limit is a 413,
answered before the route reads a byte when the client declared the length.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import HTTPException, status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WORKER_BODY_BYTES = 4 * 1024 * 1024
"""A batch of 1,000 metric points is about 150 kB; a failed job's error at most 20,000 characters."""
UPLOAD = re.compile(r"^/worker/jobs/[^/]+/checkpoints/[^/]+$")


def body_limit(max_body_bytes: int, max_upload_bytes: int) -> Callable[[str, str], int]:
    def limit(method: str, path: str) -> int:
        if path.startswith("/worker/"):
            return max_upload_bytes if method == "PUT" and UPLOAD.match(path) else WORKER_BODY_BYTES
        return max_body_bytes

    return limit


def too_large(limit: int) -> str:
    return f"the request body is larger than this route takes ({limit} bytes)"


class BodyLimit:
    """ASGI middleware: a 413 for a body over the route's limit, declared or streamed."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": too_large(limit)}, status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, too_large(limit))
            return message

        await self.app(scope, counted, send)
