"""The state machine of running jobs (the claim that starts one: queue.py): heartbeat, finish, release, reap;
the lease fence.

A transition is one guarded ``UPDATE jobs SET ... WHERE id = ? AND status IN (...)`` (and, for a
worker, ``AND lease_token = ?``), its statuses checked against ``states.TRANSITIONS``; zero rows
updated raises. The functions take a session and never commit. On SQLite the caller holds a write
transaction (``Database.write``: ``BEGIN IMMEDIATE``); on PostgreSQL the claim skips rows that
another transaction has locked. Worker-protocol functions are unscoped: the lease token is the
worker's right to the job.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, bindparam, case, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from app.core import gangs, logs, telemetry
from app.core.errors import InvalidRequest, JobNotFound, LeaseLost
from app.core.models import Job, status_is, utcnow
from app.core.states import RETRY_ON_DEFAULT, ErrorClass, JobStatus, guard

QUEUED, RUNNING = frozenset({JobStatus.QUEUED}), frozenset({JobStatus.RUNNING})


# --- the fence ----------------------------------------------------------------------


def _lease_lost(session: Session, job_id: int) -> Exception:
    if session.get(Job, job_id) is None:
        return JobNotFound(job_id)
    return LeaseLost(job_id)


def fenced(job_id: int, lease_token: str, *moving_to: JobStatus) -> tuple[ColumnElement[bool], ...]:
    """The WHERE clause of every worker write: this job, this lease, still running (and allowed to move on)."""
    return (Job.id == job_id, Job.lease_token == lease_token, guard(Job.status, RUNNING, *moving_to))


def leased_job(session: Session, job_id: int, lease_token: str) -> Job:
    """The job ``lease_token`` holds (its row locked until commit on PostgreSQL); LeaseLost otherwise."""
    check_lease(session, job_id, lease_token)
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None  # the fenced UPDATE found it
    return job


def next_metric_batch(session: Session, job_id: int, lease_token: str, *, now: datetime) -> int:
    """Fence a metric write (as ``check_lease`` does) and number its batch: event streams read points by it."""
    batch = session.execute(
        update(Job)
        .where(*fenced(job_id, lease_token))
        .values(updated_at=now, metric_batches=Job.metric_batches + 1)
        .returning(Job.metric_batches)
    ).scalar()
    if batch is None:
        raise _lease_lost(session, job_id)
    return int(batch)


def check_lease(session: Session, job_id: int, lease_token: str, *, now: datetime | None = None) -> None:
    """Raise LeaseLost unless the token holds the job's lease.

    A write, not a read: on PostgreSQL it locks the row until commit, so a reaper cannot take the
    job away between this check and the caller's writes.
    """
    row = session.execute(
        update(Job).where(*fenced(job_id, lease_token)).values(updated_at=now or utcnow()).returning(Job.id)
    ).first()
    if row is None:
        raise _lease_lost(session, job_id)


def heartbeat(
    session: Session,
    job_id: int,
    lease_token: str,
    *,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
    node: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Extend the lease (of a multi-node job: the ``node``'s; the job's runs out with the first of its nodes');
    returns whether a cancel was requested. Raises LeaseLost."""
    now = now or utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
    if progress is not None:
        values["progress"] = progress
    row = session.execute(
        update(Job).where(*fenced(job_id, lease_token)).values(**values).returning(Job.cancel_requested, Job.nodes)
    ).first()
    if row is None:
        raise _lease_lost(session, job_id)
    if node is not None or row.nodes > 1:
        earliest = gangs.beat(session, job_id, node or 0, now=now, lease_seconds=lease_seconds)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=earliest))
    return bool(row.cancel_requested)


# --- ending -------------------------------------------------------------------------


def _end_lease(session: Session, job_id: int, lease_token: str, *targets: JobStatus, **values: Any) -> Job:
    """The fenced UPDATE that ends a worker's hold on a job; raises LeaseLost when the token no longer holds it."""
    stmt: ReturningUpdate[Job]
    if any(isinstance(v, ClauseElement) for v in values.values()):  # computed in SQL (a release): built each time
        where = update(Job).where(*fenced(job_id, lease_token, *targets))
        stmt = where.values(lease_token=None, lease_expires_at=None, **values).returning(Job)
        params: dict[str, Any] = {}
    else:  # plain values (every finish): the statement is built once per set of fields, the values bound
        stmt = _ending(tuple(sorted(values)), targets)
        params = {"job_id": job_id, "token": lease_token, **{f"v_{k}": v for k, v in values.items()}}
    job = session.execute(
        stmt,
        params,
        # populate_existing: a copy of the row this session read before (finish_job's) shows the new values
        execution_options={"synchronize_session": False, "populate_existing": True},
    ).scalar_one_or_none()
    if job is None:
        raise _lease_lost(session, job_id)
    if job.nodes > 1:
        gangs.dissolve(session, job_id)
    return job


