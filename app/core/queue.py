"""Every state change of a job, each one guarded UPDATE.

A transition is ``UPDATE jobs SET ... WHERE id = ? AND status IN (...)``
(and, for a worker, ``AND lease_token = ?``); zero rows updated raises. The
functions take a session and never commit: the caller (a route, a test)
commits at its boundary. On SQLite the caller must hold a write transaction
(``Database.write``: ``BEGIN IMMEDIATE``); on PostgreSQL the claim skips rows
that another transaction has locked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, case, delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.dml import Insert

from app.core.errors import Conflict, IdempotencyConflict, InvalidRequest, JobNotFound, LeaseLost, NotFound
from app.core.models import Checkpoint, IdempotencyKey, Job, MetricPoint, utcnow
from app.core.specs import (
    FinetuneSpec,
    PretrainSpec,
    describe_encoder,
    encoder_signature,
    job_spec_adapter,
)
from app.core.states import TERMINAL, JobKind, JobStatus

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value
TERMINAL_VALUES = tuple(s.value for s in TERMINAL)


# --- submitting -----------------------------------------------------------------


def spec_to_json(spec: PretrainSpec | FinetuneSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True)


def load_spec(job: Job) -> PretrainSpec | FinetuneSpec:
    """The stored spec of a job, parsed again (it was validated on submit)."""
    return job_spec_adapter.validate_python(job.spec)


def request_hash(spec: PretrainSpec | FinetuneSpec) -> str:
    canonical = json.dumps(spec_to_json(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_base_job(session: Session, spec: FinetuneSpec, base_id: int) -> None:
    loc = ("body", "model", "init", "job_id")
    base = session.get(Job, base_id)
    if base is None:
        raise InvalidRequest(f"model.init.job_id: job {base_id} does not exist", loc)
    if base.kind != JobKind.PRETRAIN:
        raise InvalidRequest(f"model.init.job_id: job {base_id} is a {base.kind} job; give a pretrain job", loc)
    if base.status in (FAILED, CANCELLED):
        raise InvalidRequest(f"model.init.job_id: job {base_id} {base.status}; it has no encoder to start from", loc)
    want, have = encoder_signature(spec), encoder_signature(load_spec(base))
    if want != have:
        raise InvalidRequest(
            f"model.init.job_id: job {base_id}'s encoder is {describe_encoder(have)}, "
            f"but this finetune needs {describe_encoder(want)}; match model.arch, hidden/bottleneck and the image shape",
            loc,
        )


def enqueue_job(
    session: Session,
    spec: PretrainSpec | FinetuneSpec,
    *,
    idempotency_key: str | None = None,
    idempotency_ttl: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> tuple[Job, bool]:
    """Store a new queued job; returns (job, created). With an idempotency key seen before, the first job."""
    now = now or utcnow()
    digest = request_hash(spec)
    if idempotency_key is not None:
        seen = session.get(IdempotencyKey, idempotency_key)
        if seen is not None and seen.created_at > now - idempotency_ttl:
            if seen.request_hash != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key '{idempotency_key}' was used for another request body; use a new key"
                )
            job = session.get(Job, seen.job_id)
            assert job is not None  # the key is deleted with its job
            return job, False
        if seen is not None:
            session.delete(seen)
            session.flush()

    base_id = spec.base_job_id if isinstance(spec, FinetuneSpec) else None
    if isinstance(spec, FinetuneSpec) and base_id is not None:
        _check_base_job(session, spec, base_id)

    job = Job(
        kind=spec.kind,
        name=spec.name,
        status=QUEUED,
        spec=spec_to_json(spec),
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        depends_on=base_id,
        progress={"epoch": 0, "epochs": spec.train.epochs, "step": 0},
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    if idempotency_key is not None:
        session.add(IdempotencyKey(key=idempotency_key, request_hash=digest, job_id=job.id, created_at=now))
        session.flush()
    return job, True


# --- reading --------------------------------------------------------------------


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[Job], int | None]:
    """Newest first; returns the page and the id to pass as the next cursor (None at the end)."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if before_id is not None:
        stmt = stmt.where(Job.id < before_id)
    jobs = list(session.scalars(stmt))
    if len(jobs) > limit:
        return jobs[:limit], jobs[limit - 1].id
    return jobs, None


