"""Benchmark: the queue as it grows (issue 16, targets 1 and 2).

1. **Flat in the queue's length.** On SQLite and PostgreSQL, with 100 and with 100,000 queued jobs (and as
   many finished), in-process calls of the store: one claim a transaction (a worker's, with its
   capabilities; the job then given back, so the queue keeps its length), the list query of
   ``GET /jobs?status=queued`` (the owner's newest 50), and the lease reaper's pass over 100 and over
   10,000 running jobs (none expired). p50 and p95 of each, the ratio of the p95s (target <= 1.5), and the
   plan (``EXPLAIN``) of the claim's query.
2. **Throughput.** An API process (SQLite, then PostgreSQL) with 20,000 queued jobs; 8 concurrent clients
   speak the worker protocol (claim, then finish, no training) for a few seconds: cycles per second
   (targets 200 and 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, insert, select, update

from app.core import accounts, jobs, leases, queue, workers
from app.core.db import Database
from app.core.models import Job, utcnow
from app.core.protocol import Capabilities
from app.core.states import JobKind, JobStatus
from devtools.servers import WORKER_TOKEN, ApiServer

from .load import databases
from .stats import Result, at_least, at_most, percentile

SPEC = {
    "kind": "pretrain",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp_autoencoder", "hidden": [16], "bottleneck": 4},
    "train": {"epochs": 1, "batch_size": 64},
}
CAPABILITIES = Capabilities(
    version="bench",
    host="bench",
    kinds=["pretrain", "finetune"],
    archs=["mlp_autoencoder", "mlp"],
    datasets=["digits"],
    devices=[{"name": "cpu"}],  # type: ignore[list-item]
    free=1,
    distributed=True,
)
CLIENTS = 8


def fill(db: Database, owner: int, status: JobStatus, count: int, *, leased: bool = False) -> None:
    """``count`` jobs of ``status`` straight into the table (a submit each would take minutes at 100,000)."""
    now = utcnow()
    rows = [
        {
            "owner_id": owner,
            "kind": JobKind.PRETRAIN,
            "status": status,
            "spec": SPEC,
            "priority": 0,
            "max_attempts": 3,
            "arch": "mlp_autoencoder",
            "dataset": "digits",
            "attempt": 1 if leased else 0,
            "lease_token": f"bench-{i}" if leased else None,
            "lease_owner": "bench" if leased else None,
            "lease_expires_at": now + timedelta(hours=1) if leased else None,
            "cancel_requested": False,
            "created_at": now + timedelta(microseconds=i),
            "updated_at": now,
            "finished_at": now if status.is_terminal else None,
        }
        for i in range(count)
    ]
    for start in range(0, count, 10_000):
        with db.write() as session:
            session.execute(insert(Job), rows[start : start + 10_000])
    if db.engine.dialect.name == "postgresql":  # what autovacuum does after such a change, a minute later at most
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE jobs")
            conn.commit()


def owner_of(db: Database) -> int:
    with db.write() as session:
        return accounts.create_user(session, f"bench-{time.monotonic_ns()}").id


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def claim_and_give_back(db: Database) -> float:
    """Milliseconds of one claim's transaction; the job is then given back (untimed)."""
    started = time.perf_counter()
    with db.write() as session:
        workers.hold(session, "bench")
        job = queue.claim_next_job(
            session,
            worker_id="bench",
            device="cpu",
            lease_seconds=60,
            reap=False,
            can_run=workers.can_run(CAPABILITIES),
            capabilities=CAPABILITIES,
        )
        assert job is not None and job.lease_token is not None
        token = job.lease_token
    elapsed = (time.perf_counter() - started) * 1000
    with db.write() as session:
        leases.release_job(session, job.id, token)
    return elapsed


def claim_plan(db: Database) -> list[str]:
    """The plan of the claim's candidate query, as the database explains it."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "ORDER BY" in statement and "FROM jobs" in statement and not seen:
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        claim_and_give_back(db)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    statement, parameters = seen[0]
    sqlite = db.engine.dialect.name == "sqlite"
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters)
        return [str(row[-1] if sqlite else row[0]) for row in rows]


def claims_behind_waiting_finetunes(db: Database, rounds: int, waiting: int = 50) -> list[float]:
    """Claim latencies with ``waiting`` finetunes at the head of the queue whose base has not succeeded: every
    claim checks each one's base before it gets to a job it can run."""
    with db.write() as session:
        head = session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.id).limit(waiting + 1)
        ).all()
        session.execute(update(Job).where(Job.id.in_(head[1:])).values(priority=10, init_job_id=head[0]))
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE jobs")
            conn.commit()
    claim_and_give_back(db)
    return [claim_and_give_back(db) for _ in range(rounds)]


