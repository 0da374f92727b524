"""TRANSITIONS is the table the guarded UPDATEs are checked against: every move in it happens, and no other."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from app.core import jobs, leases, queue, sweeps
from app.core.db import Database
from app.core.jobs import EVERYONE
from app.core.models import Job, utcnow
from app.core.specs import parse_job_spec
from app.core.specs.sweeps import SweepSpec
from app.core.states import TRANSITIONS, IllegalTransition, JobStatus, guard
from tests.conftest import finetune_body, pretrain_body, store_owner

Move = tuple[JobStatus, JobStatus]


class Observer:
    """Runs store operations and records the status each job had before and after."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.moves: set[Move] = set()

    def statuses(self) -> dict[int, JobStatus]:
        with self.db.read() as s:
            return {job.id: job.status for job in s.query(Job)}

    def do(self, operation: Callable[[Session], object]) -> None:
        before = self.statuses()
        with self.db.write() as s:
            operation(s)
        after = self.statuses()
        self.moves |= {(before[i], after[i]) for i in before if before[i] != after[i]}

    def submit(self, body: dict[str, object]) -> int:
        with self.db.write() as s:
            job, _ = jobs.submit_job(s, EVERYONE, parse_job_spec(body), owner_id=store_owner(s))
            return job.id

    def claim(self, lease: float = 60) -> tuple[int, str]:
        claimed: list[Job | None] = []
        self.do(lambda s: claimed.append(queue.claim_next_job(s, worker_id="w", device="cpu", lease_seconds=lease)))
        job = claimed[0]
        assert job is not None and job.lease_token is not None
        return job.id, job.lease_token


def test_every_transition_in_the_table_happens_and_no_other(db: Database) -> None:
    store = Observer(db)

    def finish(status: JobStatus) -> None:
        job_id, token = store.claim()
        store.do(lambda s: leases.finish_job(s, job_id, token, status=status))

    store.submit(pretrain_body())
    finish(JobStatus.SUCCEEDED)  # queued -> running -> succeeded
    base = store.submit(pretrain_body())
    dependent = store.submit(finetune_body(base))
    finish(JobStatus.FAILED)  # running -> failed; the finetune waiting for it: queued -> failed
    with db.read() as s:
        assert jobs.get_job(s, EVERYONE, dependent).status == JobStatus.FAILED
    store.submit(pretrain_body())
    finish(JobStatus.CANCELLED)  # running -> cancelled
    queued = store.submit(pretrain_body())
    store.do(lambda s: jobs.cancel_job(s, EVERYONE, queued))  # queued -> cancelled
    store.submit(pretrain_body())
    job_id, token = store.claim()
    store.do(lambda s: leases.release_job(s, job_id, token))  # running -> queued
    job_id, _ = store.claim(lease=1)
    store.do(lambda s: leases.reap_expired_leases(s, now=utcnow() + timedelta(seconds=5)))  # requeued
    finish(JobStatus.SUCCEEDED)  # the requeued one, out of the way
    sweep_spec = SweepSpec.model_validate({"base": pretrain_body(), "parameters": {"train.lr": {"values": [0.1, 0.2]}}})
    with db.write() as s:
        sweep = sweeps.create_sweep(s, sweep_spec, sweeps.plan(sweep_spec)[0], owner_id=store_owner(s))
    finish(JobStatus.FAILED)
    store.do(lambda s: sweeps.cancel_sweep(s, EVERYONE, sweep.id))
    store.do(lambda s: sweeps.retry_sweep(s, EVERYONE, sweep.id))  # failed -> queued, cancelled -> queued

    table = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert store.moves == table


def test_a_guard_for_a_move_the_table_does_not_allow_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="from succeeded to running"):
        guard(Job.status, frozenset({JobStatus.SUCCEEDED}), JobStatus.RUNNING)
    with pytest.raises(IllegalTransition, match="from queued to succeeded"):
        guard(Job.status, frozenset({JobStatus.QUEUED}), JobStatus.SUCCEEDED)


def test_terminal_statuses_go_nowhere_but_back_to_the_queue_on_a_sweeps_retry() -> None:
    assert [s for s in JobStatus if s.is_terminal] == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()
    assert TRANSITIONS[JobStatus.FAILED] == TRANSITIONS[JobStatus.CANCELLED] == frozenset({JobStatus.QUEUED})
