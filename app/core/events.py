"""What a job's event stream sends next, read from the database (so any API process can serve any
client, whichever process the worker talks to).

A stream's place is a ``Cursor``: the last log line's id, the last metric batch, and a digest of
the job's status as last sent. Each event carries the cursor after it (its SSE ``id``); a client
that reconnects with ``Last-Event-ID`` resumes exactly there: nothing lost, nothing repeated.
A status event is sent when the status, progress, attempt, error or cancel request differ from
the last one sent (changes within one poll are one event).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.jobs import Scope, get_job, visible_jobs
from app.core.logs import read_lines
from app.core.models import Job, JobLog, MetricPoint

LOG_LINES_PER_EVENT = 1000
LOG_EVENTS_PER_READ = 10
METRIC_BATCHES_PER_EVENT = 50
"""At most 50 batches (50,000 points) an event: a stream catches up a page at a time."""
MAX_CURSOR = 2**62


@dataclass(frozen=True)
class Cursor:
    log: int = 0
    metrics: int = -1
    """The last metric batch sent (-1: none; points stored before batches were numbered are batch 0)."""
    status: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """From a ``Last-Event-ID``; anything unreadable or out of range starts from the beginning."""
        try:
            log, metrics, status = (text or "").split(".", 2)
            cursor = cls(int(log), int(metrics), status[:16])
        except ValueError:
            return cls()
        if not (0 <= cursor.log <= MAX_CURSOR and -1 <= cursor.metrics <= MAX_CURSOR):
            return cls()
        return cursor

    def __str__(self) -> str:
        return f"{self.log}.{self.metrics}.{self.status}"


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]
    cursor: Cursor


def status_of(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": str(job.status),
        "attempt": job.attempt,
        "progress": job.progress,
        "error": job.error,
        "error_class": job.error_class,
        "cancel_requested": job.cancel_requested,
        "result": job.result,
        "worker": job.lease_owner,
    }


def digest(status: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(status, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Read:
    events: list[Event]
    more: bool
    """There is more to send already: read again at once."""
    finished: bool
    """The job has finished and everything it will ever have was sent: the stream ends."""


def cursor_now(session: Session, scope: Scope, job_id: int) -> Cursor:
    """The place after every metric batch and log line the job has now (its status not yet sent)."""
    job = get_job(session, scope, job_id)
    last_line = session.scalar(select(func.max(JobLog.id)).where(JobLog.job_id == job_id))
    return Cursor(log=last_line or 0, metrics=job.metric_batches)


def next_events(session: Session, scope: Scope, job_id: int, cursor: Cursor) -> Read:
    """The events since ``cursor``, in order (status, metric points, log lines), a page at a time."""
    job = get_job(session, scope, job_id)
    events: list[Event] = []
    status = status_of(job)
    if digest(status) != cursor.status:
        cursor = replace(cursor, status=digest(status))
        events.append(Event("status", status, cursor))
    more = False
    if job.metric_batches > cursor.metrics:
        last = min(job.metric_batches, cursor.metrics + METRIC_BATCHES_PER_EVENT)
        points = session.execute(
            select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value, MetricPoint.time)
            .where(MetricPoint.job_id == job_id, MetricPoint.batch > cursor.metrics, MetricPoint.batch <= last)
            .order_by(MetricPoint.batch, MetricPoint.step, MetricPoint.name)
        ).all()
        cursor, more = replace(cursor, metrics=last), last < job.metric_batches
        if points:
            data = [
                {"name": p.name, "step": p.step, "epoch": p.epoch, "value": p.value, "time": p.time} for p in points
            ]
            events.append(Event("metrics", {"points": data}, cursor))
    for _ in range(LOG_EVENTS_PER_READ):
        lines = read_lines(session, job_id, after=cursor.log, limit=LOG_LINES_PER_EVENT)
        if not lines:
            break
        cursor = replace(cursor, log=lines[-1].id)
        data = [
            {
                "seq": li.id,
                "attempt": li.attempt,
                "stream": str(li.stream),
                "time": li.time.isoformat(),
                "text": li.text,
            }
            for li in lines
        ]
        events.append(Event("log", {"lines": data}, cursor))
        more = more or len(lines) == LOG_LINES_PER_EVENT
    return Read(events, more, job.status.is_terminal and not more)


def changed_jobs(session: Session, scope: Scope, since: datetime, limit: int = 500) -> list[Job]:
    """The caller's jobs changed after ``since``, oldest change first (``GET /events``)."""
    query = visible_jobs(scope).where(Job.updated_at > since).order_by(Job.updated_at, Job.id).limit(limit)
    return list(session.scalars(query))