@functools.lru_cache(maxsize=64)
def _ending(fields: tuple[str, ...], targets: tuple[JobStatus, ...]) -> ReturningUpdate[Job]:
    return (
        update(Job)
        .where(
            Job.id == bindparam("job_id"), Job.lease_token == bindparam("token"), guard(Job.status, RUNNING, *targets)
        )
        .values(lease_token=None, lease_expires_at=None, **{f: bindparam(f"v_{f}") for f in fields})
        .returning(Job)
    )


def finish_job(
    session: Session,
    job_id: int,
    lease_token: str,
    *,
    status: JobStatus,
    error: str | None = None,
    error_class: ErrorClass | None = None,
    result: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    retry: bool = True,
    now: datetime | None = None,
) -> Job:
    """End a running job as succeeded, failed or cancelled, with where it got to (``progress``, if the
    worker says). Fenced. A failure of a class in the job's ``retry_on`` is requeued instead while it
    has attempts left (and no cancel was asked for), unless ``retry`` is False (a job that can never
    start); any other failure is final."""
    now = now or utcnow()
    status = JobStatus(status)
    if not status.is_terminal:
        raise InvalidRequest(f"status must be succeeded, failed or cancelled, not '{status}'", ("body", "status"))
    if status == JobStatus.FAILED:
        error_class = error_class or ErrorClass.USER
        requeued = _retry(session, job_id, lease_token, error, error_class, progress, now) if retry else None
        if requeued is not None:
            return requeued
    job = _end_lease(
        session,
        job_id,
        lease_token,
        status,
        status=status,
        error=error if status != JobStatus.SUCCEEDED else None,
        error_class=error_class if status == JobStatus.FAILED else None,
        result=result,
        finished_at=now,
        updated_at=now,
        **({"progress": progress} if progress is not None else {}),
    )
    telemetry.finished(session, status, job.error_class)
    if status != JobStatus.SUCCEEDED:
        fail_dependents(session, job_id, status, now=now)
    return job


def _retry(
    session: Session,
    job_id: int,
    lease_token: str,
    error: str | None,
    error_class: ErrorClass,
    progress: dict[str, Any] | None,
    now: datetime,
) -> Job | None:
    """The failed job requeued, if its ``retry_on`` has ``error_class`` and attempts are left; else None."""
    held = leased_job(session, job_id, lease_token)
    attempt = f"attempt {held.attempt} of {held.max_attempts} failed ({error_class})"
    if not retries(held, error_class):
        if error_class in retry_on(held):
            logs.note(session, held, f"{attempt}; no attempts left")
        return None
    line = f"{attempt}: {first_line(error)}; requeued"
    job = _end_lease(
        session,
        job_id,
        lease_token,
        JobStatus.QUEUED,
        status=JobStatus.QUEUED,
        error=line,
        error_class=error_class,
        updated_at=now,
        **({"progress": progress} if progress is not None else {}),
    )
    logs.note(session, job, line)
    telemetry.requeued(session, "retry")
    return job


def retry_on(job: Job) -> frozenset[ErrorClass]:
    """The failure classes the job's spec retries (a spec stored before ``retry_on`` existed: infra)."""
    spec = job.spec if isinstance(job.spec, dict) else {}
    named = spec.get("retry_on", RETRY_ON_DEFAULT)
    try:
        return frozenset(ErrorClass(c) for c in named) if isinstance(named, list) else frozenset(RETRY_ON_DEFAULT)
    except (ValueError, TypeError):
        return frozenset(RETRY_ON_DEFAULT)


def retries(job: Job, error_class: ErrorClass) -> bool:
    """Whether a failure of ``error_class`` gets another attempt."""
    return error_class in retry_on(job) and job.attempt < job.max_attempts and not job.cancel_requested