def list_checkpoints(session: Session, job_id: int) -> list[Checkpoint]:
    get_job(session, job_id)
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.tag, Checkpoint.format)
    return list(session.scalars(stmt))


def find_checkpoint(session: Session, job_id: int, tag: str | None, fmt: str = "pt") -> Checkpoint:
    """The checkpoint of that tag; with no tag, ``best`` falling back to ``last``."""
    job = get_job(session, job_id)
    tags = [tag] if tag else ["best", "last"]
    for t in tags:
        found = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.tag == t, Checkpoint.format == fmt)
        ).first()
        if found is not None:
            return found
    what = f"'{tag}' checkpoint" if tag else "checkpoint"
    raise NotFound(f"job {job_id} has no {what} in format '{fmt}' yet (status: {job.status})")


# --- claiming and leases --------------------------------------------------------


@dataclass
class Claim:
    job: Job
    resume: Checkpoint | None
    init: Checkpoint | None


def _ready() -> ColumnElement[bool]:
    base = aliased(Job)
    return or_(
        Job.depends_on.is_(None),
        exists().where(base.id == Job.depends_on, base.status == SUCCEEDED),
    )


def claim_next_job(
    session: Session,
    *,
    worker_id: str,
    device: str | None,
    lease_seconds: float,
    now: datetime | None = None,
    reap: bool = True,
) -> Claim | None:
    """Lease the next claimable job (highest priority, then oldest; base job succeeded) in one statement.

    With ``reap``, expired leases are dealt with first, so no separate process is needed for that.
    """
    now = now or utcnow()
    if reap:
        reap_expired_leases(session, now=now)
    candidate = (
        select(Job.id)
        .where(Job.status == QUEUED, _ready())
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # renders as nothing on SQLite, where BEGIN IMMEDIATE serialises
        .scalar_subquery()
    )
    stmt = (
        update(Job)
        .where(Job.id == candidate, Job.status == QUEUED)
        .values(
            status=RUNNING,
            attempt=Job.attempt + 1,
            lease_token=secrets.token_hex(16),
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            worker_device=device,
            cancel_requested=False,
            started_at=now,
            updated_at=now,
        )
        .returning(Job)
    )
    job = session.execute(stmt, execution_options={"synchronize_session": False}).scalar_one_or_none()
    if job is None:
        return None
    resume = _checkpoint(session, job.id, "last")
    init = None
    if job.depends_on is not None:
        init = _checkpoint(session, job.depends_on, "best") or _checkpoint(session, job.depends_on, "last")
    return Claim(job=job, resume=resume, init=init)


def _checkpoint(session: Session, job_id: int, tag: str) -> Checkpoint | None:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.tag == tag, Checkpoint.format == "pt")
    ).first()


def _lease_lost(session: Session, job_id: int) -> Exception:
    if session.get(Job, job_id) is None:
        return JobNotFound(job_id)
    return LeaseLost(job_id)


def _fenced(job_id: int, lease_token: str) -> tuple[ColumnElement[bool], ...]:
    return (Job.id == job_id, Job.lease_token == lease_token, Job.status == RUNNING)


