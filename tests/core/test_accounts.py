"""Accounts in the store, with several writers at once (threads, each its own connection) on both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core import accounts, jobs
from app.core.db import Database
from app.core.errors import Conflict, LimitExceeded
from app.core.jobs import EVERYONE
from app.core.models import ApiToken, Job
from app.core.specs import parse_job_spec
from tests.conftest import pretrain_body


def at_once(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(n)`` in ``count`` threads started together; each result, or the exception it raised."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = work(n)
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_api_processes_starting_at_once_make_one_first_admin(db: Database) -> None:
    def start(_n: int) -> accounts.AdminCredentials | None:
        with db.write() as session:
            return accounts.bootstrap_admin(session)

    made = [r for r in at_once(6, start) if r is not None]
    assert len(made) == 1 and isinstance(made[0], accounts.AdminCredentials)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 1


def test_the_active_jobs_cap_holds_for_submits_at_once(db: Database) -> None:
    with db.write() as session:
        owner = accounts.create_user(session, "busy").id
    spec = parse_job_spec(pretrain_body())

    def submit(_n: int) -> int:
        with db.write() as session:
            return jobs.submit_job(session, EVERYONE, spec, owner_id=owner, max_active=3)[0].id

    results = at_once(8, submit)
    assert sum(isinstance(r, int) for r in results) == 3
    assert all(isinstance(r, int | LimitExceeded) for r in results), results
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3


def test_two_admins_demoting_each_other_at_once_leave_one(db: Database) -> None:
    with db.write() as session:
        ids = [accounts.create_user(session, name, is_admin=True).id for name in ("ann", "ben")]

    def demote(n: int) -> None:
        with db.write() as session:
            accounts.update_user(session, ids[1 - n], is_admin=False)

    results = at_once(2, demote)
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    with db.read() as session:
        assert len([u for u in accounts.list_users(session) if u.is_admin]) == 1


@pytest.mark.parametrize("days", [float("nan"), 1e9, -1.0, 0.0])
def test_a_token_lasts_a_sensible_number_of_days(db: Database, days: float) -> None:
    with pytest.raises(accounts.InvalidRequest, match="expires_in_days"), db.write() as session:
        accounts.issue_token(
            session, accounts.create_user(session, "t"), accounts.TokenKind.USER, "x", expires_in_days=days
        )
