"""Multi-node jobs (``resources.nodes`` > 1): all of a job's nodes are handed out in one claim, or none.

A claim that comes to such a job leases it to the claiming worker as node 0 and offers each other node to
a different live worker that can run it and said it has the devices free (``members`` and ``offer``, in
the claim's transaction; on PostgreSQL the chosen workers' rows are locked, skipping those another claim
holds). An offered worker takes its node with its next claim (``take``), within ``gang_seconds``; no
worker holds a node of a job that could not get all of them. Every node heartbeats its own row
(``beat``) and the job's lease runs out with the first of them, so when any node stops heartbeating the
reaper ends the lease of the whole job; a node never taken gives the job back without spending its
attempt (``give_back``). Node 0 publishes the address of the job's rendezvous (``rendezvous``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session

from app.core import logs, telemetry
from app.core.errors import LeaseLost
from app.core.models import Job, JobNode, Worker
from app.core.protocol import Capabilities
from app.core.states import JobStatus, guard


def needs(job_gpus: int, cuda: bool) -> int:
    """Devices a worker must have free for a node of a job that asks for ``job_gpus`` GPUs a node."""
    return max(job_gpus, 1) if cuda else 1


def members(
    session: Session, job: Any, claimer: str, capabilities: Capabilities | None, *, now: datetime, live_seconds: float
) -> list[str] | None:
    """Workers for nodes 1.. of ``job`` (a row with id, nodes, gpus, kind, arch, dataset): live, of the
    claimer's kind of device, able to run it, with its devices free and no node of another job. None when
    there are not enough."""
    from app.core.workers import lacks

    cuda = capabilities is not None and capabilities.gpus > 0
    holding = select(JobNode.worker_id)
    rows = session.execute(
        select(Worker.id, Worker.capabilities)
        .where(
            Worker.id != claimer,
            Worker.last_seen >= now - timedelta(seconds=live_seconds),
            Worker.free >= needs(job.gpus, cuda),
            (Worker.gpus > 0) if cuda else (Worker.gpus == 0),
            Worker.id.not_in(holding),
        )
        .order_by(Worker.last_seen.desc(), Worker.id)
        .limit(200)
        .with_for_update(skip_locked=True)
    ).all()
    able = [worker_id for worker_id, caps in rows if isinstance(caps, dict) and not lacks(caps, job)]
    wanted = job.nodes - 1
    return able[:wanted] if len(able) >= wanted else None


def offer(
    session: Session,
    job: Job,
    claimer: str,
    others: list[str],
    *,
    cuda: bool,
    now: datetime,
    lease_seconds: float,
    gang_seconds: float,
) -> None:
    """Node 0 to the claimer (taken), the others offered; the job's lease is the offers' until they are taken."""
    offered_until = now + timedelta(seconds=gang_seconds)
    session.add(
        JobNode(
            job_id=job.id,
            node=0,
            worker_id=claimer,
            taken_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
    )
    session.add_all(
        JobNode(job_id=job.id, node=i, worker_id=w, taken_at=None, lease_expires_at=offered_until)
        for i, w in enumerate(others, 1)
    )
    session.flush()
    used = needs(job.gpus, cuda)
    session.execute(
        update(Worker).where(Worker.id.in_(others)).values(free=case((Worker.free > used, Worker.free - used), else_=0))
    )
    _sync_lease(session, job.id)
    nodes = ", ".join(f"{i} offered to worker {w}" for i, w in enumerate(others, 1))
    logs.note(session, job, f"a {job.nodes}-node job: node 0 on worker {claimer}, {nodes}")


def take(
    session: Session, worker_id: str, capabilities: Capabilities | None, *, now: datetime, lease_seconds: float
) -> tuple[Job, int] | None:
    """The node of a multi-node job offered to ``worker_id`` (in time, and fitting the devices it has free now),
    now taken by it: (the job, its node); or None."""
    row = session.connection().execute(_OFFERED, {"worker": worker_id, "now": now}).first()  # usually none
    if row is None:
        return None
    job = session.execute(  # a job row another transaction holds (its gang still forming): the next claim
        select(Job)
        .where(Job.id == row.job_id, Job.status == JobStatus.RUNNING)
        .with_for_update(skip_locked=True, of=Job)
    ).scalar_one_or_none()
    cuda = capabilities is not None and capabilities.gpus > 0
    free = capabilities.free if capabilities is not None else None
    if job is None or (free is not None and free < needs(job.gpus, cuda)):
        return None  # not now: the offer lapses, and the job goes back to the queue
    session.execute(
        update(JobNode)
        .where(JobNode.job_id == row.job_id, JobNode.node == row.node)
        .values(taken_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    _sync_lease(session, job.id)
    session.refresh(job)
    return job, row.node


_OFFERED = (
    select(JobNode.job_id, JobNode.node)
    .where(
        JobNode.worker_id == bindparam("worker"),
        JobNode.taken_at.is_(None),
        JobNode.lease_expires_at >= bindparam("now"),
    )
    .order_by(JobNode.job_id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
"""A node offered to a worker, in time: every claim asks, so it is built once."""


def beat(session: Session, job_id: int, node: int, *, now: datetime, lease_seconds: float) -> datetime:
    """A node's heartbeat (its job's lease already checked): its own lease renewed; returns the job's, the
    first of its nodes' to run out. LeaseLost when the node is not one this job's lease holds."""
    done = session.execute(
        update(JobNode)
        .where(JobNode.job_id == job_id, JobNode.node == node, JobNode.taken_at.is_not(None))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(JobNode.node)
    ).first()
    if done is None:
        raise LeaseLost(job_id)
    earliest = session.scalar(select(func.min(JobNode.lease_expires_at)).where(JobNode.job_id == job_id))
    assert earliest is not None
    return earliest


def _sync_lease(session: Session, job_id: int) -> None:
    earliest = select(func.min(JobNode.lease_expires_at)).where(JobNode.job_id == job_id).scalar_subquery()
    session.execute(
        update(Job).where(Job.id == job_id).values(lease_expires_at=earliest),
        execution_options={"synchronize_session": False},
    )


def rendezvous(
    session: Session, job_id: int, lease_token: str, node: int, address: str | None
) -> tuple[int, str | None]:
    """Node 0 publishes the rendezvous ``address``; any node reads it: (the job's nodes, the address or None).
    LeaseLost unless ``lease_token`` holds the job and ``node`` is a taken node of it. Asking writes nothing."""
    mine = session.execute(
        select(JobNode.node)
        .join(Job, Job.id == JobNode.job_id)
        .where(
            JobNode.job_id == job_id,
            JobNode.node == node,
            JobNode.taken_at.is_not(None),
            Job.lease_token == lease_token,
            Job.status == JobStatus.RUNNING,
        )
    ).first()
    if mine is None:
        raise LeaseLost(job_id)
    if node == 0 and address is not None:
        session.execute(update(JobNode).where(JobNode.job_id == job_id, JobNode.node == 0).values(address=address))
    nodes = session.scalar(select(func.count()).where(JobNode.job_id == job_id)) or 0
    published = session.scalar(select(JobNode.address).where(JobNode.job_id == job_id, JobNode.node == 0))
    return nodes, published


def lapsed(session: Session, job_id: int, now: datetime) -> list[tuple[int, str, bool]]:
    """The job's nodes whose lease has run out: (node, worker, taken); an offer not taken in time among them."""
    rows = session.execute(
        select(JobNode.node, JobNode.worker_id, JobNode.taken_at)
        .where(JobNode.job_id == job_id, JobNode.lease_expires_at < now)
        .order_by(JobNode.node)
    )
    return [(node, worker, taken is not None) for node, worker, taken in rows]


def hosts_rendezvous(session: Session, worker_id: str) -> bool:
    """Whether the worker is node 0 of a job already: it serves one rendezvous (one port) at a time."""
    found = select(JobNode.job_id).where(JobNode.worker_id == worker_id, JobNode.node == 0).limit(1)
    return session.execute(found).first() is not None


def dissolve(session: Session, job_id: int) -> None:
    """The job's nodes, gone: it left running (finished, requeued, given back)."""
    session.execute(delete(JobNode).where(JobNode.job_id == job_id))


def give_back(session: Session, job: Job, missing: list[str], *, now: datetime) -> bool:
    """A job some of whose nodes were never taken: queued again, its attempt not spent; the workers that did
    not take theirs count as busy until they say otherwise. False if it had left running meanwhile."""
    line = (
        f"worker(s) {', '.join(missing)} did not take their node of this {job.nodes}-node job in time; "
        "it goes back to the queue (no attempt spent)"
    )
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, guard(Job.status, frozenset({JobStatus.RUNNING}), JobStatus.QUEUED))
        .values(
            status=JobStatus.QUEUED,
            attempt=Job.attempt - 1,
            lease_token=None,
            lease_expires_at=None,
            started_at=None,
            updated_at=now,
        )
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    ).first()
    dissolve(session, job.id)
    # Rows another transaction holds (a heartbeat of that worker) are skipped: the reaper never waits on a worker.
    unlocked = select(Worker.id).where(Worker.id.in_(missing)).with_for_update(skip_locked=True)
    session.execute(update(Worker).where(Worker.id.in_(unlocked.scalar_subquery())).values(free=0))
    if done is not None:
        logs.note(session, job, line)
        telemetry.requeued(session, "not_taken")
    return done is not None


def held(session: Session, worker_ids: list[str]) -> dict[str, list[int]]:
    """The jobs each worker holds a node of (node 0's worker is also the job's ``lease_owner``)."""
    found: dict[str, list[int]] = {}
    for worker_id, job_id in session.execute(
        select(JobNode.worker_id, JobNode.job_id).where(
            JobNode.worker_id.in_(worker_ids), JobNode.taken_at.is_not(None)
        )
    ):
        found.setdefault(worker_id, []).append(job_id)
    return found


def listing(session: Session, job_id: int) -> list[tuple[int, str, bool]]:
    """The job's nodes: (node, worker, taken), in order."""
    rows = session.execute(
        select(JobNode.node, JobNode.worker_id, JobNode.taken_at).where(JobNode.job_id == job_id).order_by(JobNode.node)
    )
    return [(node, worker, taken is not None) for node, worker, taken in rows]
