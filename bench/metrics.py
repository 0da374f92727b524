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


def memory_kib(pid: int, field: str) -> int:
    """A process's VmRSS or VmHWM (its peak since the last reset), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def streamed_read(http: httpx.Client, job_id: int, pid: int) -> tuple[float, float]:
    """(seconds, MB the API's resident memory grew by at its peak) of a whole read, body read in pieces."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # the peak starts again from now
    before = memory_kib(pid, "VmRSS")
    started = time.perf_counter()
    with http.stream("GET", f"/jobs/{job_id}/metrics") as r:
        r.raise_for_status()
        for _ in r.iter_bytes():
            pass
    return time.perf_counter() - started, (memory_kib(pid, "VmHWM") - before) / 1024


def run(*, quick: bool) -> Result:
    points, rounds, big = (10_000, 2, 50_000) if quick else (100_000, 5, 1_000_000)
    result = Result(
        "metrics",
        f"Metrics at scale: series of {points:,} and of {big:,} points",
        {"points": points, "big": big, "batch": BATCH, "rounds": rounds, "database": "sqlite"},
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
        long_job, token = claim_new_job(http)
        ingest(worker_client, long_job, token, big)
        large = interleave(
            {
                "max_points": lambda: read(http, long_job, max_points=1000),
                "per_epoch": lambda: read(http, long_job, max_points=1000, per_epoch="true"),
                "stream": lambda: streamed_read(http, long_job, api.proc.pid),
            },
            rounds,
        )
    result.add(
        "POST /worker/jobs/{id}/metrics ingestion (batches of 1,000)",
        "points/s",
        runs["ingest"],
        ">= 150000",
        check=at_least(150_000),
    )
    result.add("GET /jobs/{id}/metrics full: time", "ms", [t * 1000 for t, _ in runs["full"]])
    result.add("GET /jobs/{id}/metrics full: size", "MB", [b / 1e6 for _, b in runs["full"]])
    result.add("GET /jobs/{id}/metrics?max_points=500: time", "ms", [t * 1000 for t, _ in runs["max_points"]])
    result.add("GET /jobs/{id}/metrics?max_points=500: size", "kB", [b / 1e3 for _, b in runs["max_points"]])
    label = f"{big:,} points"
    result.add(
        f"{label}: ?max_points=1000: time",
        "ms",
        [t * 1000 for t, _ in large["max_points"]],
        "< 150",
        check=lambda v: v < 150,
    )
    result.add(f"{label}: ?max_points=1000&per_epoch=true: time", "ms", [t * 1000 for t, _ in large["per_epoch"]])
    result.add(f"{label}: whole series, streamed: time", "s", [t for t, _ in large["stream"]])
    result.add(
        f"{label}: whole series, streamed: API memory growth (peak RSS)",
        "MB",
        [m for _, m in large["stream"]],
        "< 100",
        check=lambda v: v < 100,
    )
    return result
