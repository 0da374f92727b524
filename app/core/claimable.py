"""What a claim may take: the conditions a queued job must meet, as SQL (the claim itself: leases.py)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from app.core.models import Job, Sweep
from app.core.states import JobKind, JobStatus


def runs_on_a_worker() -> ColumnElement[bool]:
    """A job of a kind that workers train (``JobKind.runs_on_worker``); which worker may take it is ``can_run``."""
    return Job.kind.in_(sorted(kind for kind in JobKind if kind.runs_on_worker))


def dependencies_met() -> ColumnElement[bool]:
    """The job it waits for (a finetune's base pretrain job), if any, has succeeded."""
    base = aliased(Job)
    return or_(
        Job.init_job_id.is_(None),
        exists().where(base.id == Job.init_job_id, base.status == JobStatus.SUCCEEDED),
    )


def sweep_has_room() -> ColumnElement[bool]:
    """Not a trial of a sweep that has its ``max_concurrent`` trials running already."""
    running = aliased(Job)
    count = (
        select(func.count())
        .select_from(running)
        .where(running.sweep_id == Sweep.id, running.status == JobStatus.RUNNING)
        .scalar_subquery()
    )
    full = exists().where(Sweep.id == Job.sweep_id, Sweep.max_concurrent.is_not(None), Sweep.max_concurrent <= count)
    return or_(Job.sweep_id.is_(None), ~full)


def sweep_room_held(session: Session, sweep_id: int) -> bool:
    """Whether the sweep may start one more trial, under its row's lock (PostgreSQL): two claims cannot both
    start the last one. A sweep locked elsewhere is full for now: a claim never waits holding a job's row."""
    found = session.execute(
        select(Sweep.max_concurrent).where(Sweep.id == sweep_id).with_for_update(skip_locked=True)
    ).first()
    running = select(func.count()).where(Job.sweep_id == sweep_id, Job.status == JobStatus.RUNNING)
    return found is not None and (found[0] is None or (session.scalar(running) or 0) < found[0])
