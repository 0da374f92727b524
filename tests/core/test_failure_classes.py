"""Failure classes and retries: a failed attempt is requeued when its class is in the job's retry_on and
attempts are left; infra (an expired lease) by default, crash and oom only when asked, user never
unless asked; the job says which attempt failed how, in its error and its log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.core import jobs, leases, logs
from app.core.db import Database
from app.core.jobs import EVERYONE
from app.core.models import Job, utcnow
from app.core.states import ErrorClass, JobStatus
from tests.conftest import finetune_body, pretrain_body
from tests.core.test_job_store import claim, submit


def fail(db: Database, job_id: int, token: str, error_class: ErrorClass | None, error: str = "boom") -> Job:
    with db.write() as s:
        return leases.finish_job(s, job_id, token, status=JobStatus.FAILED, error=error, error_class=error_class)


def job(db: Database, job_id: int) -> Job:
    with db.read() as s:
        return jobs.get_job(s, EVERYONE, job_id)


def run_once(db: Database) -> str:
    claimed = claim(db)
    assert claimed is not None
    assert claimed.job.lease_token is not None
    return claimed.job.lease_token


@pytest.mark.parametrize(
    ("retry_on", "error_class", "retried"),
    [
        (None, ErrorClass.CRASH, False),  # the default is infra only
        (None, ErrorClass.USER, False),
        (None, None, False),  # a worker that names no class: user
        (["infra", "crash"], ErrorClass.CRASH, True),
        (["oom"], ErrorClass.OOM, True),
        (["oom"], ErrorClass.CRASH, False),
        (["user"], None, True),
    ],
)
def test_a_failure_is_retried_only_when_its_class_is_in_retry_on(
    db: Database, retry_on: list[str] | None, error_class: ErrorClass | None, retried: bool
) -> None:
    body: dict[str, Any] = pretrain_body(**({"retry_on": retry_on} if retry_on is not None else {}))
    job_id = submit(db, body)
    ended = fail(db, job_id, run_once(db), error_class, "training process killed by SIGKILL\ntraceback")
    assert ended.error_class == (error_class or ErrorClass.USER)
    if retried:
        assert ended.status == JobStatus.QUEUED and ended.finished_at is None
        assert (
            ended.error == f"attempt 1 of 3 failed ({ended.error_class}): training process killed by SIGKILL; requeued"
        )
        with db.read() as s:
            assert ended.error in [line.text for line in logs.read_lines(s, job_id)]
        second = claim(db)
        assert second is not None and second.job.id == job_id and second.job.attempt == 2
    else:
        assert ended.status == JobStatus.FAILED and ended.error.startswith("training process killed")


def test_retries_stop_at_max_attempts_and_dependents_fail_only_then(db: Database) -> None:
    base = submit(db, pretrain_body(retry_on=["crash"], max_attempts=2))
    child = submit(db, finetune_body(base))
    fail(db, base, run_once(db), ErrorClass.CRASH)
    assert job(db, child).status == JobStatus.QUEUED  # its base is queued again, not failed
    last = fail(db, base, run_once(db), ErrorClass.CRASH, "died again")
    assert last.status == JobStatus.FAILED and last.error == "died again" and last.attempt == 2
    assert job(db, child).status == JobStatus.FAILED


def test_a_job_asked_to_cancel_is_not_retried(db: Database) -> None:
    job_id = submit(db, pretrain_body(retry_on=["crash"]))
    token = run_once(db)
    with db.write() as s:
        jobs.cancel_job(s, EVERYONE, job_id)
    assert fail(db, job_id, token, ErrorClass.CRASH).status == JobStatus.FAILED


def test_an_expired_lease_is_infra_and_retried_unless_retry_on_leaves_infra_out(db: Database) -> None:
    kept = submit(db, pretrain_body())
    left_out = submit(db, pretrain_body(retry_on=["crash"]))
    for _ in (kept, left_out):
        assert claim(db, lease=1) is not None
    with db.write() as s:
        changed = dict(leases.reap_expired_leases(s, now=utcnow() + timedelta(seconds=5)))
    assert changed == {kept: JobStatus.QUEUED, left_out: JobStatus.FAILED}
    assert job(db, kept).error_class == job(db, left_out).error_class == ErrorClass.INFRA
    assert "infra is not in its retry_on" in (job(db, left_out).error or "")


def test_a_success_after_a_retried_failure_clears_the_error(db: Database) -> None:
    job_id = submit(db, pretrain_body(retry_on=["oom"]))
    fail(db, job_id, run_once(db), ErrorClass.OOM)
    token = run_once(db)
    with db.write() as s:
        done_job = leases.finish_job(s, job_id, token, status=JobStatus.SUCCEEDED, result={"test_loss": 0.1})
    assert done_job.error is None and done_job.error_class is None and done_job.attempt == 2


def test_a_job_that_can_never_start_fails_once_even_when_user_failures_are_retried(client: Any) -> None:
    """The claim fails it with its reason (no attempt is worth another) and hands out the next job."""
    from tests.api.helpers import claim as api_claim
    from tests.api.helpers import finish
    from tests.api.helpers import submit as api_submit

    base = api_submit(client, pretrain_body())
    token = api_claim(client)["lease_token"]  # type: ignore[index]
    assert finish(client, base["id"], token, result={"test_loss": 0.1}).status_code == 200  # no checkpoint files
    stuck = api_submit(client, finetune_body(base["id"], retry_on=["user"], max_attempts=5))
    after = api_submit(client, pretrain_body(priority=-1))
    claimed = api_claim(client)
    assert claimed is not None and claimed["id"] == after["id"]
    ended = client.get(f"/jobs/{stuck['id']}").json()
    assert ended["status"] == "failed" and ended["attempt"] == 1 and "no checkpoint file left" in ended["error"]


def test_dependents_of_a_job_out_of_attempts_fail_as_user_and_the_log_says_it_ran_out(db: Database) -> None:
    base = submit(db, pretrain_body(retry_on=["oom"], max_attempts=1))
    child = submit(db, finetune_body(base))
    fail(db, base, run_once(db), ErrorClass.OOM, "out of device memory")
    assert job(db, base).status == JobStatus.FAILED and job(db, child).error_class == ErrorClass.USER
    with db.read() as s:
        assert "attempt 1 of 1 failed (oom); no attempts left" in [line.text for line in logs.read_lines(s, base)]


def test_retry_on_names_each_class_once() -> None:
    from app.core.specs import parse_job_spec

    spec = parse_job_spec(pretrain_body(retry_on=["oom", "crash", "oom", "crash"]))
    assert spec.retry_on == [ErrorClass.OOM, ErrorClass.CRASH]
