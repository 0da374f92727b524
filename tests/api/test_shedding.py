"""The load-shedding and turn-taking middleware, driven as ASGI apps (the real-process tests: tests/test_hostile_network.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.api.shedding import LoadShedding, Turns


def http_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "client": ("127.0.0.1", 5000)}


async def nothing_comes() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


def test_a_request_whose_answer_has_started_no_longer_counts_against_the_cap() -> None:
    """A download streaming a large file is being served: it must not hold a place for minutes."""

    async def run() -> None:
        streaming, finish = asyncio.Event(), asyncio.Event()

        async def download(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            streaming.set()
            await finish.wait()
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        for middleware in (LoadShedding(download, limit=8), Turns(download, running=1)):
            task = asyncio.create_task(middleware(http_scope("/jobs/1/checkpoint"), nothing_comes, send))
            await streaming.wait()
            if isinstance(middleware, LoadShedding):
                assert middleware.in_flight == 0
            else:
                assert not middleware.turns.locked()  # the next request may run
            finish.set()
            await task
            streaming.clear()
            finish.clear()

    asyncio.run(run())


def test_the_health_check_and_the_worker_protocol_are_never_shed() -> None:
    async def run() -> None:
        async def ok(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        shedding = LoadShedding(ok, limit=8)
        shedding.in_flight = 8  # full
        statuses: dict[str, int] = {}
        for path in ["/healthz", "/worker/claim", "/jobs"]:

            async def send(message: dict[str, Any], path: str = path) -> None:
                if message["type"] == "http.response.start":
                    statuses[path] = message["status"]

            await shedding(http_scope(path), nothing_comes, send)
        assert statuses == {"/healthz": 200, "/worker/claim": 200, "/jobs": 503}

    asyncio.run(run())
