"""A job's event stream (Server-Sent Events, via httpx-sse), followed across dropped connections: each
reconnect sends the last event's id (``Last-Event-ID``), so nothing is lost and nothing repeated."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import aconnect_sse, connect_sse

from trainjobs.errors import error_for

if TYPE_CHECKING:
    from trainjobs.client import AsyncClient, Client


def follow_events(client: Client, job_id: int | None, *, retry_seconds: float = 60) -> Iterator[dict[str, Any]]:
    """``{"event": name, "id": id, "data": {...}}`` per event until ``end`` (a job's stream) or for ever."""
    path = "/events" if job_id is None else f"/jobs/{job_id}/events"
    last_id: str | None = None
    broken_since: float | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(client.http, "GET", path, headers=headers, timeout=httpx.Timeout(30, read=60)) as source:
                if source.response.status_code in (502, 503, 504):
                    raise httpx.TransportError(f"the service answered {source.response.status_code}")
                if source.response.status_code >= 400:
                    source.response.read()
                    raise error_for(source.response)
                broken_since = None
                for sse in source.iter_sse():
                    if sse.id:
                        last_id = sse.id
                    data = json.loads(sse.data) if sse.data else {}
                    yield {"event": sse.event, "id": sse.id, "data": data}
                    if sse.event == "end":
                        return
        except httpx.TransportError:
            broken_since = broken_since or time.monotonic()
            if time.monotonic() - broken_since > retry_seconds:
                raise
            time.sleep(0.5)


async def afollow_events(
    client: AsyncClient, job_id: int | None, *, retry_seconds: float = 60
) -> AsyncIterator[dict[str, Any]]:
    """``follow_events`` for asyncio."""
    path = "/events" if job_id is None else f"/jobs/{job_id}/events"
    last_id: str | None = None
    broken_since: float | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            async with aconnect_sse(
                client.http, "GET", path, headers=headers, timeout=httpx.Timeout(30, read=60)
            ) as source:
                if source.response.status_code in (502, 503, 504):
                    raise httpx.TransportError(f"the service answered {source.response.status_code}")
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise error_for(source.response)
                broken_since = None
                async for sse in source.aiter_sse():
                    if sse.id:
                        last_id = sse.id
                    yield {"event": sse.event, "id": sse.id, "data": json.loads(sse.data) if sse.data else {}}
                    if sse.event == "end":
                        return
        except httpx.TransportError:
            broken_since = broken_since or time.monotonic()
            if time.monotonic() - broken_since > retry_seconds:
                raise
            await asyncio.sleep(0.5)
