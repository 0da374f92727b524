"""Benchmark 3: how fast an idle worker picks up a job, and what an idle worker costs.

One real worker process waits in its claim long poll. Jobs are submitted one at a time; each is a
tiny job (a few steps on a few 8x8 images), and the next is submitted once the worker is idle
again. The worker runs with ``--start-method forkserver`` so that each tiny job ends in about a
second (the claim, which is what is measured, does not depend on it).

Submit -> running is measured two ways: on the server, the job's ``started_at`` (set by the
claim) minus its ``created_at`` (set when ``POST /jobs`` stored it); and as a client sees it, from
sending ``POST /jobs`` to the first ``GET /jobs/{id}`` (polled every 10 ms) that is no longer
queued. Then, once the worker has settled (the next job's process, which it starts ahead, has
done its imports), the worker idles, and the CPU time of the worker, its forkserver and the
waiting job process over that window is read from /proc/<pid>/stat.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from app.core.states import TERMINAL
from devtools.servers import ApiServer

from .servers import cpu_seconds, settle, start_worker, submit, tree_cpu_seconds, wait_for_status
from .stats import Result, at_most, percentile

TINY_JOB: dict[str, Any] = {
    "kind": "pretrain",
    "name": "bench-dispatch",
    "dataset": {"name": "synthetic", "num_samples": 40, "image_shape": [1, 8, 8], "num_classes": 2},
    "model": {"arch": "mlp_autoencoder", "hidden": [8], "bottleneck": 4},
    "train": {"epochs": 1, "batch_size": 16},
}
START_METHOD = "forkserver"
"""Jobs end in about a second instead of four (torch is not imported per job); dispatch is the same."""
SETTLE_SECONDS = 0.5
"""After a job ends, time for the worker to be back in its long poll before the next submit."""


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def dispatch_once(http: httpx.Client) -> tuple[float, float]:
    """(server, client) seconds from submit to running for one job; returns once it has ended."""
    sent = time.perf_counter()
    job = submit(http, TINY_JOB)
    while True:
        state = http.get(f"/jobs/{job['id']}").json()
        if state["status"] != "queued":
            seen = time.perf_counter()
            break
        time.sleep(0.01)
    final = wait_for_status(http, job["id"], {str(s) for s in TERMINAL}, timeout=120)
    if final["status"] != "succeeded":
        raise RuntimeError(f"dispatch job {job['id']} ended {final['status']}: {final.get('error')}")
    return _seconds_between(final["created_at"], final["started_at"]), seen - sent


def run(*, quick: bool, device: str, threads: int) -> Result:
    submissions, idle_seconds = (3, 3.0) if quick else (50, 60.0)
    result = Result(
        "dispatch",
        "Dispatch latency (submit -> running, one idle worker) and idle worker CPU",
        {
            "submissions": submissions,
            "idle_seconds": idle_seconds,
            "worker_poll_seconds": "default (5)",
            "worker_start_method": START_METHOD,
            "job": TINY_JOB,
            "database": "sqlite",
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        root = Path(tmp)
        with (
            ApiServer(root / "api") as api,
            start_worker(api.url, root / "worker", device=device, threads=1, start_method=START_METHOD) as worker,
            api.client(timeout=30) as http,
        ):
            # The first job proves the worker is up (its start-up imports are not dispatch latency).
            wait_for_status(http, submit(http, TINY_JOB)["id"], {"succeeded"}, timeout=180)
            time.sleep(SETTLE_SECONDS)
            server, client = [], []
            for _ in range(submissions):
                s, c = dispatch_once(http)
                server.append(s)
                client.append(c)
                time.sleep(SETTLE_SECONDS)

            assert api.proc is not None
            settle(worker.pid)
            worker_before, api_before = tree_cpu_seconds(worker.pid), cpu_seconds(api.proc.pid)
            started = time.perf_counter()
            time.sleep(idle_seconds)
            elapsed = time.perf_counter() - started
            worker_cpu = (tree_cpu_seconds(worker.pid) - worker_before) / elapsed * 100
            api_cpu = (cpu_seconds(api.proc.pid) - api_before) / elapsed * 100

    for label, seconds in (
        ("server: started_at - created_at", server),
        ("client: POST sent -> GET sees running", client),
    ):
        ms = [v * 1000 for v in seconds]
        result.add(f"submit -> running, {label}", "ms", ms)
        result.add(
            f"submit -> running p95, {label.split(':')[0]}", "ms", [percentile(ms, 95)], "< 200", check=at_most(200)
        )
    result.add(f"idle worker CPU over {idle_seconds:g} s", "% of a core", [worker_cpu], "< 1", check=at_most(1.0))
    result.add(f"idle API CPU over {idle_seconds:g} s (one worker long-polling)", "% of a core", [api_cpu])
    return result
