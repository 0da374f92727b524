"""Every request's latency, by route template, method and status (``trainjobs_http_request_duration_seconds``).

The outermost middleware, so a shed 503 or a 401 counts too. The route is the one the router matched
(``/jobs/{job_id}``, never the path with its id: a label per job would grow without end); a request
answered before routing is ``unrouted``, and a method outside the usual ones ``other``.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.telemetry import REQUESTS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestTimes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.timed(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def timed(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        answered = 500  # nothing sent: the server answers 500 for it

        async def sending(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unrouted"
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(route, method, str(answered)).observe(time.perf_counter() - started)
