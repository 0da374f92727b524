"""How the API's process meets the network: uvicorn with a deadline for headers and a cap on connections.

A client that opens a connection and sends half a request (or nothing) holds a file descriptor;
enough of them and the process can accept nothing, ``/healthz`` included. So each connection
must finish its request's headers within ``header_timeout_seconds`` (else it is closed), and
when ``max_connections`` are open a new one makes room by closing the oldest connection still
waiting for its headers (only if there is none is the new one refused). A request answered
before its body was read (a 401, a 413) has its connection closed, so the rest of that body
cannot hold it open. The process also raises its own open-files limit to the hard limit at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import OrderedDict
from typing import Any, ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("trainjobs.api")
RESERVED_FILES = 64
"""File descriptors kept free of client connections: the database, logs, checkpoint files."""


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a header deadline and a connection cap.

    Both come from the settings (``TRAINJOBS_HEADER_TIMEOUT_SECONDS``, ``TRAINJOBS_MAX_CONNECTIONS``),
    read in each server process on its first connection (``--workers`` starts several).
    """

    header_timeout: ClassVar[float] = 0.0
    max_connections: ClassVar[int] = 0
    waiting: ClassVar[OrderedDict[GuardedProtocol, None]] = OrderedDict()
    """Connections whose request headers are not complete yet, oldest first."""

    @classmethod
    def _configure(cls) -> None:
        from app.core.config import get_settings

        settings = get_settings()
        open_files = raise_open_files_limit()
        cls.header_timeout = settings.header_timeout_seconds
        cls.max_connections = max(16, min(settings.max_connections, open_files - RESERVED_FILES))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.max_connections:
            self._configure()
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._wait_for_headers()
        if len(self.connections) > self.max_connections:
            oldest = next((c for c in self.waiting if c is not self), None)
            evicted = oldest or self
            evicted._stop_waiting()  # out of the queue now: the next arrival in this burst evicts another
            evicted.transport.close()  # room for one that will send its request now

    def _wait_for_headers(self) -> None:
        self._stop_waiting()
        self.waiting[self] = None
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._wait_for_headers()  # each request on a kept-alive connection has the same deadline

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Answered before its body was all read (a 401, a 413): the rest of the body could trickle in
        # for ever, each byte putting off the keep-alive deadline. Close instead of reading it.
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.transport.close()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)


class CloseUnreadBodies:
    """ASGI middleware, outermost: an answer that starts before its request's body was read (a 401, a
    413, a 503) says ``Connection: close``, so the client opens a new connection for its next request
    instead of reusing one the service then closes (``GuardedProtocol.on_response_complete``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        unread = headers.get(b"content-length", b"0").strip() not in (b"", b"0") or b"transfer-encoding" in headers

        async def reading() -> Message:
            nonlocal unread
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def answering(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, reading, answering)


def uvicorn_options() -> dict[str, Any]:
    """What ``uvicorn.run`` takes for this: the guarded protocol and keep-alive. (Load is shed by the
    app, app/api/limits.py: uvicorn's own limit counts idle connections as load.)"""
    raise_open_files_limit()
    return {"http": GuardedProtocol, "timeout_keep_alive": 5}
