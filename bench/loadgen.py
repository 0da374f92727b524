"""An HTTP load generator in its own process, for machines without ``wrk``.

``python -m bench.loadgen URL [--method POST --body JSON] [--token T] --connections 10 --seconds 5`` keeps
that many requests in flight (one per connection, each sent as soon as the previous answer
arrives) for that long, then prints one JSON line: requests, errors, seconds, rps, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from .stats import percentile


async def generate(
    url: str, method: str, body: bytes | None, connections: int, seconds: float, token: str | None = None
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"} if body is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await client.request(method, url, content=body, headers=headers)  # connect before the clock starts
        deadline = time.perf_counter() + seconds

        async def connection() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.request(method, url, content=body, headers=headers)
                    if response.status_code >= 400:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ms = [v * 1000 for v in latencies]
    return {
        "requests": len(ms),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(ms) / elapsed,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--body", default=None, help="request body (JSON text)")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--token", default=None, help="sent as 'Authorization: Bearer <token>'")
    args = p.parse_args()
    body = args.body.encode() if args.body is not None else None
    print(json.dumps(asyncio.run(generate(args.url, args.method, body, args.connections, args.seconds, args.token))))


if __name__ == "__main__":
    main()
