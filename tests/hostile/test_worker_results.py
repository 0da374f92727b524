"""What a buggy worker reports is bounded before it is stored, and no stored row can break a read."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.api.helpers import claim_job, finish, heartbeat, post_points, run_job, start, submit
from tests.conftest import TINY_JOB, finetune_body, pretrain_body
from tests.hostile.conftest import Live

pytestmark = pytest.mark.slow
DEEP = "[" * 500 + "]" * 500


def raw_object(**fields: str) -> str:
    """A JSON object written from the raw JSON text of each value (NaN, escapes and depth kept as written)."""
    return "{" + ", ".join(f'"{key}": {value}' for key, value in fields.items()) + "}"


def quoted(text: str) -> str:
    return f'"{text}"'


HOSTILE_FINISHES = {
    "result nested 500 deep": {"result": raw_object(a=DEEP)},
    "result nested 100,000 deep": {"result": raw_object(a="[" * 100_000 + "]" * 100_000)},
    "result with a lone surrogate": {"result": raw_object(a=quoted("\\ud800"))},
    "result with a lone surrogate key": {"result": '{"\\udfff": 1}'},
    "result with NaN": {"result": raw_object(a="NaN")},
    "result with Infinity": {"result": raw_object(a="[1, -Infinity]")},
    "result of 1 MB": {"result": raw_object(a=quoted("x" * 1_000_000))},
    "result a list": {"result": "[1, 2]"},
    "result a huge integer": {"result": raw_object(a="9" * 4000)},
    "error with a NUL": {"error": quoted("bad\\u0000")},
    "error of 1 MB": {"error": quoted("e" * 1_000_000)},
}


def test_a_hostile_finish_is_refused_and_commits_nothing(live: Live) -> None:
    job_id, lease = start(live.http, TINY_JOB)
    for what, field in HOSTILE_FINISHES.items():
        body = raw_object(lease_token=quoted(lease), status=quoted("succeeded"), **field)
        r = live.raw("POST", f"/worker/jobs/{job_id}/finish", body)
        assert r.status_code in (400, 413, 422), (what, r.status_code, r.text[:300])
        assert isinstance(r.json()["detail"], str | list), what
        job = live.http.get(f"/jobs/{job_id}").json()
        assert (job["status"], job["result"], job["error"]) == ("running", None, None), what
    assert heartbeat(live.http, job_id, lease).status_code == 200  # the lease still holds
    assert live.http.get("/jobs", params={"status": "running"}).status_code == 200


def test_hostile_progress_and_metrics_are_refused(live: Live) -> None:
    job_id, lease = start(live.http, TINY_JOB)
    before = live.http.get(f"/jobs/{job_id}").json()["progress"]
    for progress in ['{"epoch": NaN}', '{"epoch": -1}', '{"step": 1e300}', '{"epoch": 1, "extra": 2}', "[1]", DEEP]:
        r = live.raw(
            "POST", f"/worker/jobs/{job_id}/heartbeat", raw_object(lease_token=quoted(lease), progress=progress)
        )
        assert r.status_code in (400, 422), (progress[:40], r.status_code, r.text[:300])
    bad_points = [
        '{"name": "loss", "step": 1, "value": NaN}',
        '{"name": "loss", "step": -1, "value": 1}',
        '{"name": "", "step": 1, "value": 1}',
        raw_object(name=quoted("n" * 10_000), step="1", value="1"),
        '{"name": "loss\\u0000", "step": 1, "value": 1}',
        '{"name": "loss", "step": 1, "value": "1"}',
        raw_object(name=quoted("loss"), step="1", value="9" * 400),
    ]
    for point in bad_points:
        r = live.raw(
            "POST", f"/worker/jobs/{job_id}/metrics", raw_object(lease_token=quoted(lease), points=f"[{point}]")
        )
        assert r.status_code == 422, (point[:60], r.status_code, r.text[:300])
    assert post_points(live.http, job_id, lease, [{"name": "loss", "step": 1, "value": 1e308}]).status_code == 200
    assert live.http.get(f"/jobs/{job_id}").json()["progress"] == before
    series = live.http.get(f"/jobs/{job_id}/metrics").json()["series"]
    assert [(p["step"], p["value"]) for p in series.pop("loss")] == [(1, 1e308)] and series == {}


STORED = {
    "result": [raw_object(a=DEEP), '{"a": "\\ud800"}', '{"\\ud800": 1}', '{"a": NaN}', "not json", "[1, 2]", '"text"'],
    "progress": ['{"epoch": -5, "x": "y"}', "[1]", '{"epoch": "\\ud800"}', "not json"],
    "spec": [raw_object(a=DEEP), "[]", '{"k": "\\udfff"}', "null"],
}


def test_a_hostile_row_stored_directly_does_not_break_any_read(live: Live) -> None:
    """What an older version, a bug or a hand-edit left in the database: every read still answers."""
    engine = live.engine()
    stored = []
    try:
        for column, values in STORED.items():
            for value in values:
                job_id = run_job(live.http, TINY_JOB)
                try:
                    with engine.begin() as conn:
                        conn.execute(text(f"UPDATE jobs SET {column} = :v WHERE id = :id"), {"v": value, "id": job_id})
                except DBAPIError:  # this backend refuses to store it at all: nothing to read back
                    continue
                stored.append((column, value, job_id))
    finally:
        engine.dispose()
    assert len(stored) >= 6, stored  # each backend stores most of them (PostgreSQL's JSON refuses NaN, say)
    for column, value, job_id in stored:
        r = live.http.get(f"/jobs/{job_id}")
        assert r.status_code == 200, (column, value[:40], r.text[:300])
    for params in [{}, {"status": "succeeded"}, {"kind": "pretrain"}, {"limit": 200}]:
        r = live.http.get("/jobs", params=params)
        assert r.status_code == 200, (params, r.text[:300])
        assert {j["id"] for j in r.json()["data"]} >= {job_id for *_, job_id in stored}
    for *_, job_id in stored:
        for path in ["metrics", "checkpoints"]:
            assert live.http.get(f"/jobs/{job_id}/{path}").status_code == 200
        assert live.http.post(f"/jobs/{job_id}/cancel").status_code in (200, 409)
        assert live.http.delete(f"/jobs/{job_id}").status_code in (200, 204)
    live.assert_up()


def test_finish_with_a_hostile_lease_or_status_is_a_client_error(live: Live) -> None:
    job_id, lease = start(live.http, TINY_JOB)
    for body in [
        raw_object(lease_token=quoted(lease), status=quoted("queued")),
        raw_object(lease_token=quoted(lease), status=quoted("running")),
        raw_object(lease_token=quoted(lease), status="1"),
        raw_object(lease_token=quoted("x" * 10_000)),
        '{"lease_token": null, "status": "failed"}',
        "[]",
        "null",
        "",
    ]:
        r = live.raw("POST", f"/worker/jobs/{job_id}/finish", body)
        assert r.status_code in (400, 422), (body[:60], r.status_code, r.text[:300])
    r = finish(live.http, job_id, lease, "succeeded", result={"test_accuracy": 0.5})
    assert r.status_code == 200 and r.json()["result"] == {"test_accuracy": 0.5}


@pytest.mark.parametrize("spec", ["[]", "null", "42"])
def test_a_queued_job_whose_stored_spec_is_unreadable_is_failed_by_the_claim_and_the_queue_goes_on(
    live: Live, spec: str
) -> None:
    broken = submit(live.http, {**TINY_JOB, "priority": 100})["id"]
    behind = submit(live.http, {**TINY_JOB, "priority": 99})["id"]
    engine = live.engine()
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET spec = :v WHERE id = :id"), {"v": spec, "id": broken})
    finally:
        engine.dispose()
    assert claim_job(live.http, behind)  # not a 500 on the broken one, again and again
    job = live.http.get(f"/jobs/{broken}").json()
    assert job["status"] == "failed" and "stored spec cannot be read" in job["error"], job


def test_a_finetune_from_a_job_whose_stored_spec_is_unreadable_is_a_422(live: Live) -> None:
    base = run_job(live.http, pretrain_body())
    engine = live.engine()
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET spec = '[]' WHERE id = :id"), {"id": base})
    finally:
        engine.dispose()
    r = live.http.post("/jobs", json=finetune_body(base))
    assert r.status_code == 422, r.text
    assert "stored spec cannot be read" in r.text