def heartbeat(
    session: Session,
    job_id: int,
    lease_token: str,
    *,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """Extend the lease; returns whether a cancel was requested. Raises LeaseLost."""
    now = now or utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
    if progress is not None:
        values["progress"] = progress
    row = session.execute(
        update(Job).where(*_fenced(job_id, lease_token)).values(**values).returning(Job.cancel_requested)
    ).first()
    if row is None:
        raise _lease_lost(session, job_id)
    return bool(row[0])


def _check_lease(session: Session, job_id: int, lease_token: str, now: datetime) -> None:
    # A write, not a read: on PostgreSQL it locks the row until commit, so a reaper cannot
    # take the job away between this check and the caller's writes.
    row = session.execute(
        update(Job).where(*_fenced(job_id, lease_token)).values(updated_at=now).returning(Job.id)
    ).first()
    if row is None:
        raise _lease_lost(session, job_id)


def check_lease(session: Session, job_id: int, lease_token: str) -> None:
    """Raise LeaseLost unless the token holds the job's lease (used before accepting an upload)."""
    _check_lease(session, job_id, lease_token, utcnow())


def record_metrics(
    session: Session, job_id: int, lease_token: str, points: Sequence[dict[str, Any]], *, now: datetime | None = None
) -> int:
    """Upsert metric points: a (job, name, step) reported again replaces the value. Fenced."""
    now = now or utcnow()
    _check_lease(session, job_id, lease_token, now)
    if not points:
        return 0
    received = now.timestamp()
    rows = [
        {
            "job_id": job_id,
            "name": p["name"],
            "step": p["step"],
            "epoch": p.get("epoch"),
            "value": p["value"],
            "time": received if p.get("time") is None else p["time"],
        }
        for p in points
    ]
    # Core on the table, not the ORM's bulk insert: the ORM's per-row bookkeeping cost more than the insert.
    session.connection().execute(_upsert_metrics(session.get_bind().dialect.name), rows)
    return len(rows)


@functools.cache
def _upsert_metrics(dialect: str) -> Insert:
    table = MetricPoint.__table__
    assert isinstance(table, Table)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    return stmt.on_conflict_do_update(
        index_elements=["job_id", "name", "step"],
        set_={"epoch": stmt.excluded.epoch, "value": stmt.excluded.value, "time": stmt.excluded.time},
    )


def record_checkpoint(
    session: Session,
    job_id: int,
    lease_token: str,
    *,
    tag: str,
    fmt: str,
    epoch: int,
    step: int,
    size: int,
    sha256: str,
    path: str,
    metric_value: float | None,
    now: datetime | None = None,
) -> tuple[Checkpoint, str | None]:
    """Point the job's (tag, format) checkpoint at a new file; returns it and the replaced file's path."""
    now = now or utcnow()
    _check_lease(session, job_id, lease_token, now)
    existing = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.tag == tag, Checkpoint.format == fmt)
    ).first()
    old_path = None
    if existing is None:
        existing = Checkpoint(job_id=job_id, tag=tag, format=fmt)
        session.add(existing)
    elif existing.path != path:
        old_path = existing.path
    existing.epoch, existing.step, existing.size, existing.sha256 = epoch, step, size, sha256
    existing.path, existing.metric_value, existing.created_at = path, metric_value, now
    session.flush()
    return existing, old_path


# --- ending -------------------------------------------------------------------------


def _end_lease(session: Session, job_id: int, lease_token: str, **values: Any) -> Job:
    """The fenced UPDATE that ends a worker's hold on a job; raises LeaseLost when the token no longer holds it."""
    job = session.execute(
        update(Job)
        .where(*_fenced(job_id, lease_token))
        .values(lease_token=None, lease_expires_at=None, **values)
        .returning(Job),
        execution_options={"synchronize_session": False},
    ).scalar_one_or_none()
    if job is None:
        raise _lease_lost(session, job_id)
    return job


