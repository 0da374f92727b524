"""Workers as the service knows them: what each said it can run (on each claim), when it was last heard
from (claims and its jobs' heartbeats), what it runs now and did in the last hour; and, for a queued
job, why no worker takes it (``waiting_for``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, true, update
from sqlalchemy.orm import Session

from app.core.models import Job, Sweep, Worker, utcnow
from app.core.protocol import Capabilities
from app.core.states import JobKind, JobStatus

LIVE_FOR = 1
"""A worker not heard from for this many lease lengths is lost (an idle one claims every poll_seconds)."""


def record(session: Session, worker_id: str, capabilities: Capabilities, *, now: datetime | None = None) -> None:
    """Upsert the worker's description and mark it seen."""
    now = now or utcnow()
    found = session.get(Worker, worker_id)
    described = capabilities.model_dump(mode="json")
    if found is None:
        session.add(
            Worker(
                id=worker_id,
                host=capabilities.host,
                version=capabilities.version,
                capabilities=described,
                first_seen=now,
                last_seen=now,
            )
        )
    else:
        found.host, found.version, found.capabilities, found.last_seen = (
            capabilities.host,
            capabilities.version,
            described,
            now,
        )
    session.flush()


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


def live(session: Session, lease_seconds: float, now: datetime) -> list[Worker]:
    since = now - timedelta(seconds=LIVE_FOR * lease_seconds)
    return list(session.scalars(select(Worker).where(Worker.last_seen >= since).order_by(Worker.id).limit(1000)))


def waiting_for(session: Session, job: Job, lease_seconds: float, *, now: datetime | None = None) -> str | None:
    """Why a queued job is not running yet, when something other than its turn holds it back."""
    if job.status != JobStatus.QUEUED:
        return None
    now = now or utcnow()
    if job.init_job_id is not None:
        base = session.get(Job, job.init_job_id)
        if base is not None and base.status != JobStatus.SUCCEEDED:
            return f"its base job {base.id} to succeed (it is {base.status})"
    workers = live(session, lease_seconds, now)
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
        caps = worker.capabilities if isinstance(worker.capabilities, dict) else {}
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
        listed = self.worker.capabilities.get("devices") or []
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
