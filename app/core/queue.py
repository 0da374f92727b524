"""The queue as a claim sees it: the conditions a queued job must meet (a kind workers run, its base job
succeeded, its sweep with room), and ``claim_next_job``, which leases the next one a worker can run. The
rest of a running job's life (heartbeats, the fence, finish, release, reap) is leases.py.

The conditions are built once (``functools.cache``): building an aliased subquery anew cost a claim more
than running it, and the same objects hit SQLAlchemy's cache of compiled statements.
"""

from __future__ import annotations

import functools
import secrets
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.core import gangs
from app.core.leases import QUEUED, reap_expired_leases
from app.core.models import Job, Sweep, status_is, utcnow
from app.core.protocol import Capabilities
from app.core.states import JobKind, JobStatus, guard

CLAIM_LOOKS, GANG_LOOKS = 12, 3
"""Candidates one claim looks at at most; multi-node jobs without the workers for them passed over before it
looks at jobs of one node only (so queued gangs never stop a worker from getting the job it can run)."""


@functools.cache
def _queued(dialect: str) -> ColumnElement[bool]:
    return status_is(JobStatus.QUEUED, dialect)


@functools.cache
def runs_on_a_worker() -> ColumnElement[bool]:
    """A job of a kind that workers train (``JobKind.runs_on_worker``); which worker may take it is ``can_run``."""
    return Job.kind.in_(sorted(kind for kind in JobKind if kind.runs_on_worker))


# Both conditions are per-row scalar subqueries by primary key, not EXISTS: under OR, PostgreSQL turns an
# EXISTS into a "hashed SubPlan" that reads every succeeded job (every sweep) before the first row it checks,
# a cost that grows with the history (docs/benchmarks.md); a scalar subquery is one index lookup a row.


@functools.cache
def dependencies_met() -> ColumnElement[bool]:
    """The job it waits for (a finetune's base pretrain job), if any, has succeeded."""
    base = aliased(Job)
    base_status = select(base.status).where(base.id == Job.init_job_id).scalar_subquery()
    return or_(Job.init_job_id.is_(None), base_status == JobStatus.SUCCEEDED)


@functools.cache
def sweep_has_room() -> ColumnElement[bool]:
    """Not a trial of a sweep that has its ``max_concurrent`` trials running already."""
    running = aliased(Job)
    count = (
        select(func.count())
        .select_from(running)
        .where(running.sweep_id == Job.sweep_id, running.status == JobStatus.RUNNING)
        .scalar_subquery()
    )
    limit = select(Sweep.max_concurrent).where(Sweep.id == Job.sweep_id).scalar_subquery()
    return or_(Job.sweep_id.is_(None), limit.is_(None), limit > count)


def sweep_room_held(session: Session, sweep_id: int) -> bool:
    """Whether the sweep may start one more trial, under its row's lock (PostgreSQL): two claims cannot both
    start the last one. A sweep locked elsewhere is full for now: a claim never waits holding a job's row."""
    found = session.execute(
        select(Sweep.max_concurrent).where(Sweep.id == sweep_id).with_for_update(skip_locked=True)
    ).first()
    running = select(func.count()).where(Job.sweep_id == sweep_id, Job.status == JobStatus.RUNNING)
    return found is not None and (found[0] is None or (session.scalar(running) or 0) < found[0])