def store_costs(url: str, sizes: tuple[int, int], rounds: int) -> dict[str, Any]:
    """Claim, list and reap latencies at the small and the large size of the queue."""
    db = Database.from_url(url)
    owner = owner_of(db)
    scope = jobs.Scope(owner_id=owner)
    found: dict[str, Any] = {}
    done = 0
    try:
        for size in sizes:
            fill(db, owner, JobStatus.SUCCEEDED, size - done)  # older than the queue, as finished jobs are
            fill(db, owner, JobStatus.QUEUED, size - done)
            done = size
            claim_and_give_back(db)  # warm caches
            found[f"claim {size}"] = [claim_and_give_back(db) for _ in range(rounds)]

            def listed() -> None:
                with db.read() as session:
                    jobs.list_jobs(session, scope, status=JobStatus.QUEUED, limit=50)

            found[f"list {size}"] = timed(listed, rounds)
            found[f"plan {size}"] = claim_plan(db)
        found[f"claim {sizes[1]} behind waiting"] = claims_behind_waiting_finetunes(db, rounds)
        running_done = 0
        for running in (sizes[0], min(10_000, sizes[1])):
            fill(db, owner, JobStatus.RUNNING, running - running_done, leased=True)
            running_done = running

            def reap() -> None:
                with db.write() as session:
                    leases.reap_expired_leases(session)

            found[f"reap {running}"] = timed(reap, rounds)
    finally:
        db.dispose()
    return found


def cycles_per_second(api_url: str, seconds: float) -> float:
    """Claim + finish cycles a second by CLIENTS concurrent no-op workers over HTTP."""

    async def worker(client: httpx.AsyncClient, name: str, until: float, count: list[int]) -> None:
        claim = {"worker_id": name, "device": "cpu", "wait_seconds": 0, "capabilities": CAPABILITIES.model_dump()}
        while time.monotonic() < until:
            r = await client.post("/worker/claim", json=claim)
            if r.status_code != 200:
                raise RuntimeError(f"claim: {r.status_code} {r.text[:200]}")
            token = r.json()["lease_token"]
            done = {"lease_token": token, "status": "succeeded", "result": {"test_loss": 0.5}}
            r = await client.post(f"/worker/jobs/{r.json()['id']}/finish", json=done)
            if r.status_code != 200:
                raise RuntimeError(f"finish: {r.status_code} {r.text[:200]}")
            count[0] += 1

    async def run() -> float:
        headers = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=api_url, headers=headers, limits=limits, timeout=30) as client:
            count = [0]
            await worker(client, "warm", time.monotonic() + 0.5, [0])
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(*(worker(client, f"bench-{i}", until, count) for i in range(CLIENTS)))
            return count[0] / (time.monotonic() - started)

    return asyncio.run(run())


@contextlib.contextmanager
def filled_api(root: Path, url: str, queued: int, **settings: str) -> Iterator[ApiServer]:
    db = Database.from_url(url)
    try:
        fill(db, owner_of(db), JobStatus.QUEUED, queued)
    finally:
        db.dispose()
    with ApiServer(root, url, reap_interval_seconds="3600", **settings) as api:
        yield api


def run(*, quick: bool) -> Result:
    sizes, rounds, seconds, queued = ((100, 2_000), 30, 2.0, 2_000) if quick else ((100, 100_000), 200, 10.0, 20_000)
    result = Result(
        "queue",
        "The queue as it grows: claim, list and reap costs; claim + finish cycles a second",
        {"sizes": sizes, "rounds": rounds, "clients": CLIENTS, "seconds": seconds},
    )
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        (root / "http").mkdir()
        for backend, url in databases(root / "store", quick):
            costs = store_costs(url, sizes, rounds)
            small, large = sizes
            for what, low, high in (
                ("claim", small, large),
                ("list", small, large),
                ("reap", small, min(10_000, large)),
            ):
                lo, hi = costs[f"{what} {low}"], costs[f"{what} {high}"]
                for size, samples in ((low, lo), (high, hi)):
                    result.add(f"{backend}: {what} at {size:,} (p50)", "ms", [percentile(samples, 50)])
                    result.add(f"{backend}: {what} at {size:,} (p95)", "ms", [percentile(samples, 95)])
                ratio = percentile(hi, 95) / percentile(lo, 95)
                result.add(
                    f"{backend}: {what} p95 at {high:,} / at {low:,}", "x", [ratio], "<= 1.5", check=at_most(1.5)
                )
            behind = costs[f"claim {sizes[1]} behind waiting"]
            label = f"{backend}: claim at {sizes[1]:,} behind 50 waiting finetunes"
            result.add(f"{label} (p95)", "ms", [percentile(behind, 95)])
            ratio = percentile(behind, 95) / percentile(costs[f"claim {sizes[0]}"], 95)
            result.add(f"{label}: p95 / claim p95 at {sizes[0]:,}", "x", [ratio], "<= 1.5", check=at_most(1.5))
            result.extra[f"{backend} claim plan"] = {str(s): costs[f"plan {s}"] for s in sizes}
        for backend, url in databases(root / "http", quick):
            target = 200 if backend == "sqlite" else 500
            with filled_api(root / f"api-{backend}", url, queued) as api:
                rate = cycles_per_second(api.url, seconds)
            result.add(
                f"{backend}: claim + finish cycles/s, {CLIENTS} clients over HTTP",
                "cycles/s",
                [rate],
                f">= {target}",
                check=at_least(target),
            )
    return result


if __name__ == "__main__":  # python -m bench.queue [--quick]: this benchmark alone, as JSON
    import sys

    outcome = run(quick="--quick" in sys.argv)
    print(json.dumps(outcome.as_dict(), indent=1, default=str))