def finish_job(
    session: Session,
    job_id: int,
    lease_token: str,
    *,
    status: str,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Job:
    """End a running job as succeeded, failed or cancelled. Fenced; a failure is final (not retried)."""
    now = now or utcnow()
    if status not in (SUCCEEDED, FAILED, CANCELLED):
        raise InvalidRequest(f"status must be succeeded, failed or cancelled, not '{status}'", ("body", "status"))
    job = _end_lease(
        session,
        job_id,
        lease_token,
        status=status,
        error=error if status != SUCCEEDED else None,
        result=result,
        finished_at=now,
        updated_at=now,
    )
    if status != SUCCEEDED:
        fail_dependents(session, job_id, status, now=now)
    return job


def release_job(session: Session, job_id: int, lease_token: str, *, now: datetime | None = None) -> Job:
    """Give a running job back to the queue without spending its attempt (worker shutdown).

    A job whose cancel was requested ends cancelled instead.
    """
    now = now or utcnow()
    job = _end_lease(
        session,
        job_id,
        lease_token,
        status=case((Job.cancel_requested, CANCELLED), else_=QUEUED),
        attempt=case((Job.cancel_requested, Job.attempt), else_=Job.attempt - 1),
        finished_at=case((Job.cancel_requested, now), else_=None),
        updated_at=now,
    )
    if job.status == CANCELLED:
        fail_dependents(session, job_id, CANCELLED, now=now)
    return job


def cancel_job(session: Session, job_id: int, *, now: datetime | None = None) -> Job:
    """Queued: cancelled at once. Running: cancel requested, the worker stops it. Finished: Conflict."""
    now = now or utcnow()
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=CANCELLED, finished_at=now, updated_at=now, error="cancelled before it started")
        .returning(Job),
        execution_options={"synchronize_session": False},
    ).scalar_one_or_none()
    if job is not None:
        fail_dependents(session, job_id, CANCELLED, now=now)
        return job
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == RUNNING)
        .values(cancel_requested=True, updated_at=now)
        .returning(Job),
        execution_options={"synchronize_session": False},
    ).scalar_one_or_none()
    if job is not None:
        return job
    job = get_job(session, job_id)
    raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")


def fail_dependents(session: Session, base_id: int, base_status: str, *, now: datetime) -> list[int]:
    """Fail the queued jobs that wait for a base job that will never succeed."""
    rows = session.execute(
        update(Job)
        .where(Job.depends_on == base_id, Job.status == QUEUED)
        .values(
            status=FAILED,
            error=f"base job {base_id} {base_status}; this finetune cannot start from its encoder",
            finished_at=now,
            updated_at=now,
        )
        .returning(Job.id)
    ).all()
    return [r[0] for r in rows]


def reap_expired_leases(session: Session, *, now: datetime | None = None) -> list[tuple[int, str]]:
    """Requeue (or fail, out of attempts; or cancel, if asked) running jobs whose lease expired."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job)
        .where(Job.status == RUNNING, Job.lease_expires_at < now)
        .order_by(Job.id)
        .limit(100)
        .with_for_update(skip_locked=True)
    ).all()
    changed: list[tuple[int, str]] = []
    for job in expired:
        lost = f"worker {job.lease_owner} stopped heartbeating during attempt {job.attempt} of {job.max_attempts}"
        if job.cancel_requested:
            status, error = CANCELLED, f"cancelled ({lost})"
        elif job.attempt >= job.max_attempts:
            status, error = FAILED, f"lease expired: {lost}; no attempts left"
        else:
            status, error = QUEUED, f"lease expired: {lost}; requeued"
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == RUNNING, Job.lease_expires_at < now)
            .values(
                status=status,
                error=error,
                lease_token=None,
                lease_expires_at=None,
                finished_at=now if status != QUEUED else None,
                updated_at=now,
            )
            .returning(Job.id),
            execution_options={"synchronize_session": False},
        ).first()
        if done is None:
            continue  # a heartbeat got there first
        changed.append((job.id, status))
        if status != QUEUED:
            fail_dependents(session, job.id, status, now=now)
    if changed:
        session.expire_all()
    return changed


def delete_job(session: Session, job_id: int) -> list[str]:
    """Delete a finished job with its metrics and checkpoints; returns the checkpoint paths to remove."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobNotFound(job_id)
    if job.status not in TERMINAL_VALUES:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first (POST /jobs/{job_id}/cancel), then delete it")
    waiting = session.scalars(
        select(Job.id).where(Job.depends_on == job_id, Job.status.not_in(TERMINAL_VALUES)).order_by(Job.id)
    ).all()
    if waiting:
        ids = ", ".join(map(str, waiting))
        raise Conflict(f"job {job_id} is the base of unfinished job(s) {ids}; cancel or delete them first")
    session.execute(update(Job).where(Job.depends_on == job_id).values(depends_on=None))
    paths = list(session.scalars(select(Checkpoint.path).where(Checkpoint.job_id == job_id)))
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id))
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    return paths
