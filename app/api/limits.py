"""Request bodies are bounded before they are buffered: by Content-Length, while they stream, and in time.

Public routes take at most ``MAX_BODY_BYTES`` (1 MiB), the worker protocol's JSON routes at most
``WORKER_BODY_BYTES``, a checkpoint upload at most ``MAX_UPLOAD_BYTES``. Over the limit is a 413,
answered before the route reads a byte when the client declared the length. A body that stalls
for ``body_timeout`` seconds between two chunks is a 408. A public route's body (small) is read
whole here, before the route gets its turn to run (app/api/shedding.py), so a client that sends
its body slowly holds no turn, and must send all of it within ``body_timeout``.
"""

from __future__ import annotations

import asyncio
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
    """ASGI middleware: a 413 for a body over the route's limit, declared or streamed; a 408 for one that stalls."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int], body_timeout: float) -> None:
        self.app, self.limit_for, self.body_timeout = app, limit_for, body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await answer(scope, receive, send, status.HTTP_413_CONTENT_TOO_LARGE, too_large(limit))
            return
        guarded = GuardedBody(receive, limit, self.body_timeout)
        if scope["path"].startswith("/worker/"):  # streamed to the route (uploads are large)
            await self.app(scope, guarded.receive, send)
            return
        try:
            async with asyncio.timeout(self.body_timeout):  # the whole (small) body, not only each chunk
                whole = await guarded.read_whole()
        except HTTPException as exc:
            await answer(scope, receive, send, exc.status_code, str(exc.detail))
            return
        except TimeoutError:
            detail = f"the request body took longer than {self.body_timeout:g} s to arrive"
            await answer(scope, receive, send, status.HTTP_408_REQUEST_TIMEOUT, detail)
            return
        await self.app(scope, guarded.replaying(whole), send)


async def answer(scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, code)(scope, receive, send)


class GuardedBody:
    """A request's ``receive``, counted against the limit and timed between chunks until the body ends."""

    def __init__(self, receive: Receive, limit: int, timeout: float) -> None:
        self._receive, self.limit, self.timeout = receive, limit, timeout
        self.received = 0
        self.done = False

    async def receive(self) -> Message:
        if self.done:  # the body is in: what comes now is a disconnect, whenever it comes
            return await self._receive()
        try:
            async with asyncio.timeout(self.timeout):  # no task of its own: a body already here costs nothing
                message = await self._receive()
        except TimeoutError:
            raise HTTPException(
                status.HTTP_408_REQUEST_TIMEOUT, f"the request body stalled: nothing came for {self.timeout:g} s"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, too_large(self.limit))
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    async def read_whole(self) -> Message:
        """The whole body as one message (or the disconnect that ended it)."""
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    def replaying(self, whole: Message) -> Receive:
        given = False

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return whole
            return await self._receive()

        return receive
