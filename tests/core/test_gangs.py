"""Multi-node jobs in the store, on SQLite and PostgreSQL: every node handed out in one claim or none, offers
taken or given back, one lease for the whole gang, and claims racing for the same workers."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.core import gangs, jobs, leases, queue, workers
from app.core.db import Database
from app.core.errors import LeaseLost
from app.core.jobs import EVERYONE
from app.core.models import Job, JobNode, Worker, utcnow
from app.core.protocol import Capabilities
from app.core.specs import parse_job_spec
from app.core.states import JobStatus
from tests.conftest import pretrain_body, store_owner

CPU = Capabilities(
    version="t",
    host="h",
    kinds=["pretrain", "finetune"],
    archs=["mlp_autoencoder", "mlp"],
    datasets=["digits"],
    free=1,
    distributed=True,
)
TWO_NODES = pretrain_body(resources={"nodes": 2})
LEASE, GANG = 60.0, 10.0


def submit(db: Database, body: dict[str, Any]) -> int:
    with db.write() as s:
        job, _ = jobs.submit_job(s, EVERYONE, parse_job_spec(body), owner_id=store_owner(s))
        return job.id


def idle(db: Database, *names: str, now: datetime | None = None, caps: Capabilities = CPU) -> None:
    """Workers that said they are idle (as each claim does)."""
    with db.write() as s:
        for name in names:
            workers.record(s, name, caps, now=now)


def claim(
    db: Database, worker: str, now: datetime | None = None, caps: Capabilities = CPU
) -> tuple[int, int | None] | None:
    """What ``worker``'s claim gets: (job id, its node or None), taking an offered node first, as the route does."""
    now = now or utcnow()
    with db.write() as s:
        workers.hold(s, worker)
        taken = gangs.take(s, worker, caps, now=now, lease_seconds=LEASE)
        if taken is not None:
            return taken[0].id, taken[1]
        job = queue.claim_next_job(
            s,
            worker_id=worker,
            device="cpu",
            lease_seconds=LEASE,
            now=now,
            can_run=workers.can_run(caps),
            capabilities=caps,
            gang_seconds=GANG,
        )
        if job is None:
            return None
        workers.took(s, worker, job)
        return job.id, 0 if job.nodes > 1 else None


def nodes(db: Database, job_id: int) -> dict[int, tuple[str, bool]]:
    with db.read() as s:
        rows = s.execute(select(JobNode.node, JobNode.worker_id, JobNode.taken_at).where(JobNode.job_id == job_id))
        return {node: (worker, taken is not None) for node, worker, taken in rows}


def job_row(db: Database, job_id: int) -> Job:
    with db.read() as s:
        return jobs.get_job(s, EVERYONE, job_id)


def test_a_multi_node_job_is_handed_out_whole_or_not_at_all(db: Database) -> None:
    gang = submit(db, TWO_NODES)
    single = submit(db, pretrain_body())
    idle(db, "a")
    assert claim(db, "a") == (single, None)  # alone, it cannot run the 2-node job: the next one instead
    assert nodes(db, gang) == {} and job_row(db, gang).status == JobStatus.QUEUED

    idle(db, "b", "c")
    assert claim(db, "b") == (gang, 0)
    offered = nodes(db, gang)
    assert offered[0] == ("b", True) and offered[1][1] is False and offered[1][0] == "c"  # a is busy
    assert claim(db, "c") == (gang, 1)
    assert nodes(db, gang) == {0: ("b", True), 1: ("c", True)}
    assert job_row(db, gang).attempt == 1  # one attempt for the whole gang


def test_an_offer_not_taken_in_time_gives_the_job_back_without_spending_an_attempt(db: Database) -> None:
    gang = submit(db, TWO_NODES)
    t0 = utcnow()
    idle(db, "a", "b", now=t0)
    assert claim(db, "a", now=t0) == (gang, 0)
    with db.write() as s:  # b never claims again: the offer lapses
        assert leases.reap_expired_leases(s, now=t0 + timedelta(seconds=GANG + 1)) == [(gang, JobStatus.QUEUED)]
    row = job_row(db, gang)
    assert (row.status, row.attempt, row.lease_token, row.error_class) == (JobStatus.QUEUED, 0, None, None)
    assert nodes(db, gang) == {}
    with db.read() as s:
        assert s.get(Worker, "b").free == 0  # not offered again until it says it is free


def test_the_gang_shares_one_lease_that_ends_when_any_node_stops_heartbeating(db: Database) -> None:
    gang = submit(db, TWO_NODES)
    t0 = utcnow()
    idle(db, "a", "b", now=t0)
    assert claim(db, "a", now=t0) == (gang, 0)
    assert claim(db, "b", now=t0) == (gang, 1)
    token = job_row(db, gang).lease_token
    assert token is not None
    later = t0 + timedelta(seconds=LEASE - 1)
    with db.write() as s:
        leases.heartbeat(s, gang, token, lease_seconds=LEASE, node=0, now=later)  # node 1 stays silent
    assert job_row(db, gang).lease_expires_at == t0 + timedelta(seconds=LEASE)  # the first of the nodes' leases
    with db.write() as s:
        changed = leases.reap_expired_leases(s, now=t0 + timedelta(seconds=LEASE + 1))
    assert changed == [(gang, JobStatus.QUEUED)]
    row = job_row(db, gang)
    assert row.error_class == "infra" and "stopped heartbeating" in (row.error or "") and nodes(db, gang) == {}
    with db.write() as s, pytest.raises(LeaseLost):
        leases.heartbeat(s, gang, token, lease_seconds=LEASE, node=0)