def first_line(error: str | None) -> str:
    return (error or "no reason given").split("\n", 1)[0][:500]


def release_job(session: Session, job_id: int, lease_token: str, *, now: datetime | None = None) -> Job:
    """Give a running job back to the queue without spending its attempt (worker shutdown).

    A job whose cancel was requested ends cancelled instead.
    """
    now = now or utcnow()
    job = _end_lease(
        session,
        job_id,
        lease_token,
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
        status=case((Job.cancel_requested, JobStatus.CANCELLED.value), else_=JobStatus.QUEUED.value),
        attempt=case((Job.cancel_requested, Job.attempt), else_=Job.attempt - 1),
        finished_at=case((Job.cancel_requested, now), else_=None),
        updated_at=now,
    )
    if job.status == JobStatus.CANCELLED:
        telemetry.finished(session, JobStatus.CANCELLED)
        fail_dependents(session, job_id, JobStatus.CANCELLED, now=now)
    else:
        telemetry.requeued(session, "released")
    return job


def fail_dependents(session: Session, base_id: int, base_status: JobStatus, *, now: datetime) -> list[int]:
    """Fail the queued jobs that wait for a base job that will never succeed."""
    rows = session.execute(
        update(Job)
        .where(Job.init_job_id == base_id, guard(Job.status, QUEUED, JobStatus.FAILED))
        .values(
            status=JobStatus.FAILED,
            error=f"base job {base_id} {base_status}; this finetune cannot start from its encoder",
            error_class=ErrorClass.USER,
            finished_at=now,
            updated_at=now,
        )
        .returning(Job.id)
    ).all()
    telemetry.finished(session, JobStatus.FAILED, ErrorClass.USER, amount=len(rows))
    return [r[0] for r in rows]


def _fate(job: Job, worker: str | None) -> tuple[JobStatus, str]:
    """What becomes of a running job whose lease expired (``worker`` stopped heartbeating), and the line that says so."""
    lost = f"worker {worker} stopped heartbeating during attempt {job.attempt} of {job.max_attempts}"
    if job.cancel_requested:
        return JobStatus.CANCELLED, f"cancelled ({lost})"
    if ErrorClass.INFRA not in retry_on(job):
        return JobStatus.FAILED, f"lease expired: {lost}; infra is not in its retry_on"
    if job.attempt >= job.max_attempts:
        return JobStatus.FAILED, f"lease expired: {lost}; no attempts left"
    return JobStatus.QUEUED, f"lease expired: {lost}; requeued"


def reap_expired_leases(session: Session, *, now: datetime | None = None) -> list[tuple[int, JobStatus]]:
    """Requeue (or fail, out of attempts; or cancel, if asked) running jobs whose lease expired."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job)
        .where(status_is(JobStatus.RUNNING, session.get_bind().dialect.name), Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)  # the index's order: no sort, however many jobs run
        .limit(100)
        .with_for_update(skip_locked=True, of=Job)
    ).all()
    changed: list[tuple[int, JobStatus]] = []
    for job in expired:
        lost = job.lease_owner
        if job.nodes > 1:  # the node whose lease ran out: an offer not taken gives the job back, no attempt spent
            lapsed = gangs.lapsed(session, job.id, now)
            untaken = [worker for _, worker, taken in lapsed if not taken]
            if untaken:
                if gangs.give_back(session, job, untaken, now=now):
                    changed.append((job.id, JobStatus.QUEUED))
                continue
            gangs.dissolve(session, job.id)
            lost = ", ".join(worker for _, worker, _ in lapsed) or lost
        status, error = _fate(job, lost)
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, guard(Job.status, RUNNING, status), Job.lease_expires_at < now)
            .values(
                status=status,
                error=error,
                error_class=ErrorClass.INFRA if status != JobStatus.CANCELLED else None,
                lease_token=None,
                lease_expires_at=None,
                finished_at=now if status != JobStatus.QUEUED else None,
                updated_at=now,
            )
            .returning(Job.id),
            execution_options={"synchronize_session": False},
        ).first()
        if done is None:
            continue  # a heartbeat got there first
        logs.note(session, job, error)
        telemetry.lease_expired(session, status)
        changed.append((job.id, status))
        if status != JobStatus.QUEUED:
            fail_dependents(session, job.id, status, now=now)
    if changed:
        session.expire_all()
    return changed
