"""Benchmark 2: what the service costs on top of training.

The same job runs two ways, in turn: ``direct``, ``run_training(spec, ctx)`` called in this
process (torch already imported, checkpoints written to a local folder, metrics dropped); and
``service``, submitted with ``POST /jobs`` to a real API process on SQLite and run by a real idle
worker (claim, child process, metrics relayed, every checkpoint uploaded), timed from the submit
until ``GET /jobs/{id}`` says ``succeeded``. The job is the benchmark's MLP autoencoder, sized on
this machine to take about 60 s in three epochs (quick: a small model, 500 images, one epoch),
with trainjobs' default checkpointing (every epoch).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from app.core.specs import parse_job_spec
from worker.training import MetricPoint, TrainingContext, run_training

from .servers import ApiServer, WorkerProcess, submit, wait_for_status
from .stats import Result, at_most, interleave, ratios


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


def run(*, quick: bool, device: str, threads: int) -> Result:
    seconds, epochs, pairs = 60.0, 3, 2 if quick else 5
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
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(tmp)
        with (
            ApiServer(root / "api") as api,
            WorkerProcess(api.url, root / "worker", device=device, threads=threads),
            httpx.Client(base_url=api.url, timeout=30) as http,
        ):

            def through_service() -> float:
                started = time.perf_counter()
                job = submit(http, body)
                wait_for_status(http, job["id"], {"succeeded"}, timeout=seconds * 20)
                return time.perf_counter() - started

            runs = interleave({"direct": lambda: run_direct(body, device), "service": through_service}, pairs)
    result.add("direct run_training wall", "s", runs["direct"])
    result.add("through the service wall (submit -> succeeded)", "s", runs["service"])
    result.add(
        "service / direct (pair by pair)",
        "x",
        ratios(runs["service"], runs["direct"]),
        "<= 1.05",
        check=at_most(1.05),
    )
    overhead = [s - d for s, d in zip(runs["service"], runs["direct"], strict=True)]
    result.add("service - direct (pair by pair)", "s", overhead)
    return result
