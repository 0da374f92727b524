"""Sweeps in the store: the claim holds max_concurrent when many claims race (PostgreSQL, where they
really run at once), and the expansion of a sweep into trials."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from app.core import leases, queue, sweeps
from app.core.db import Database
from app.core.errors import InvalidRequest
from app.core.jobs import EVERYONE
from app.core.models import Job
from app.core.specs.sweeps import SweepSpec, expand, put
from app.core.states import JobStatus
from tests.conftest import pretrain_body, store_owner


def store(db: Database, body: dict[str, object]) -> int:
    spec = SweepSpec.model_validate(body)
    with db.write() as s:
        return sweeps.create_sweep(s, spec, sweeps.plan(spec)[0], owner_id=store_owner(s)).id


def running(db: Database, sweep_id: int) -> int:
    with db.read() as s:
        count = s.scalar(select(func.count()).where(Job.sweep_id == sweep_id, Job.status == JobStatus.RUNNING))
        return count or 0


def test_racing_claims_never_start_more_than_max_concurrent_trials(db: Database) -> None:
    """Eight claims at once, round after round: each round, one of the sweep's trials may start (cap 1),
    and the other claims get nothing."""
    sweep_id = store(
        db,
        {
            "base": pretrain_body(),
            "parameters": {"train.lr": {"values": [0.001 * i for i in range(1, 9)]}},
            "max_concurrent": 1,
        },
    )
    claimed_per_round = []
    for _ in range(8):
        barrier = threading.Barrier(8)
        got: list[Job | None] = []

        def claim(barrier: threading.Barrier, got: list[Job | None]) -> None:
            barrier.wait()
            with db.write() as s:
                got.append(queue.claim_next_job(s, worker_id="w", device="cpu", lease_seconds=60))

        threads = [threading.Thread(target=claim, args=(barrier, got)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert running(db, sweep_id) <= 1
        taken = [j for j in got if j is not None]
        claimed_per_round.append(len(taken))
        for job in taken:
            with db.write() as s:
                assert job.lease_token is not None
                leases.finish_job(s, job.id, job.lease_token, status=JobStatus.SUCCEEDED)
    assert claimed_per_round == [1] * 8  # the cap never starved a claim of the one trial it may start


def test_put_makes_objects_on_the_way_and_indexes_lists() -> None:
    body: dict[str, object] = {"train": {"phases": [{"lr": 1.0}, {"lr": 2.0}]}}
    put(body, "train.phases.1.lr", 0.5)
    put(body, "model.init.from", "scratch")
    assert body == {"train": {"phases": [{"lr": 1.0}, {"lr": 0.5}]}, "model": {"init": {"from": "scratch"}}}
    with pytest.raises(ValueError, match="not an object"):
        put(body, "train.phases.1.lr.x", 1)


def test_a_grid_without_parameters_is_one_trial_per_seed_and_values_can_be_objects() -> None:
    spec = SweepSpec.model_validate({"base": pretrain_body(), "seeds": [5, 6, 7]})
    assert [t.params for t in expand(spec)] == [{"seed": 5}, {"seed": 6}, {"seed": 7}]
    phases = [[{"epochs": 1, "lr": 0.1, "freeze_backbone": True}, {"epochs": 1, "lr": 0.01}]]
    base = {
        "kind": "finetune",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp", "hidden": [16], "bottleneck": 4},
    }
    trials = expand(SweepSpec.model_validate({"base": base, "parameters": {"train.phases": {"values": phases}}}))
    assert trials[0].spec.train.epochs == 2 and trials[0].spec.train.phases is not None


def test_a_bad_value_names_its_trial_and_field() -> None:
    spec = SweepSpec.model_validate({"base": pretrain_body(), "parameters": {"train.batch_size": {"values": [8, "x"]}}})
    with pytest.raises(InvalidRequest, match=r'trial 1 \(train.batch_size="x"\): base.train.batch_size') as caught:
        expand(spec)
    assert caught.value.loc == ("body", "base", "train", "batch_size")


def test_a_claim_does_not_wait_for_a_sweep_another_transaction_holds_so_cancel_cannot_deadlock_it(
    db: Database,
) -> None:
    """A cancel holds the sweep's row and then updates its queued jobs; a claim holds a queued job's row.
    The claim passes the locked sweep over instead of waiting for it, so neither waits for the other."""
    sweep_id = store(db, {"base": pretrain_body(), "seeds": [0, 1], "max_concurrent": 1})
    claimed: list[Job | None] = []
    with db.write() as cancel:
        sweeps.get_sweep(cancel, EVERYONE, sweep_id, lock=True)
        if db.engine.dialect.name == "postgresql":  # SQLite has one writer: the claim would wait its turn
            thread = threading.Thread(target=lambda: claimed.append(claim_one(db)))
            thread.start()
            thread.join(timeout=20)
            assert not thread.is_alive() and claimed == [None]  # the sweep was busy: nothing for now
        sweeps.cancel_sweep(cancel, EVERYONE, sweep_id)
    with db.read() as s:
        assert {j.status for j in sweeps.trial_jobs(s, sweep_id)} == {JobStatus.CANCELLED}


def claim_one(db: Database) -> Job | None:
    with db.write() as s:
        return queue.claim_next_job(s, worker_id="w", device="cpu", lease_seconds=60)
