"""Workers as the service knows them: what each said it can run (on each claim), when it was last heard
from (claims and its jobs' heartbeats), what it runs now and did in the last hour; and, for a queued
job, why no worker takes it (``waiting_for``)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, true, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.core.models import Job, Sweep, Worker, utcnow
from app.core.protocol import Capabilities
from app.core.states import JobKind, JobStatus

LIVE_FOR = 1
"""A worker not heard from for this many lease lengths is lost (an idle one claims every poll_seconds;
its description is rewritten at least every quarter lease)."""


def record(session: Session, worker_id: str, capabilities: Capabilities | None, *, now: datetime | None = None) -> None:
    """Upsert the worker's description (None: an older worker that says nothing, which may run anything)
    and mark it seen: one statement, so two first claims of one worker at once cannot collide."""
    now = now or utcnow()
    values = {
        "host": capabilities.host if capabilities else None,
        "version": capabilities.version if capabilities else None,
        "capabilities": capabilities.model_dump(mode="json") if capabilities else None,
        "last_seen": now,
    }
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    stmt = insert(Worker).values(id=worker_id, first_seen=now, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=[Worker.id], set_=values))


def seen_by_job(session: Session, job_id: int, *, now: datetime | None = None) -> None:
    """A heartbeat of the job: its worker was heard from."""
    owner = select(Job.lease_owner).where(Job.id == job_id).scalar_subquery()
    session.execute(update(Worker).where(Worker.id == owner).values(last_seen=now or utcnow()))


def can_run(capabilities: Capabilities | None) -> ColumnElement[bool]:
    """The claim's filter: jobs of a kind, arch and dataset the worker's code knows (an older worker that
    says nothing: any job, as before)."""
    if capabilities is None:
        return true()
    kinds = [kind for kind in JobKind if kind.value in capabilities.kinds]  # a name no job has matches none
    return and_(
        Job.kind.in_(kinds),
        Job.arch.is_(None) | Job.arch.in_(capabilities.archs),
        Job.dataset.is_(None) | Job.dataset.in_(capabilities.datasets),
    )


class Fleet:
    """Per API process: when each worker's description was last written, so an idle worker's claims every
    few seconds write it only when it changed or a quarter of the lease has passed (``due``); and the
    distinct descriptions of the live workers, read again only after such a write or ``seconds`` (``live``:
    GET /jobs/{id} asks for every queued job, and a fleet has a few kinds of worker)."""

    def __init__(self, seconds: float = 2.0) -> None:
        self.seconds = seconds
        self.written: dict[str, tuple[int, float]] = {}
        self.generation, self.read = 0, (-1, -math.inf)
        self.found: list[Worker] = []

    def due(self, worker_id: str, capabilities: Capabilities | None, lease_seconds: float) -> bool:
        digest = hash(capabilities.model_dump_json()) if capabilities else 0
        seen, now = self.written.get(worker_id), time.monotonic()
        if seen is not None and seen[0] == digest and now - seen[1] < lease_seconds / 4:
            return False
        if len(self.written) > 10_000:
            self.written.clear()
        self.written[worker_id] = (digest, now)
        self.generation += 1
        return True

    def live(self, session: Session, lease_seconds: float, now: datetime) -> list[Worker]:
        generation, at = self.read
        if generation == self.generation and time.monotonic() - at < self.seconds:
            return self.found
        since = now - timedelta(seconds=LIVE_FOR * lease_seconds)
        rows = session.scalars(select(Worker.capabilities).where(Worker.last_seen >= since).limit(1000))
        kinds = {json.dumps(caps, sort_keys=True): caps for caps in rows}
        self.found = [Worker(id="", capabilities=caps) for caps in kinds.values()]
        self.read = (self.generation, time.monotonic())
        return self.found


def waiting_for(
    session: Session, job: Job, lease_seconds: float, *, fleet: Fleet | None = None, now: datetime | None = None
) -> str | None:
    """Why a queued job is not running yet, when something other than its turn holds it back."""
    if job.status != JobStatus.QUEUED:
        return None
    now = now or utcnow()
    if job.init_job_id is not None:
        base = session.get(Job, job.init_job_id)
        if base is not None and base.status != JobStatus.SUCCEEDED:
            return f"its base job {base.id} to succeed (it is {base.status})"
    workers = (fleet or Fleet(0)).live(session, lease_seconds, now)
    if not workers:
        return "no worker is connected"
    reason = _unsupported(job, workers)
    if reason is not None:
        return reason
    if job.sweep_id is not None:
        sweep = session.get(Sweep, job.sweep_id)
        running = select(func.count()).where(Job.sweep_id == job.sweep_id, Job.status == JobStatus.RUNNING)
        if (
            sweep is not None
            and sweep.max_concurrent is not None
            and (session.scalar(running) or 0) >= sweep.max_concurrent
        ):
            return f"its sweep {sweep.id} has its max_concurrent ({sweep.max_concurrent}) trials running"
    return None


def _unsupported(job: Job, workers: list[Worker]) -> str | None:
    """What no live worker's code can run of the job: a field none supports, or none supports them all."""
    wanted = {"kind": job.kind.value, "arch": job.arch, "dataset": job.dataset}

    def lacks(worker: Worker) -> set[str]:
        if not isinstance(worker.capabilities, dict):
            return set()  # an older worker that says nothing takes any job
        caps = worker.capabilities
        return {f for f, v in wanted.items() if v is not None and v not in (caps.get(f"{f}s") or [])}

    lacking = [lacks(w) for w in workers]
    if all(lacking):
        by_all = [f for f in wanted if all(f in missing for missing in lacking)]
        if by_all:
            return f"no worker supports {by_all[0]} {wanted[by_all[0]]}"
        return "no one worker supports " + ", ".join(f"{f} {v}" for f, v in wanted.items() if v) + " together"
    return None


@dataclass(frozen=True)
class WorkerState:
    worker: Worker
    lost: bool
    running: list[int]
    succeeded_last_hour: int
    failed_last_hour: int

    def devices(self) -> list[dict[str, Any]]:
        listed = (self.worker.capabilities or {}).get("devices") or []
        return [{**d, "busy": bool(self.running) and not self.lost} for d in listed if isinstance(d, dict)]


def states(session: Session, lease_seconds: float, *, now: datetime | None = None) -> list[WorkerState]:
    """Every worker heard from in the last day, newest first, with what it runs and did in the last hour."""
    now = now or utcnow()
    found = list(
        session.scalars(
            select(Worker)
            .where(Worker.last_seen >= now - timedelta(days=1))
            .order_by(Worker.last_seen.desc())
            .limit(500)
        )
    )
    ids = [w.id for w in found]
    running: dict[str, list[int]] = {}
    for owner, job_id in session.execute(
        select(Job.lease_owner, Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_owner.in_(ids))
    ):
        running.setdefault(owner or "", []).append(job_id)
    ended: dict[tuple[str, JobStatus], int] = {}
    for owner, status, count in session.execute(
        select(Job.lease_owner, Job.status, func.count())
        .where(Job.lease_owner.in_(ids), Job.finished_at >= now - timedelta(hours=1))
        .group_by(Job.lease_owner, Job.status)
    ):
        ended[(owner or "", status)] = count
    since = now - timedelta(seconds=LIVE_FOR * lease_seconds)
    return [
        WorkerState(
            w,
            w.last_seen < since,
            sorted(running.get(w.id, [])),
            ended.get((w.id, JobStatus.SUCCEEDED), 0),
            ended.get((w.id, JobStatus.FAILED), 0),
        )
        for w in found
    ]
