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

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.jobs import Scope, get_job, visible_jobs
from app.core.logs import read_lines
from app.core.models import Job, MetricPoint

LOG_LINES_PER_EVENT = 1000


@dataclass(frozen=True)
class Cursor:
    log: int = 0
    metrics: int = 0
    status: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """From a ``Last-Event-ID``; anything unreadable starts from the beginning."""
        try:
            log, metrics, status = (text or "").split(".", 2)
            return cls(int(log), int(metrics), status[:16])
        except ValueError:
            return cls()

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
        "cancel_requested": job.cancel_requested,
        "result": job.result,
        "worker": job.lease_owner,
    }


def digest(status: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(status, sort_keys=True, default=str).encode()).hexdigest()[:16]


def next_events(session: Session, scope: Scope, job_id: int, cursor: Cursor) -> tuple[list[Event], bool]:
    """The events since ``cursor``, in order (status, metric points, log lines), and whether the job has
    finished (then everything it will ever have is in them: the stream ends)."""
    job = get_job(session, scope, job_id)
    events: list[Event] = []
    status = status_of(job)
    if digest(status) != cursor.status:
        cursor = replace(cursor, status=digest(status))
        events.append(Event("status", status, cursor))
    points = session.execute(
        select(
            MetricPoint.name,
            MetricPoint.step,
            MetricPoint.epoch,
            MetricPoint.value,
            MetricPoint.time,
            MetricPoint.batch,
        )
        .where(MetricPoint.job_id == job_id, MetricPoint.batch > cursor.metrics)
        .order_by(MetricPoint.batch, MetricPoint.step, MetricPoint.name)
    ).all()
    if points:
        cursor = replace(cursor, metrics=max(p.batch for p in points))
        data = [{"name": p.name, "step": p.step, "epoch": p.epoch, "value": p.value, "time": p.time} for p in points]
        events.append(Event("metrics", {"points": data}, cursor))
    while lines := read_lines(session, job_id, after=cursor.log, limit=LOG_LINES_PER_EVENT):
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
        if len(lines) < LOG_LINES_PER_EVENT:
            break
    return events, job.status.is_terminal


def changed_jobs(session: Session, scope: Scope, since: datetime, limit: int = 500) -> list[Job]:
    """The caller's jobs changed after ``since``, oldest change first (``GET /events``)."""
    query = visible_jobs(scope).where(Job.updated_at > since).order_by(Job.updated_at, Job.id).limit(limit)
    return list(session.scalars(query))
