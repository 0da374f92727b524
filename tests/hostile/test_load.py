"""Many clients polling at once: every answer is a 200 or a quick 503, and the worker's heartbeats go through.

The numbers (latencies at 200 clients for 30 s) are bench/'s: ``python -m bench load``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import httpx
import pytest

from devtools.servers import CallerAuth
from tests.api.helpers import post_points, start, submit
from tests.conftest import TINY_JOB
from tests.hostile.conftest import Live

pytestmark = pytest.mark.slow
CLIENTS = 150
SECONDS = 6.0


async def poll(http: httpx.AsyncClient, paths: list[str], n: int, stop: asyncio.Event, seen: Counter[int]) -> None:
    i = n
    while not stop.is_set():
        r = await http.get(paths[i % len(paths)])
        i += 1
        seen[r.status_code] += 1
        if r.status_code == 503:
            assert r.headers.get("Retry-After"), r.text
        else:
            assert r.status_code == 200, r.text


async def beat(url: str, job_id: int, lease: str, stop: asyncio.Event, answers: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, auth=CallerAuth(""), timeout=5) as http:
        while not stop.is_set():
            try:
                r = await http.post(f"/worker/jobs/{job_id}/heartbeat", json={"lease_token": lease})
                answers.append(r.status_code)
            except httpx.TimeoutException:
                answers.append(0)
            await asyncio.sleep(0.25)


async def load(live: Live, job_id: int, lease: str) -> tuple[Counter[int], list[int]]:
    paths = ["/jobs?limit=20", "/healthz", f"/jobs/{job_id}", f"/jobs/{job_id}/metrics", "/jobs?status=running"]
    stop, seen, answers = asyncio.Event(), Counter[int](), list[int]()
    async with contextlib.AsyncExitStack() as clients:
        # Made before the clock starts: each takes tens of milliseconds (its TLS context).
        made = [
            httpx.AsyncClient(base_url=live.api.url, auth=CallerAuth(live.api.token), timeout=30)
            for _ in range(CLIENTS)
        ]
        https = [await clients.enter_async_context(http) for http in made]
        tasks = [asyncio.create_task(poll(http, paths, n, stop, seen)) for n, http in enumerate(https)]
        tasks.append(asyncio.create_task(beat(live.api.url, job_id, lease, stop, answers)))
        await asyncio.sleep(SECONDS)
        stop.set()
        await asyncio.gather(*tasks)
    return seen, answers


def test_heavy_read_load_never_answers_500_and_never_holds_up_a_heartbeat(live: Live) -> None:
    for _ in range(30):
        submit(live.http, TINY_JOB)
    job_id, lease = start(live.http, {**TINY_JOB, "priority": 10})
    points = [{"name": "train_loss", "step": s, "value": 1.0 / (s + 1)} for s in range(500)]
    assert post_points(live.http, job_id, lease, points).status_code == 200
    seen, heartbeats = asyncio.run(load(live, job_id, lease))
    assert sum(seen.values()) > CLIENTS, seen  # the clients were served, not stuck
    assert set(seen) <= {200, 503}, seen
    assert heartbeats and set(heartbeats) == {200}, Counter(heartbeats)
    assert live.http.get(f"/jobs/{job_id}").json()["status"] == "running"
    live.assert_up()
