"""The job store on SQLite and PostgreSQL: claiming, ordering, dependencies, leases, fencing, cancel, delete."""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.core import checkpoints, jobs, leases, metrics, queue
from app.core.checkpoints import UploadHeader
from app.core.db import Database
from app.core.errors import Conflict, IdempotencyConflict, InvalidRequest, JobNotFound, LeaseLost
from app.core.jobs import EVERYONE
from app.core.models import Checkpoint, Job, utcnow
from app.core.protocol import MetricIn
from app.core.specs import parse_job_spec
from app.core.states import CheckpointFormat, CheckpointTag
from tests.conftest import finetune_body, pretrain_body, store_owner


@dataclass
class Claimed:
    job: Job
    resume: Checkpoint | None
    init: Checkpoint | None


def submit(db: Database, body: dict[str, Any], **kw: Any) -> int:
    with db.write() as s:
        job, _ = jobs.submit_job(s, EVERYONE, parse_job_spec(body), owner_id=store_owner(s), **kw)
        return job.id


ARTIFACTS = Path(tempfile.mkdtemp(prefix="store-artifacts-"))
"""Checkpoint files of these tests: a claim hands out only checkpoints whose files exist."""


def claim(db: Database, worker: str = "w", lease: float = 60, now: Any = None) -> Claimed | None:
    with db.write() as s:
        job = queue.claim_next_job(s, worker_id=worker, device="cpu", lease_seconds=lease, now=now)
        return None if job is None else Claimed(job, *checkpoints.starting_points(s, job, ARTIFACTS))


def status(db: Database, job_id: int) -> str:
    with db.read() as s:
        return jobs.get_job(s, EVERYONE, job_id).status


def points(*values: tuple[int, float]) -> list[MetricIn]:
    return [MetricIn(name="train_loss", step=step, value=value) for step, value in values]


def header(
    job_id: int, token: str, tag: str = "last", sha256: str = "a" * 64, metric: float | None = None
) -> UploadHeader:
    return UploadHeader(
        job_id, token, CheckpointTag(tag), CheckpointFormat.PT, epoch=1, step=5, sha256=sha256, metric=metric
    )


def test_claim_takes_highest_priority_then_oldest(db: Database) -> None:
    low = submit(db, pretrain_body(priority=-1))
    first = submit(db, pretrain_body())
    second = submit(db, pretrain_body())
    high = submit(db, pretrain_body(priority=5))
    order = [c.job.id for c in (claim(db), claim(db), claim(db), claim(db)) if c]
    assert order == [high, first, second, low]
    assert claim(db) is None


def test_claim_sets_lease_and_counts_the_attempt(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    c = claim(db, worker="host:1")
    assert c is not None and c.job.id == job_id
    assert c.job.status == "running" and c.job.attempt == 1 and c.job.lease_owner == "host:1"
    assert c.job.lease_token and c.job.lease_expires_at is not None and c.job.lease_expires_at > utcnow()
    assert c.resume is None and c.init is None


def test_finetune_waits_for_its_base_job(db: Database) -> None:
    base = submit(db, pretrain_body())
    ft = submit(db, finetune_body(base, priority=100))  # higher priority, but not ready
    c = claim(db)
    assert c is not None and c.job.id == base
    assert claim(db) is None  # base running: finetune not claimable
    with db.write() as s:
        checkpoints.record_checkpoint(
            s, header(base, c.job.lease_token or "", "best", metric=0.5), size=3, path=f"jobs/{base}/best.pt"
        )
        leases.finish_job(s, base, c.job.lease_token or "", status="succeeded", result={"test_loss": 0.5})
    (ARTIFACTS / "jobs" / str(base)).mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "jobs" / str(base) / "best.pt").write_bytes(b"pt!")
    c2 = claim(db)
    assert c2 is not None and c2.job.id == ft
    assert c2.init is not None and c2.init.job_id == base and c2.init.tag == "best"


@pytest.mark.parametrize("how", ["fails", "cancelled while queued", "cancelled while running", "attempts run out"])
def test_finetune_fails_when_its_base_will_never_succeed(db: Database, how: str) -> None:
    base = submit(db, pretrain_body(max_attempts=1))
    ft = submit(db, finetune_body(base))
    if how == "cancelled while queued":
        with db.write() as s:
            jobs.cancel_job(s, EVERYONE, base)
    else:
        c = claim(db)
        assert c is not None and c.job.lease_token
        with db.write() as s:
            if how == "fails":
                leases.finish_job(s, base, c.job.lease_token, status="failed", error="boom")
            elif how == "cancelled while running":
                jobs.cancel_job(s, EVERYONE, base)
                leases.finish_job(s, base, c.job.lease_token, status="cancelled")
            else:
                leases.reap_expired_leases(s, now=utcnow() + timedelta(seconds=120))
    with db.read() as s:
        job = jobs.get_job(s, EVERYONE, ft)
        assert job.status == "failed"
        assert job.error is not None and f"base job {base}" in job.error


