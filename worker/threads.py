"""The torch CPU threads of a job, when the worker is not told (``--threads``, ``TRAINJOBS_THREADS``).

Measured on 2 cores (docs/benchmarks.md, "small job"): a small model's steps are too short to split
among threads, and a second thread on a core the service also uses makes each of its tiny operations
wait for the slower thread: a long job of the article's digits autoencoder took 1.81x its direct run
with torch's default (one thread a core), 1.00x with one thread. A large model's matrix products do
split (1.5-1.7x faster on two threads than one). So:

- a job whose network is a multilayer perceptron with parameters x batch size under ``SMALL_WORK``
  runs on one thread;
- any other gets the machine's free cores: its cores shared among the jobs the worker runs at once
  (one a device), less one left to the service when it runs on this machine (its URL is loopback).
  A job of several CPU ranks splits its share among them (worker/launch.py).
"""

from __future__ import annotations

import os

from app.core.estimates import params_of
from app.core.specs import AnyJobSpec

SMALL_WORK = 20_000_000
"""Parameters x batch size below which an MLP's step is too small to split among threads (1.1x at 9M, 1.5x at 84M)."""
MLPS = frozenset({"mlp", "mlp_autoencoder", "seed_mlp_autoencoder"})


def free_cores(*, jobs_at_once: int, local_service: bool) -> int:
    """This process's cores, shared among ``jobs_at_once``, one left to a service on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if local_service and cores > 1:
        cores -= 1
    return max(1, cores // max(1, jobs_at_once))


def job_threads(spec: AnyJobSpec, *, configured: int | None, jobs_at_once: int, local_service: bool) -> int:
    """The threads a job gets: ``configured`` when the worker was told, else as the module says."""
    if configured:
        return configured
    if spec.model.arch in MLPS and params_of(spec) * spec.train.batch_size < SMALL_WORK:
        return 1
    return free_cores(jobs_at_once=jobs_at_once, local_service=local_service)
