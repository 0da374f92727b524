"""Server-Sent Events (sse-starlette): ``GET /jobs/{id}/events`` (status, metrics, log, end) and
``GET /events`` (status of all your jobs).

Each stream reads from the database whenever this process sees a change to some job (a worker's
report here: ``app.state.changes``) and at least every half second (a change reported to another
API process), so an event reaches its client within a second of the worker's report. A comment
line every 15 s keeps proxies from closing an idle stream. Neither is shed or made to take a turn
(app/api/shedding.py): they wait by design.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.auth import ScopeDep
from app.api.deps import DatabaseDep, quick_read
from app.api.routes.jobs import JobId
from app.api.wakeup import Wakeup
from app.core import events
from app.core.db import Database
from app.core.errors import JobNotFound
from app.core.jobs import Scope
from app.core.models import Job, utcnow

log = logging.getLogger("trainjobs.api")
router = APIRouter(tags=["events"])
POLL_SECONDS = 0.5
PING_SECONDS = 15
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "The event stream."}
}


def changes(request: Request) -> Wakeup:
    wakeup: Wakeup = request.app.state.changes
    return wakeup


def sse(event: str, data: object, event_id: str) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":"), default=str), event=event, id=event_id)


@router.get("/jobs/{job_id}/events", responses={**STREAM, 404: {"description": "No such job of yours."}})
async def job_events(
    job_id: JobId,
    request: Request,
    db: DatabaseDep,
    scope: ScopeDep,
    last_event_id: LastEventId = None,
    start: Annotated[
        Literal["beginning", "now"],
        Query(description="Without Last-Event-ID: every point and line from the beginning, or only new ones."),
    ] = "beginning",
) -> EventSourceResponse:
    """A job's events: ``status`` (when its status, progress, attempt or error change; the first event),
    ``metrics`` (new points), ``log`` (new lines), ``end`` (it has finished; the stream closes). Each has
    an ``id``: reconnect with ``Last-Event-ID`` to resume where it broke off, nothing lost or repeated."""
    now = await run_in_threadpool(read_job, db, scope, job_id)  # a 404 now, not a stream that ends at once
    cursor = events.Cursor.parse(last_event_id) if last_event_id or start == "beginning" else now
    wakeup = changes(request)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        nonlocal cursor
        seen: object = None
        while True:
            changed = wakeup.current()
            try:
                # Every write to a job moves its updated_at: one read by primary key (on the event loop on
                # SQLite) tells whether there is anything to read at all; an idle stream costs only that.
                version = await quick_read(db, functools.partial(updated_at, job_id=job_id))
                if version is not None and version == seen:
                    await Wakeup.wait(changed, POLL_SECONDS)
                    continue
                read = await run_in_threadpool(read_events, db, scope, job_id, cursor)
                seen = None if read.more else version
            except JobNotFound:  # deleted since: nothing more will come
                yield sse("end", {"id": job_id, "deleted": True}, str(cursor))
                return
            except SQLAlchemyError:  # the database is away: the client reconnects with its last id
                log.warning(
                    "an event stream of job %s ended: the database did not answer", job_id, extra={"job_id": job_id}
                )
                return
            for event in read.events:
                cursor = event.cursor
                yield sse(event.name, event.data, str(cursor))
            if read.finished:
                yield sse("end", {"id": job_id}, str(cursor))
                return
            if not read.more:
                await Wakeup.wait(changed, POLL_SECONDS)

    return EventSourceResponse(stream(), ping=PING_SECONDS)


@router.get("/events", responses=STREAM)
async def all_events(
    request: Request, db: DatabaseDep, scope: ScopeDep, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """``status`` events of all your jobs as they change (for list views); resumes after ``Last-Event-ID``."""
    since = parse_time(last_event_id) or utcnow()
    wakeup = changes(request)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        nonlocal since
        while True:
            changed = wakeup.current()
            try:
                jobs = await run_in_threadpool(read_changed, db, scope, since)
            except SQLAlchemyError:
                log.warning("an event stream of all jobs ended: the database did not answer")
                return
            for job in jobs:
                since = job.updated_at
                yield sse("status", events.status_of(job), since.isoformat())
            await Wakeup.wait(changed, POLL_SECONDS)

    return EventSourceResponse(stream(), ping=PING_SECONDS)


def parse_time(text: str | None) -> datetime | None:
    """A ``Last-Event-ID`` of ``GET /events``, or None (from now on) for one that is not a time we wrote."""
    try:
        found = datetime.fromisoformat(text or "")
        found = (found if found.tzinfo else found.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return found if datetime(2000, 1, 1, tzinfo=UTC) < found < datetime(9000, 1, 1, tzinfo=UTC) else None


def updated_at(session: Session, job_id: int) -> datetime | None:
    return session.scalar(select(Job.updated_at).where(Job.id == job_id))


def read_job(db: Database, scope: Scope, job_id: int) -> events.Cursor:
    """The place of everything the job has now (a 404 for a job the caller cannot see)."""
    with db.read() as session:
        return events.cursor_now(session, scope, job_id)


def read_events(db: Database, scope: Scope, job_id: int, cursor: events.Cursor) -> events.Read:
    with db.read() as session:
        return events.next_events(session, scope, job_id, cursor)


def read_changed(db: Database, scope: Scope, since: datetime) -> list[Job]:
    with db.read() as session:
        return events.changed_jobs(session, scope, since)
