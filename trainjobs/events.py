"""A job's event stream (Server-Sent Events, via httpx-sse), followed across dropped connections: each
reconnect sends the last event's id (``Last-Event-ID``), so nothing is lost and nothing repeated.

``Follow`` holds what both followers share (the place, the retry budget, what each event becomes);
``follow_events`` and ``afollow_events`` only connect and read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from trainjobs.errors import error_for

if TYPE_CHECKING:
    from trainjobs.client import AsyncClient, Client

TIMEOUT = httpx.Timeout(30, read=60)
"""A stream sends a comment every 15 s: a minute of silence is a broken connection."""


class Follow:
    def __init__(self, job_id: int | None, retry_seconds: float) -> None:
        self.path = "/events" if job_id is None else f"/jobs/{job_id}/events"
        self.retry_seconds = retry_seconds
        self.last_id: str | None = None
        self.broken_since: float | None = None

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def check(self, response: httpx.Response) -> bool:
        """True if the stream may be read; a busy service is a broken connection (raised: retried)."""
        if response.status_code in (502, 503, 504):
            raise httpx.TransportError(f"the service answered {response.status_code}")
        self.broken_since = None
        return response.status_code < 400

    def event(self, sse: ServerSentEvent) -> dict[str, Any]:
        if sse.id:
            self.last_id = sse.id
        return {"event": sse.event, "id": sse.id, "data": json.loads(sse.data) if sse.data else {}}

    def broken(self, error: httpx.TransportError) -> float:
        """Seconds to wait before reconnecting; ``error`` once the connection has been broken too long."""
        self.broken_since = self.broken_since or time.monotonic()
        if time.monotonic() - self.broken_since > self.retry_seconds:
            raise error
        return 0.5


def follow_events(client: Client, job_id: int | None, *, retry_seconds: float = 60) -> Iterator[dict[str, Any]]:
    """``{"event": name, "id": id, "data": {...}}`` per event until ``end`` (a job's stream) or for ever."""
    follow = Follow(job_id, retry_seconds)
    while True:
        try:
            with connect_sse(client.http, "GET", follow.path, headers=follow.headers(), timeout=TIMEOUT) as source:
                if not follow.check(source.response):
                    source.response.read()
                    raise error_for(source.response)
                for sse in source.iter_sse():
                    yield follow.event(sse)
                    if sse.event == "end":
                        return
        except httpx.TransportError as exc:
            time.sleep(follow.broken(exc))


async def afollow_events(
    client: AsyncClient, job_id: int | None, *, retry_seconds: float = 60
) -> AsyncIterator[dict[str, Any]]:
    """``follow_events`` for asyncio."""
    follow = Follow(job_id, retry_seconds)
    while True:
        try:
            async with aconnect_sse(
                client.http, "GET", follow.path, headers=follow.headers(), timeout=TIMEOUT
            ) as source:
                if not follow.check(source.response):
                    await source.response.aread()
                    raise error_for(source.response)
                async for sse in source.aiter_sse():
                    yield follow.event(sse)
                    if sse.event == "end":
                        return
        except httpx.TransportError as exc:
            await asyncio.sleep(follow.broken(exc))
