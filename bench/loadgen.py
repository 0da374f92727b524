"""An HTTP load generator in its own process, for machines without ``wrk``, and a paced prober.

``python -m bench.loadgen URL [--method POST --body JSON] [--token T] --connections 10 --seconds 5`` keeps
that many requests in flight (one per connection, each sent as soon as the previous answer
arrives) for that long; with ``--interval S`` each connection waits S seconds between requests
(a worker's heartbeat, a client polling), or as long as a 503's Retry-After says. It prints one JSON line: requests, errors, seconds, rps,
p50_ms, p99_ms, max_ms, and ``statuses``: per status code (0: no answer), the count and its
p50/p99/max latency in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from .stats import percentile


def summary(latencies: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in latencies] or [0.0]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms)}


async def generate(
    url: str,
    method: str,
    body: bytes | None,
    connections: int,
    seconds: float,
    token: str | None = None,
    interval: float = 0.0,
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"} if body is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    by_status: dict[int, list[float]] = {}
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        first = await client.request(method, url, content=body, headers=headers)  # connect before the clock starts
        if interval and first.status_code == 503:
            await asyncio.sleep(float(first.headers.get("retry-after", 0)))
        deadline = time.perf_counter() + seconds

        async def connection() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                retry_after = 0.0
                try:
                    response = await client.request(method, url, content=body, headers=headers)
                    code = response.status_code
                    if code == 503:
                        retry_after = float(response.headers.get("retry-after", 0))
                except httpx.HTTPError:
                    code = 0
                by_status.setdefault(code, []).append(time.perf_counter() - sent)
                if interval:  # a paced client is a polite one: it waits as long as a 503 tells it to
                    await asyncio.sleep(max(interval, retry_after))

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    every = [v for values in by_status.values() for v in values]
    return {
        "requests": len(every),
        "errors": sum(len(v) for code, v in by_status.items() if code == 0 or code >= 400),
        "seconds": elapsed,
        "rps": len(every) / elapsed,
        **summary(every),
        "statuses": {str(code): {"count": len(v), **summary(v)} for code, v in sorted(by_status.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--body", default=None, help="request body (JSON text)")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.0, help="seconds each connection waits between requests")
    p.add_argument("--token", default=None, help="sent as 'Authorization: Bearer <token>'")
    args = p.parse_args()
    body = args.body.encode() if args.body is not None else None
    result = generate(args.url, args.method, body, args.connections, args.seconds, args.token, args.interval)
    print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    main()
