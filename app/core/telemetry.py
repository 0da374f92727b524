"""Operators' counters, for Prometheus (``GET /metrics``, app/api/routes/operators.py): what this service did.

A count made inside a transaction (a lease reaped, a job ended) waits on its session and is added when
the transaction commits; a rollback drops it, so a claim that fails after reaping counts nothing.
Counts outside a transaction (a request's latency, bytes sent) are added at once.

With several API processes (``trainjobs-api --workers N``) each process writes its counts to its own
file under ``PROMETHEUS_MULTIPROC_DIR`` (set before the processes start: app/cli.py) and a scrape of
any of them sums them all. What the database holds now (jobs by status, the queue, live workers) is
read at each scrape: ``Snapshot``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from app.core.models import Job, Worker, status_is
from app.core.states import ErrorClass, JobKind, JobStatus

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # an operator's folder that is not there yet: every count would fail
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

CLAIMS = Counter(
    "trainjobs_claims", "Claims answered (POST /worker/claim), by outcome: job (one handed out) or none.", ["outcome"]
)
CLAIM_SECONDS = Histogram(
    "trainjobs_claim_duration_seconds",
    "A claim's transaction: from its start to the job leased (or none found); a long poll's waits not counted.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LEASE_EXPIRIES = Counter(
    "trainjobs_lease_expiries",
    "Running jobs whose worker stopped heartbeating, by what became of them: queued, failed or cancelled.",
    ["outcome"],
)
REQUEUES = Counter(
    "trainjobs_requeues",
    "Jobs put back in the queue, by why: lease_expired, retry (a failure of a class in its retry_on), "
    "released (a worker shutting down) or not_taken (a node of a multi-node job not taken in time).",
    ["reason"],
)
JOBS_FINISHED = Counter(
    "trainjobs_jobs_finished",
    "Jobs that ended, by status (succeeded, failed, cancelled) and error class (none when there is none).",
    ["status", "error_class"],
)
METRIC_POINTS = Counter("trainjobs_metric_points_ingested", "Metric points workers reported and the service stored.")
LOG_LINES = Counter("trainjobs_log_lines_ingested", "Log lines workers reported and the service stored.")
CHECKPOINT_BYTES = Counter(
    "trainjobs_checkpoint_bytes", "Checkpoint bytes received (in: uploads) and sent (out: downloads).", ["direction"]
)
REQUESTS = Histogram(
    "trainjobs_http_request_duration_seconds",
    "HTTP requests, by route (its template; 'unrouted': answered before routing, e.g. a 401 or a shed 503), "
    "method and status. Long polls and event streams count their whole length.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

_PENDING = "trainjobs_telemetry"


def count_on_commit(session: Session, counter: Any, amount: float = 1.0) -> None:
    """Add ``amount`` to ``counter`` (a counter or one of its labelled children) when ``session`` commits."""
    session.info.setdefault(_PENDING, []).append((counter, amount))


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    for counter, amount in session.info.pop(_PENDING, ()):
        counter.inc(amount)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def finished(session: Session, status: JobStatus | str, error_class: Any = None, amount: int = 1) -> None:
    """``amount`` jobs ended with ``status`` (and ``error_class``), counted when the transaction commits."""
    if amount:
        kind = getattr(error_class, "value", error_class) or "none"
        count_on_commit(session, JOBS_FINISHED.labels(str(getattr(status, "value", status)), kind), amount)


def requeued(session: Session, reason: str) -> None:
    count_on_commit(session, REQUEUES.labels(reason))


def lease_expired(session: Session, became: JobStatus) -> None:
    """A running job's lease expired and the reaper made it ``became`` (queued again, failed or cancelled)."""
    count_on_commit(session, LEASE_EXPIRIES.labels(became.value))
    if became == JobStatus.QUEUED:
        requeued(session, "lease_expired")
    else:
        finished(session, became, ErrorClass.INFRA if became == JobStatus.FAILED else None)


@dataclass(eq=False)  # a registry keeps its collectors in a dict: hashed by identity
class Snapshot(Collector):
    """What the database says now, as gauges: read once per scrape (``read``), then collected."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_queued: datetime | None = None
    live_workers: int = 0
    free_devices: int = 0
    now: datetime | None = None

    @classmethod
    def read(cls, session: Session, lease_seconds: float, now: datetime) -> Snapshot:
        jobs = {(str(s), str(k)): n for s, k, n in session.execute(_JOBS_BY_STATUS)}
        dialect = session.get_bind().dialect.name
        oldest = session.scalar(select(func.min(Job.created_at)).where(status_is(JobStatus.QUEUED, dialect)))
        since = now - timedelta(seconds=lease_seconds)
        live, free = session.execute(
            select(func.count(), func.coalesce(func.sum(Worker.free), 0)).where(Worker.last_seen >= since)
        ).one()
        return cls(jobs, oldest, int(live), int(free), now)

    def collect(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("trainjobs_jobs", "Jobs now, by status and kind.", labels=["status", "kind"])
        for status in JobStatus:
            for kind in sorted({k for _, k in self.jobs} | {k.value for k in JobKind}):
                by_status.add_metric([status.value, kind], self.jobs.get((status.value, kind), 0))
        yield by_status
        queued = sum(n for (s, _), n in self.jobs.items() if s == JobStatus.QUEUED.value)
        yield GaugeMetricFamily("trainjobs_queue_depth", "Jobs queued now.", value=queued)
        age = (self.now - self.oldest_queued).total_seconds() if self.oldest_queued and self.now else 0.0
        yield GaugeMetricFamily(
            "trainjobs_oldest_queued_job_age_seconds", "How long the oldest queued job has waited (0: none).", value=age
        )
        yield GaugeMetricFamily(
            "trainjobs_workers_live", "Workers heard from within a lease period.", value=self.live_workers
        )
        yield GaugeMetricFamily(
            "trainjobs_worker_devices_free", "Devices the live workers said were free.", value=self.free_devices
        )


_JOBS_BY_STATUS = select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
