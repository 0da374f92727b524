"""Load the service cannot serve is shed at once, and the public routes take turns, so heartbeats never wait.

``LoadShedding`` admits at most ``max_concurrency`` public requests (queued or running, until their
answer starts); the next
is a 503 with Retry-After: 1, answered at once, except to a connection that was sent one less
than a second ago and asked again regardless: its next 503 waits out that second. (A client that
ignores Retry-After would otherwise get thousands of 503s a second, and answering them would
starve the requests being served.)

``Turns`` lets a few admitted public requests run at a time, the rest waiting in order. On one
event loop every request's work runs between the same iterations: with 200 requests ready at
once an iteration took 200 ms, and a heartbeat, which needs several iterations, took over a
second. With turns an iteration holds a few requests' work, and the heartbeat passes in
milliseconds (docs/benchmarks.md). A turn ends when the answer starts, so a download streaming
its file holds none.

Neither counts the worker protocol (it has its own threads and connections, app/api/deps.py's
worker lane), requests that wait by design (event streams), or ``/healthz`` (a health check
that is shed would call a busy service dead).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def never_shed(path: str) -> bool:
    """The worker protocol, event streams (they wait by design) and the health check."""
    return path.startswith("/worker/") or path.endswith("/events") or path == "/healthz"


class LoadShedding:
    """ASGI middleware: at most ``limit`` public requests in flight; the next is a 503 with Retry-After: 1."""

    RETRY_AFTER = 1.0

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[str], bool] = never_shed) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt
        self.in_flight = 0
        self.shed_at: dict[object, float] = {}
        """When each connection (client address and port) was last sent a 503."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await self.shed(scope, receive, send)
            return
        self.in_flight += 1
        counted = True

        def done() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.in_flight -= 1

        async def answering(message: Message) -> None:
            if message["type"] == "http.response.start":
                done()  # a download streaming its file is served, not waiting: it no longer counts
            await send(message)

        try:
            await self.app(scope, receive, answering)
        finally:
            done()

    async def shed(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = time.monotonic()
        connection = scope.get("client")
        last = self.shed_at.get(connection)
        if connection is not None and last is not None and now - last < self.RETRY_AFTER:
            await asyncio.sleep(self.RETRY_AFTER - (now - last))  # it did not wait as told: wait for it
        if len(self.shed_at) >= 10_000:
            self.shed_at.clear()
        self.shed_at[connection] = time.monotonic()
        busy = JSONResponse(
            {"detail": "the service is busy; try again in a moment"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(int(self.RETRY_AFTER))},
        )
        await busy(scope, receive, send)


class Turns:
    """ASGI middleware: at most ``running`` public requests run at once; the others wait their turn, in order."""

    def __init__(self, app: ASGIApp, running: int, exempt: Callable[[str], bool] = never_shed) -> None:
        self.app, self.exempt = app, exempt
        self.turns = asyncio.Semaphore(running)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        held = False

        async def answering(message: Message) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                self.turns.release()
            await send(message)

        try:
            await self.turns.acquire()
            held = True
            await self.app(scope, receive, answering)
        finally:
            if held:
                self.turns.release()