def claim_next_job(
    session: Session,
    *,
    worker_id: str,
    device: str | None,
    lease_seconds: float,
    now: datetime | None = None,
    reap: bool = True,
    can_run: ColumnElement[bool] | None = None,
    capabilities: Capabilities | None = None,
    gang_seconds: float = 30.0,
) -> Job | None:
    """Lease the next claimable job the worker ``can_run`` (highest priority, then oldest; a sweep's trial only
    while the sweep has room under its ``max_concurrent``; a multi-node job only with workers for all its other
    nodes, offered them in the same transaction: gangs.py). With ``reap``, expired leases go first."""
    now = now or utcnow()
    if reap:
        reap_expired_leases(session, now=now)
    full: list[int] = []  # sweeps found full under their lock: passed over in this claim
    passed: list[int] = []  # multi-node jobs without enough free workers now
    one_node = False  # after a few such, or when this worker hosts a rendezvous already: jobs of one node only
    for _ in range(CLAIM_LOOKS):
        queued = _queued(session.get_bind().dialect.name)
        conditions = [queued, runs_on_a_worker(), dependencies_met(), sweep_has_room()]
        if can_run is not None:
            conditions.append(can_run)
        if full:
            conditions.append(or_(Job.sweep_id.is_(None), Job.sweep_id.not_in(full)))
        if passed:
            conditions.append(Job.id.not_in(passed))
        if one_node:
            conditions.append(Job.nodes == 1)
        plain = not (full or passed or one_node)  # the usual claim: its statement built once (per worker kind)
        candidate = session.execute(_first_of(queued, can_run) if plain else _first(conditions)).first()
        if candidate is None:
            return None
        if candidate.sweep_id is not None and not sweep_room_held(session, candidate.sweep_id):
            full.append(candidate.sweep_id)
            continue
        if candidate.nodes == 1:
            return _lease(session, candidate.id, worker_id, device, lease_seconds, now)
        hosting = gangs.hosts_rendezvous(session, worker_id)  # one port a worker: node 0 of one job at a time
        others = (
            None
            if hosting
            else gangs.members(session, candidate, worker_id, capabilities, now=now, live_seconds=lease_seconds)
        )
        if others is None:
            passed.append(candidate.id)
            one_node = hosting or len(passed) >= GANG_LOOKS
            continue
        job = _lease(session, candidate.id, worker_id, device, lease_seconds, now)
        cuda = capabilities is not None and capabilities.gpus > 0
        gangs.offer(
            session, job, worker_id, others, cuda=cuda, now=now, lease_seconds=lease_seconds, gang_seconds=gang_seconds
        )
        return job
    return None


@functools.lru_cache(maxsize=256)
def _first_of(
    queued: ColumnElement[bool], can_run: ColumnElement[bool] | None
) -> Select[int, int | None, int, int, JobKind, str | None, str | None]:
    conditions = [queued, runs_on_a_worker(), dependencies_met(), sweep_has_room()]
    return _first([*conditions, *([can_run] if can_run is not None else [])])


def _first(conditions: list[ColumnElement[bool]]) -> Select[int, int | None, int, int, JobKind, str | None, str | None]:
    """The claim's candidate: the first job by priority, then age, that meets ``conditions``."""
    return (
        select(Job.id, Job.sweep_id, Job.nodes, Job.gpus, Job.kind, Job.arch, Job.dataset)
        .where(*conditions)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Job)  # renders as nothing on SQLite: BEGIN IMMEDIATE serialises
    )


def _lease(
    session: Session, job_id: int, worker_id: str, device: str | None, lease_seconds: float, now: datetime
) -> Job:
    values = {"job_id": job_id, "token": secrets.token_hex(16), "owner": worker_id, "device": device, "now": now}
    values["expires"] = now + timedelta(seconds=lease_seconds)
    # populate_existing: a copy of the row this session holds (a claim that just failed a job) is refreshed
    options = {"synchronize_session": False, "populate_existing": True}
    return session.execute(_LEASE, values, execution_options=options).scalar_one()


_LEASE = (
    update(Job)
    .where(Job.id == bindparam("job_id"), guard(Job.status, QUEUED, JobStatus.RUNNING))
    .values(
        status=JobStatus.RUNNING,
        attempt=Job.attempt + 1,
        lease_token=bindparam("token"),
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("expires"),
        worker_device=bindparam("device"),
        cancel_requested=False,
        started_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .returning(Job)
)
"""A claim's lease of a queued job, built once (building it anew cost more than running it)."""
