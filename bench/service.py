"""Benchmark 2: what the service costs on top of training.

The same job runs three ways, in turn: ``direct``, ``run_training(spec, ctx)`` called in this
process (torch already imported, checkpoints written to a local folder, metrics dropped); and
through the service, submitted with ``POST /jobs`` to a real API process on SQLite and run by a
real idle worker (claim, child process, metrics relayed, every checkpoint uploaded), timed from
the submit until ``GET /jobs/{id}`` says ``succeeded`` -- once with the worker's default
``--start-method spawn`` (a fresh interpreter for each job, started ahead while the worker
idles, so its imports are done when the job comes) and once with ``--start-method forkserver``
(each job forked from a server that imported torch once). Each worker has its own API, so each
job goes to the worker of its variant. Before each run every worker has settled (the process it
starts ahead after a job has done its imports), so one variant's start-up never lands in
another's time. The job is the benchmark's MLP autoencoder, sized on this machine to take about
60 s in three epochs (quick: a small model, 500 images, one epoch), with trainjobs' default
checkpointing (every epoch).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from app.core.specs import parse_job_spec
from devtools.servers import ApiServer
from worker.training import MetricPoint, TrainingContext, run_training

from .dispatch import TINY_JOB
from .servers import settle, start_worker, submit, wait_for_status
from .stats import Result, at_most, interleave, ratios

START_METHODS = ("spawn", "forkserver")
"""The worker's ways to start a job's process: spawn (the default) imports torch in every job's process."""


def job_body(
    num_images: int, epochs: int, hidden: tuple[int, ...] = (1024, 512), bottleneck: int = 256
) -> dict[str, Any]:
    return {
        "kind": "pretrain",
        "name": "bench-service-overhead",
        "dataset": {"name": "synthetic", "num_samples": num_images * 5 // 4, "image_shape": [3, 32, 32]},
        "model": {"arch": "mlp_autoencoder", "hidden": list(hidden), "bottleneck": bottleneck},
        "train": {"epochs": epochs, "batch_size": 100, "optimizer": "adam", "lr": 1e-3},
    }


def run_direct(body: dict[str, Any], device: str) -> float:
    spec = parse_job_spec(body)
    points: list[MetricPoint] = []
    with tempfile.TemporaryDirectory(prefix="bench-direct-") as tmp:
        ctx = TrainingContext(
            device=device, data_dir=Path(tmp) / "data", work_dir=Path(tmp) / "run", report_metrics=points.extend
        )
        started = time.perf_counter()
        run_training(spec, ctx)
        return time.perf_counter() - started


def size_job(seconds: float, epochs: int, device: str) -> int:
    """Training images per epoch for a job of about ``seconds`` on this machine, from a short timed run."""
    probe = 4_000
    spec = parse_job_spec(job_body(probe, 1))
    points: list[MetricPoint] = []
    with tempfile.TemporaryDirectory(prefix="bench-size-") as tmp:
        ctx = TrainingContext(
            device=device, data_dir=Path(tmp), work_dir=Path(tmp) / "run", report_metrics=points.extend
        )
        started = time.perf_counter()
        run_training(spec, ctx)
        wall = time.perf_counter() - started
    rate = probe / wall  # images per second, evaluation and checkpoint included
    return int(min(1_500_000, max(probe, rate * seconds / epochs)) // 100 * 100)


POLL_SECONDS = 0.25
"""How often the benchmark asks whether the job is done: every 50 ms, its own GETs were half the
API's CPU during the job, taken from the training on a 2-core machine; at 0.25 s they are a
tenth of that, and the end is seen 0.125 s late on average (0.2% of a 60 s job)."""


def through_service(http: httpx.Client, body: dict[str, Any], *, timeout: float) -> float:
    started = time.perf_counter()
    job = submit(http, body)
    wait_for_status(http, job["id"], {"succeeded"}, timeout=timeout, interval=POLL_SECONDS)
    return time.perf_counter() - started


def run(*, quick: bool, device: str, threads: int) -> Result:
    seconds, epochs, pairs = 60.0, 3, 1 if quick else 5
    torch.set_num_threads(threads)
    # quick: a small model too, so its checkpoints are small (a smoke run, not a measurement)
    body = job_body(500, 1, (256,), 32) if quick else job_body(size_job(seconds, epochs, device), epochs)
    result = Result(
        "service",
        "Service overhead: the same job through the service vs run_training called directly",
        {
            "device": device,
            "torch_threads": threads,
            "job": body,
            "target_job_seconds": None if quick else seconds,
            "pairs": pairs,
            "database": "sqlite",
        },
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-service-")))
        workers: list[int] = []

        def settled(measure: Callable[[], float]) -> Callable[[], float]:
            def run() -> float:
                settle(*workers)
                return measure()

            return run

        variants: dict[str, Callable[[], float]] = {"direct": settled(lambda: run_direct(body, device))}
        for method in START_METHODS:
            # One API per worker, so that each job goes to the worker of its variant.
            api = stack.enter_context(ApiServer(root / f"api-{method}"))
            worker = stack.enter_context(
                start_worker(api.url, root / method, device=device, threads=threads, start_method=method)
            )
            workers.append(worker.pid)
            http = stack.enter_context(api.client(timeout=30))
            # A first tiny job: the worker is up and idle, and a forkserver has imported torch.
            wait_for_status(http, submit(http, TINY_JOB)["id"], {"succeeded"}, timeout=300)
            variants[method] = settled(functools.partial(through_service, http, body, timeout=seconds * 20))
        runs = interleave(variants, pairs)

    result.add("direct run_training wall", "s", runs["direct"])
    for method in START_METHODS:
        label = f"through the service, worker --start-method {method}"
        result.add(f"{label}: wall (submit -> succeeded)", "s", runs[method])
        result.add(
            f"{label}: service / direct (pair by pair)",
            "x",
            ratios(runs[method], runs["direct"]),
            "<= 1.05",
            check=at_most(1.05),
        )
        overhead = [s - d for s, d in zip(runs[method], runs["direct"], strict=True)]
        result.add(f"{label}: service - direct (pair by pair)", "s", overhead)
    return result
