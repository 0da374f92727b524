"""Workers as the service knows them: what each said it can run (on each claim), when it was last heard
from (claims and its jobs' heartbeats), what it runs now and did in the last hour; and, for a queued
job, why no worker takes it (``waiting_for``)."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, false, func, select, true, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.core import gangs
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
        "gpus": capabilities.gpus if capabilities else 0,
        "free": capabilities.free or 0 if capabilities else 0,
        "last_seen": now,
    }
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    stmt = insert(Worker).values(id=worker_id, first_seen=now, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=[Worker.id], set_=values))


def hold(session: Session, worker_id: str) -> None:
    """Lock the worker's own row first in its claim (PostgreSQL): a claim then waits for a worker row only
    before it holds anything (other claims take the rows of workers they offer nodes to with SKIP LOCKED), so
    claims racing for the same workers cannot deadlock."""
    if session.get_bind().dialect.name != "sqlite":
        session.execute(select(Worker.id).where(Worker.id == worker_id).with_for_update())


def seen_by_job(session: Session, job_id: int, worker_id: str | None = None, *, now: datetime | None = None) -> None:
    """A heartbeat of the job: its worker (the one that said who it is, else the job's lease owner) was heard from."""
    who = worker_id if worker_id is not None else select(Job.lease_owner).where(Job.id == job_id).scalar_subquery()
    session.execute(update(Worker).where(Worker.id == who).values(last_seen=now or utcnow()))


ONE_DEVICE = and_(Job.gpus == 1, Job.nodes == 1)
"""A job of one device on one node: all an older worker runs."""


def can_run(capabilities: Capabilities | None) -> ColumnElement[bool]:
    """The claim's filter: jobs of a kind, arch and dataset the worker's code knows, that fit the devices it has
    free (an older worker that says nothing: any job of one device, as before). The same worker's claims get the
    same object (built once: cheaper, and its compiled statement is cached)."""
    if capabilities is None:
        return ONE_DEVICE
    key = (tuple(capabilities.kinds), tuple(capabilities.archs), tuple(capabilities.datasets))
    return _can_run(*key, capabilities.gpus, capabilities.free, capabilities.distributed)


@functools.lru_cache(maxsize=1024)
def _can_run(
    kinds: tuple[str, ...],
    archs: tuple[str, ...],
    datasets: tuple[str, ...],
    gpus: int,
    free: int | None,
    distributed: bool,
) -> ColumnElement[bool]:
    known = [kind for kind in JobKind if kind.value in kinds]  # a name no job has matches none
    return and_(
        Job.kind.in_(known),
        Job.arch.is_(None) | Job.arch.in_(archs),
        Job.dataset.is_(None) | Job.dataset.in_(datasets),
        fits(gpus, free, distributed),
    )


def fits(gpus: int, free: int | None, distributed: bool) -> ColumnElement[bool]:
    """Jobs a node of which fits the devices the worker has free: a CUDA worker takes up to its free GPUs (and no
    CPU ranks); a CPU worker, one job at a time, of one device or of CPU ranks (``resources.processes``)."""
    if not distributed:
        return ONE_DEVICE
    free = 1 if free is None else free
    if gpus > 0:
        return and_(Job.gpus >= 1, Job.gpus <= free)
    return and_(Job.gpus <= 1, true() if free >= 1 else false())


def took(session: Session, worker_id: str, job: Job) -> None:
    """The worker took ``job``: its devices count as used until it says how many are free again."""
    session.connection().execute(_TOOK, {"worker": worker_id, "used": max(job.gpus, 1)})


_TOOK = (
    update(Worker)
    .where(Worker.id == bindparam("worker"))
    .values(free=case((Worker.free > bindparam("used"), Worker.free - bindparam("used")), else_=0))
)


def lacks(caps: dict[str, Any], job: Any) -> set[str]:
    """What of ``job`` (kind, arch, dataset; ``resources`` for a job of several ranks) a worker that describes
    itself as ``caps`` cannot run; a worker that says nothing runs any job of one device."""
    wanted = {"kind": job.kind.value, "arch": job.arch, "dataset": job.dataset}
    missing = {f for f, v in wanted.items() if v is not None and v not in (caps.get(f"{f}s") or [])}
    if (job.gpus != 1 or job.nodes != 1) and not caps.get("distributed"):
        missing.add("resources")
    return missing


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
        rows = session.execute(
            select(Worker.capabilities, Worker.gpus, Worker.free).where(Worker.last_seen >= since).limit(1000)
        )
        self.found = [Worker(id="", capabilities=caps, gpus=gpus, free=free) for caps, gpus, free in rows]
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
    reason = _unsupported(job, workers) or _no_room(job, workers)
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


def _lacks(worker: Worker, job: Job) -> set[str]:
    if isinstance(worker.capabilities, dict):
        return lacks(worker.capabilities, job)
    return set() if job.gpus == 1 and job.nodes == 1 else {"resources"}  # an older worker: one device


def _unsupported(job: Job, workers: list[Worker]) -> str | None:
    """What no live worker's code can run of the job: a field none supports, or none supports them all."""
    lacking = [_lacks(w, job) for w in workers]
    if not all(lacking):
        return None
    wanted = {"kind": job.kind.value, "arch": job.arch, "dataset": job.dataset}
    by_all = [f for f in (*wanted, "resources") if all(f in missing for missing in lacking)]
    if by_all and by_all[0] == "resources":
        return "no worker runs jobs of several ranks or nodes (upgrade the workers)"
    if by_all:
        return f"no worker supports {by_all[0]} {wanted[by_all[0]]}"
    return "no one worker supports " + ", ".join(f"{f} {v}" for f, v in wanted.items() if v) + " together"


def _no_room(job: Job, workers: list[Worker]) -> str | None:
    """Why no worker has room for a job of more than one device (a job of one waits for its turn alone): too
    few workers with its GPUs (or CPU workers, for CPU ranks), or too few of them with the devices free."""
    if job.gpus == 1 and job.nodes == 1:
        return None
    able = [w for w in workers if not _lacks(w, job)]
    pools: list[tuple[list[Worker], int, str, str]] = []  # workers, devices a node needs free, what, what free
    if job.gpus >= 1:
        gpus = f"GPU{'s' * (job.gpus > 1)}"
        pools.append(
            ([w for w in able if w.gpus >= job.gpus], job.gpus, f"{job.gpus} {gpus}", f"{job.gpus} free {gpus}")
        )
    if job.gpus <= 1:
        device = "CPU" if job.gpus == 0 else "device"
        pools.append(([w for w in able if not w.gpus], 1, f"a {device}", f"a free {device}"))
    pool, need, what, free_what = max(pools, key=lambda p: (sum(w.free >= p[1] for w in p[0]), len(p[0])))
    free = sum(w.free >= need for w in pool)
    if job.nodes == 1 and not pool:
        return (
            "no CPU worker (resources.processes runs on workers without GPUs)"
            if job.gpus == 0
            else f"no worker with {what}"
        )
    if job.nodes == 1:
        return None if free else f"no worker with {free_what}"
    if len(pool) < job.nodes:
        return f"{job.nodes} workers with {what} each; {len(pool)} connected"
    return f"{job.nodes} workers with {free_what} each at once; {free} now" if free < job.nodes else None


@dataclass(frozen=True)
class WorkerState:
    worker: Worker
    lost: bool
    running: list[int]
    succeeded_last_hour: int
    failed_last_hour: int

    def devices(self) -> list[dict[str, Any]]:
        """Its devices as it last described them; busy as it said (an older worker: while it runs a job)."""
        listed = (self.worker.capabilities or {}).get("devices") or []
        derived = bool(self.running) and not self.lost
        return [
            {**d, "busy": not self.lost and (derived if d.get("busy") is None else bool(d["busy"]))}
            for d in listed
            if isinstance(d, dict)
        ]


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
    for worker_id, held in gangs.held(session, ids).items():  # nodes of multi-node jobs (node 0 is the owner)
        running[worker_id] = sorted({*running.get(worker_id, []), *held})
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
