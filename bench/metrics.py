"""Benchmark 5: a metric series of 100,000 points (quick: 10,000).

Each round claims a fresh job through the worker protocol and reports one ``train_loss`` series
into it with ``POST /worker/jobs/{id}/metrics`` in batches of 1,000 points, one request after the
other, sent by the worker's own client (``WorkerClient.send_metrics``, JSON encoding included);
then reads it back with ``GET /jobs/{id}/metrics``, whole and with ``max_points=500``: time and
bytes of each.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.core.protocol import MetricIn
from devtools.servers import WORKER_TOKEN, ApiServer
from worker.client import WorkerClient

from .servers import submit
from .stats import Result, at_least, interleave

BATCH = 1000
NO_REAPING = "86400"
"""Lease seconds: these jobs are claimed by hand and never heartbeat; they must stay leased."""
JOB: dict[str, Any] = {
    "kind": "pretrain",
    "name": "bench-metrics",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp_autoencoder", "hidden": [32], "bottleneck": 8},
}


def claim_new_job(http: httpx.Client) -> tuple[int, str]:
    job_id = submit(http, JOB)["id"]
    claimed = http.post("/worker/claim", json={"worker_id": "bench", "device": "cpu", "wait_seconds": 0}).json()
    if claimed["id"] != job_id:
        raise RuntimeError(f"claimed job {claimed['id']}, expected {job_id}")
    return job_id, str(claimed["lease_token"])


def ingest(client: WorkerClient, job_id: int, token: str, points: int) -> float:
    """Seconds for the worker's client to report ``points`` points of one series in batches of 1,000."""
    now = time.time()
    started = time.perf_counter()
    for first in range(1, points + 1, BATCH):
        batch = [  # as the worker builds them (worker/runner.py)
            MetricIn.model_construct(name="train_loss", step=s, epoch=s // 1000 + 1, value=1.0 / math.sqrt(s), time=now)
            for s in range(first, min(first + BATCH, points + 1))
        ]
        client.send_metrics(job_id, token, batch)
    return time.perf_counter() - started


def read(http: httpx.Client, job_id: int, **params: Any) -> tuple[float, int]:
    """(seconds, bytes) of one GET /jobs/{id}/metrics, body read in full."""
    started = time.perf_counter()
    r = http.get(f"/jobs/{job_id}/metrics", params=params)
    r.raise_for_status()
    size = len(r.content)
    return time.perf_counter() - started, size


def run(*, quick: bool) -> Result:
    points, rounds = (10_000, 2) if quick else (100_000, 5)
    result = Result(
        "metrics",
        f"Metrics at scale: one series of {points:,} points",
        {"points": points, "batch": BATCH, "rounds": rounds, "database": "sqlite"},
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp,
        ApiServer(Path(tmp) / "api", lease_seconds=NO_REAPING) as api,
        api.client(timeout=120) as http,
        contextlib.closing(WorkerClient(api.url, WORKER_TOKEN, timeout=120)) as worker_client,
    ):
        current: dict[str, int] = {}

        def ingestion() -> float:
            job_id, token = claim_new_job(http)
            current["job"] = job_id
            return points / ingest(worker_client, job_id, token, points)

        runs = interleave(
            {
                "ingest": ingestion,
                "full": lambda: read(http, current["job"]),
                "max_points": lambda: read(http, current["job"], max_points=500),
            },
            rounds,
        )
    result.add(
        "POST /worker/jobs/{id}/metrics ingestion (batches of 1,000)",
        "points/s",
        runs["ingest"],
        ">= 50000",
        check=at_least(50_000),
    )
    result.add("GET /jobs/{id}/metrics full: time", "ms", [t * 1000 for t, _ in runs["full"]])
    result.add("GET /jobs/{id}/metrics full: size", "MB", [b / 1e6 for _, b in runs["full"]])
    result.add("GET /jobs/{id}/metrics?max_points=500: time", "ms", [t * 1000 for t, _ in runs["max_points"]])
    result.add("GET /jobs/{id}/metrics?max_points=500: size", "kB", [b / 1e3 for _, b in runs["max_points"]])
    return result