def test_finetune_from_missing_or_wrong_base_is_refused(db: Database) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        submit(db, finetune_body(99))
    base = submit(db, pretrain_body())
    other_ft = submit(db, finetune_body(base))
    with pytest.raises(InvalidRequest, match="is a finetune job"):
        submit(db, finetune_body(other_ft))
    wider = finetune_body(base)
    wider["model"]["bottleneck"] = 16
    with pytest.raises(InvalidRequest, match="encoder is mlp"):
        submit(db, wider)


def test_concurrent_claimers_take_each_job_exactly_once(db: Database) -> None:
    """8 claimers, each with its own connection, race over 200 jobs."""
    with db.write() as s:
        spec = parse_job_spec(pretrain_body())
        for _ in range(200):
            jobs.submit_job(s, EVERYONE, spec, owner_id=store_owner(s))
    taken: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def claimer(n: int) -> None:
        try:
            start.wait()
            while True:
                c = claim(db, worker=f"w{n}")
                if c is None:
                    return
                with lock:
                    taken.append(c.job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = Counter(taken)
    assert len(counts) == 200 and set(counts.values()) == {1}


def test_expired_lease_requeues_then_fails_after_max_attempts(db: Database) -> None:
    job_id = submit(db, pretrain_body(max_attempts=2))
    t0 = utcnow()
    first = claim(db, worker="a", lease=10, now=t0)
    assert first is not None
    # Not expired yet: nothing to reap, nothing to claim.
    assert claim(db, worker="b", now=t0 + timedelta(seconds=5)) is None
    second = claim(db, worker="b", lease=10, now=t0 + timedelta(seconds=11))
    assert second is not None and second.job.id == job_id and second.job.attempt == 2
    assert second.job.lease_token != first.job.lease_token
    with db.read() as s:
        assert "lease expired" in (jobs.get_job(s, EVERYONE, job_id).error or "")
    with db.write() as s:
        changed = leases.reap_expired_leases(s, now=t0 + timedelta(seconds=30))
    assert changed == [(job_id, "failed")]
    with db.read() as s:
        job = jobs.get_job(s, EVERYONE, job_id)
        assert job.status == "failed" and "no attempts left" in (job.error or "")


def test_heartbeat_keeps_the_lease(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    t0 = utcnow()
    c = claim(db, lease=10, now=t0)
    assert c is not None and c.job.lease_token
    with db.write() as s:
        leases.heartbeat(s, job_id, c.job.lease_token, lease_seconds=10, now=t0 + timedelta(seconds=8))
    with db.write() as s:
        assert leases.reap_expired_leases(s, now=t0 + timedelta(seconds=12)) == []
    assert status(db, job_id) == "running"


def test_stale_worker_cannot_write_after_its_job_moved_on(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    t0 = utcnow()
    old = claim(db, worker="old", lease=10, now=t0)
    new = claim(db, worker="new", lease=10, now=t0 + timedelta(seconds=20))
    assert old and new and old.job.lease_token and new.job.lease_token
    stale = old.job.lease_token
    for write in (
        lambda s: leases.heartbeat(s, job_id, stale, lease_seconds=10),
        lambda s: metrics.record_metrics(s, job_id, stale, points((1, 9.0))),
        lambda s: leases.finish_job(s, job_id, stale, status="succeeded", result={}),
        lambda s: leases.release_job(s, job_id, stale),
        lambda s: checkpoints.record_checkpoint(s, header(job_id, stale, sha256="b" * 64), size=1, path="x"),
    ):
        with pytest.raises(LeaseLost), db.write() as s:
            write(s)
    with db.read() as s:
        job = jobs.get_job(s, EVERYONE, job_id)
        assert job.status == "running" and job.lease_owner == "new"
        assert s.query(Checkpoint).filter_by(job_id=job_id).all() == []  # no row was written
    with db.write() as s:
        leases.finish_job(s, job_id, new.job.lease_token, status="succeeded", result={"ok": 1})
    assert status(db, job_id) == "succeeded"


def test_release_requeues_without_spending_an_attempt(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    c = claim(db)
    assert c is not None and c.job.lease_token
    with db.write() as s:
        job = leases.release_job(s, job_id, c.job.lease_token)
        assert job.status == "queued" and job.attempt == 0
    again = claim(db)
    assert again is not None and again.job.id == job_id and again.job.attempt == 1


def test_release_of_a_job_asked_to_cancel_ends_it_cancelled(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    c = claim(db)
    assert c is not None and c.job.lease_token
    with db.write() as s:
        jobs.cancel_job(s, EVERYONE, job_id)
        assert leases.release_job(s, job_id, c.job.lease_token).status == "cancelled"
    assert claim(db) is None


def test_cancel_in_each_state(db: Database) -> None:
    queued = submit(db, pretrain_body())
    running = submit(db, pretrain_body())
    with db.write() as s:
        assert jobs.cancel_job(s, EVERYONE, queued).status == "cancelled"
    c = claim(db)
    assert c is not None and c.job.id == running and c.job.lease_token
    with db.write() as s:
        job = jobs.cancel_job(s, EVERYONE, running)
        assert job.status == "running" and job.cancel_requested
        assert leases.heartbeat(s, running, c.job.lease_token, lease_seconds=60) is True
        leases.finish_job(s, running, c.job.lease_token, status="cancelled")
    for finished in (queued, running):
        with pytest.raises(Conflict, match="already cancelled"), db.write() as s:
            jobs.cancel_job(s, EVERYONE, finished)
    with pytest.raises(JobNotFound), db.write() as s:
        jobs.cancel_job(s, EVERYONE, 12345)


def test_cancelled_job_whose_worker_vanished_is_not_retried(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    t0 = utcnow()
    assert claim(db, lease=10, now=t0) is not None
    with db.write() as s:
        jobs.cancel_job(s, EVERYONE, job_id)
        assert leases.reap_expired_leases(s, now=t0 + timedelta(seconds=11)) == [(job_id, "cancelled")]
    assert claim(db) is None


def test_metrics_replace_a_step_reported_again(db: Database) -> None:
    job_id = submit(db, pretrain_body())
    c = claim(db)
    assert c is not None and c.job.lease_token
    with db.write() as s:
        metrics.record_metrics(s, job_id, c.job.lease_token, points((1, 1.0), (2, 1.0)))
        metrics.record_metrics(s, job_id, c.job.lease_token, [MetricIn(name="train_loss", step=2, value=0.5, epoch=1)])
    with db.read() as s:
        series = metrics.read_series(s, job_id)["train_loss"]
    assert [(p[0], p[2]) for p in series] == [(1, 1.0), (2, 0.5)]


def test_idempotency_key_returns_the_first_job(db: Database) -> None:
    body = pretrain_body()
    with db.write() as s:
        first, created = jobs.submit_job(
            s, EVERYONE, parse_job_spec(body), owner_id=store_owner(s), idempotency_key="k1"
        )
        assert created
    with db.write() as s:
        again, created = jobs.submit_job(
            s, EVERYONE, parse_job_spec(body), owner_id=store_owner(s), idempotency_key="k1"
        )
        assert not created and again.id == first.id
    with pytest.raises(IdempotencyConflict), db.write() as s:
        jobs.submit_job(
            s, EVERYONE, parse_job_spec(pretrain_body(name="other")), owner_id=store_owner(s), idempotency_key="k1"
        )
    later = utcnow() + timedelta(hours=25)
    with db.write() as s:
        fresh, created = jobs.submit_job(
            s, EVERYONE, parse_job_spec(body), owner_id=store_owner(s), idempotency_key="k1", now=later
        )
        assert created and fresh.id != first.id


def test_delete_only_finished_jobs_and_not_a_waiting_base(db: Database) -> None:
    base = submit(db, pretrain_body())
    ft = submit(db, finetune_body(base))
    with pytest.raises(Conflict, match="cancel it first"), db.write() as s:
        jobs.delete_job(s, EVERYONE, base)
    c = claim(db)
    assert c is not None and c.job.lease_token
    with db.write() as s:
        leases.finish_job(s, base, c.job.lease_token, status="succeeded", result={})
    with pytest.raises(Conflict, match=f"base of unfinished job\\(s\\) {ft}"), db.write() as s:
        jobs.delete_job(s, EVERYONE, base)
    with db.write() as s:
        jobs.cancel_job(s, EVERYONE, ft)
        jobs.delete_job(s, EVERYONE, base)
    with pytest.raises(JobNotFound), db.read() as s:
        jobs.get_job(s, EVERYONE, base)
    with db.read() as s:
        assert jobs.get_job(s, EVERYONE, ft).init_job_id is None


def test_a_parent_is_never_handed_to_a_worker(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim's 'runs on a worker' predicate is its own: a kind left out of WORKER_KINDS is never claimed."""
    from app.core import states

    finetune = submit(db, finetune_body(priority=10))
    pretrain = submit(db, pretrain_body())
    monkeypatch.setattr(states, "WORKER_KINDS", frozenset({states.JobKind.PRETRAIN}))
    forget = [queue.runs_on_a_worker.cache_clear, queue._first_of.cache_clear]  # the claim builds them once
    for clear in forget:
        clear()
    try:
        c = claim(db)
        assert c is not None and c.job.id == pretrain
        assert claim(db) is None and status(db, finetune) == "queued"
    finally:
        monkeypatch.undo()
        for clear in forget:
            clear()
