"""Benchmark "small job": a long job of a small model, where per-epoch costs and threads decide (issue 16, target 7).

The job: the MLP autoencoder on scikit-learn's digits (hidden [256], bottleneck 32, batch 64, Adam 1e-3) for
450 epochs (quick: 10), each epoch 23 steps of a few milliseconds. Three ways, interleaved:

- ``plain``: a plain torch loop of the same model (``build_model`` of the same spec) on the same training
  images, shuffled each epoch, ``loss.item()`` each step; no evaluation, no checkpoints, no metrics;
- ``direct``: trainjobs' loop, ``run_training(spec, ctx)`` called in this process with the job's defaults
  (evaluation and metrics every epoch, its checkpoints), torch's threads as the worker's default sets them;
- ``service``: the job submitted to a real API process on SQLite and run by a real worker started with
  default settings (its threads, checkpoints and start method), timed from the submit to ``succeeded``.

Targets: service / direct at most 1.05, direct / plain at most 1.15 (each pair by pair).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.core.specs import AnyJobSpec, parse_job_spec
from devtools.servers import ApiServer
from worker.threads import job_threads
from worker.training import MetricPoint, TrainingContext, run_training
from worker.training.data import load_dataset, normalize
from worker.training.nets import build_model

from .dispatch import TINY_JOB
from .servers import settle, start_worker, submit, wait_for_status
from .service import through_service
from .stats import Result, at_most, interleave, ratios


def job_body(epochs: int) -> dict[str, Any]:
    return {
        "kind": "pretrain",
        "name": "bench-small-job",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp_autoencoder", "hidden": [256], "bottleneck": 32},
        "train": {"epochs": epochs, "batch_size": 64, "optimizer": "adam", "lr": 1e-3},
    }


def plain_loop(body: dict[str, Any]) -> float:
    """Seconds of a plain torch loop over the same model, images and batches (the job's data, loaded before),
    on the threads the job gets."""
    spec = parse_job_spec(body)
    with threads_of(spec):
        return _plain_loop(spec)


@contextlib.contextmanager
def threads_of(spec: AnyJobSpec) -> Iterator[None]:
    """torch's threads as a default worker sets them for ``spec``'s job here (the service on this machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(job_threads(spec, configured=None, jobs_at_once=1, local_service=True))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _plain_loop(spec: AnyJobSpec) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as tmp:
        train = load_dataset(spec.dataset, Path(tmp), spec.train.seed).train
    x = normalize(train.x)
    torch.manual_seed(0)
    model = build_model(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.train.lr)
    batch = spec.train.batch_size
    started = time.perf_counter()
    for _epoch in range(spec.train.epochs):
        model.train()
        total = 0.0
        for index in torch.randperm(len(x)).split(batch):
            images = x[index]
            loss = F.mse_loss(model(images), images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
    return time.perf_counter() - started


def direct(body: dict[str, Any]) -> float:
    """Seconds of ``run_training`` on the job, with the threads a default worker gives a job here."""
    spec = parse_job_spec(body)
    points: list[MetricPoint] = []
    with threads_of(spec), tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        ctx = TrainingContext(
            device="cpu", data_dir=Path(tmp) / "data", work_dir=Path(tmp) / "run", report_metrics=points.extend
        )
        started = time.perf_counter()
        run_training(spec, ctx)
        return time.perf_counter() - started


def run(*, quick: bool) -> Result:
    epochs, pairs = (10, 1) if quick else (450, 3)
    body = job_body(epochs)
    result = Result(
        "small job",
        "A long job of a small model: digits autoencoder, 450 epochs of 23 steps (Ray Jobs: 1.07x direct)",
        {"job": body, "pairs": pairs, "database": "sqlite", "worker": "default settings"},
    )
    direct(job_body(1))  # imports (torch._dynamo, scikit-learn) before any timing: a worker's child has them too
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-small-job-")))
        api = stack.enter_context(ApiServer(root / "api"))
        worker = stack.enter_context(start_worker(api.url, root / "worker", threads=None))
        http = stack.enter_context(api.client(timeout=30))
        wait_for_status(http, submit(http, TINY_JOB)["id"], {"succeeded"}, timeout=300)  # up, imports done

        def settled(measure: Any) -> Any:
            def measured() -> float:
                settle(worker.pid)
                return float(measure())

            return measured

        runs = interleave(
            {
                "plain": settled(functools.partial(plain_loop, body)),
                "direct": settled(functools.partial(direct, body)),
                "service": settled(functools.partial(through_service, http, body, timeout=epochs * 5)),
            },
            pairs,
        )
    for name, label in (("plain", "plain torch loop"), ("direct", "run_training direct"), ("service", "service")):
        result.add(f"{label}: wall", "s", runs[name])
        result.add(f"{label}: per epoch", "ms", [1000 * s / epochs for s in runs[name]])
    result.add(
        "service / direct (pair by pair)",
        "x",
        ratios(runs["service"], runs["direct"]),
        "<= 1.05",
        check=at_most(1.05),
    )
    result.add(
        "trainjobs' loop / plain loop (pair by pair)",
        "x",
        ratios(runs["direct"], runs["plain"]),
        "<= 1.15",
        check=at_most(1.15),
    )
    return result