def test_node_zero_publishes_the_rendezvous_and_only_the_gang_reads_it(db: Database) -> None:
    gang = submit(db, TWO_NODES)
    idle(db, "a", "b")
    claim(db, "a")
    token = job_row(db, gang).lease_token
    assert token is not None
    with db.write() as s:
        assert gangs.rendezvous(s, gang, token, 0, None) == (2, None)
        with pytest.raises(LeaseLost):  # offered, not yet taken
            gangs.rendezvous(s, gang, token, 1, None)
    claim(db, "b")
    with db.write() as s:
        assert gangs.rendezvous(s, gang, token, 0, "10.0.0.5:29400") == (2, "10.0.0.5:29400")
        assert gangs.rendezvous(s, gang, token, 1, "10.9.9.9:1") == (2, "10.0.0.5:29400")  # only node 0 says where
        for bad_node, bad_token in ((5, token), (1, "another lease")):
            with pytest.raises(LeaseLost):
                gangs.rendezvous(s, gang, bad_token, bad_node, None)
    with db.write() as s:
        leases.finish_job(s, gang, token, status=JobStatus.SUCCEEDED)
    assert nodes(db, gang) == {}


def test_gangs_that_cannot_form_never_keep_a_worker_from_a_job_it_can_run(db: Database) -> None:
    waiting = [submit(db, TWO_NODES) for _ in range(queue.CLAIM_LOOKS + 2)]
    single = submit(db, pretrain_body())
    idle(db, "alone")
    assert claim(db, "alone") == (single, None)
    assert all(job_row(db, j).status == JobStatus.QUEUED for j in waiting)


def test_a_worker_is_node_zero_of_one_job_at_a_time(db: Database) -> None:
    """Node 0 serves the job's rendezvous on a port (a fixed one, behind a firewall): never two at once."""
    gpus = CPU.model_copy(update={"gpus": 4, "free": 4})
    first, second = (submit(db, pretrain_body(resources={"nodes": 2, "gpus": 2})) for _ in range(2))
    idle(db, "big", "o1", "o2", "o3", caps=gpus)
    assert claim(db, "big", caps=gpus) == (first, 0)
    assert claim(db, "big", caps=gpus.model_copy(update={"free": 2})) is None  # two GPUs free, but it hosts one
    free = [w for w in ("o1", "o2", "o3") if w != nodes(db, first)[1][0]]
    assert claim(db, free[0], caps=gpus) == (second, 0)  # another worker hosts the second job's


def test_the_worker_that_stopped_heartbeating_is_the_one_named(db: Database) -> None:
    gang = submit(db, TWO_NODES)
    t0 = utcnow()
    idle(db, "a", "b", now=t0)
    claim(db, "a", now=t0)
    claim(db, "b", now=t0)
    token = job_row(db, gang).lease_token
    assert token is not None
    with db.write() as s:  # node 0 goes on heartbeating; node 1's worker falls silent
        leases.heartbeat(s, gang, token, lease_seconds=LEASE, node=0, now=t0 + timedelta(seconds=LEASE / 2))
        leases.reap_expired_leases(s, now=t0 + timedelta(seconds=LEASE + 1))
    row = job_row(db, gang)
    assert row.attempt == 1 and "worker b stopped heartbeating" in (row.error or ""), row.error


def test_racing_claims_never_split_a_gang_or_give_a_worker_two_nodes(db: Database) -> None:
    names = [f"w{i}" for i in range(6)]
    idle(db, *names)
    three = pretrain_body(resources={"nodes": 3}, train={"epochs": 1, "batch_size": 63})
    gangs_ = [submit(db, three) for _ in range(2)]
    singles = [submit(db, pretrain_body()) for _ in range(3)]
    got: dict[str, tuple[int, int | None] | None] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(names))

    def race(name: str) -> None:
        barrier.wait()
        try:
            for _ in range(40):  # until it holds something: an offer made by another claim is taken here
                got[name] = claim(db, name)
                if got[name] is not None:
                    return
        except BaseException as exc:  # a deadlock, say: the test fails with it
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    holders = [(job, node, name) for name, held in got.items() if held is not None for job, node in [held]]
    assert len({name for _, _, name in holders}) == len(holders)  # no worker holds two things
    for gang in gangs_:
        held = nodes(db, gang)
        assert len(held) in (0, 3) and len({w for w, _ in held.values()}) == len(held)  # whole, distinct, or none
        assert all(taken for _, taken in held.values()) or job_row(db, gang).status == JobStatus.RUNNING
    running = [j for j in [*gangs_, *singles] if job_row(db, j).status == JobStatus.RUNNING]
    assert running  # six idle workers always get work
