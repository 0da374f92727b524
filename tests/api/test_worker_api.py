"""The worker protocol over HTTP: token, claim (long poll, order), heartbeat, metrics, finish, release, fencing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.core.config import Settings
from app.core.db import Database
from tests.api.helpers import (
    claim,
    claim_job,
    client_with,
    finish,
    heartbeat,
    post_points,
    put_checkpoint,
    start,
    submit,
)
from tests.conftest import finetune_body, pretrain_body

# --- the worker token ----------------------------------------------------------------------


def test_the_worker_protocol_needs_the_worker_token(settings: Settings, db: Database, tokens: dict[str, str]) -> None:
    with client_with(settings, db, tokens, worker_token=SecretStr("s3cret-worker-token-of-32-chars!")) as client:
        client.worker_token = None  # the requests below say which token they send
        job_id = submit(client, pretrain_body())["id"]
        assert client.get("/jobs").status_code == 200
        assert client.get(f"/jobs/{job_id}").status_code == 200
        assert client.get("/healthz").status_code == 200

        for headers in [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret-worker-token-of-32-chars!"},
            {"Authorization": ""},
        ]:
            r = client.post("/worker/claim", json={"worker_id": "w1"}, headers=headers)
            assert r.status_code == 401, headers
            assert "TRAINJOBS_WORKER_TOKEN" in r.json()["detail"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = client.post(f"/worker/jobs/{job_id}/heartbeat", json={"lease_token": "x"})
        assert r.status_code == 401
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"  # nothing was claimed

        auth = {"Authorization": "Bearer s3cret-worker-token-of-32-chars!"}
        r = client.post("/worker/claim", json={"worker_id": "w1"}, headers=auth)
        assert r.status_code == 200
        token = r.json()["lease_token"]
        r = client.post(f"/worker/jobs/{job_id}/heartbeat", json={"lease_token": token}, headers=auth)
        assert r.status_code == 200
        r = client.post(
            f"/worker/jobs/{job_id}/finish", json={"lease_token": token, "status": "succeeded"}, headers=auth
        )
        assert r.status_code == 200


def test_without_any_worker_token_the_worker_protocol_is_closed(
    settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    with client_with(settings, db, tokens, worker_token=None) as client:
        r = client.post("/worker/claim", json={"worker_id": "w1"})
        assert r.status_code == 401 and "worker token wrong" in r.json()["detail"]


# --- claim ------------------------------------------------------------------------------------


def test_claim_with_nothing_queued_is_204(client: TestClient) -> None:
    r = client.post("/worker/claim", json={"worker_id": "w1"})

    assert r.status_code == 204
    assert r.content == b""


def test_claim_hands_out_the_job_with_a_lease(client: TestClient, settings: Settings) -> None:
    job = submit(client, pretrain_body())

    r = client.post("/worker/claim", json={"worker_id": "host:42", "device": "cuda:0"})

    assert r.status_code == 200
    claimed = r.json()
    assert claimed["id"] == job["id"]
    assert claimed["kind"] == "pretrain"
    assert claimed["spec"] == job["spec"]
    assert claimed["attempt"] == 1
    assert claimed["max_attempts"] == 3
    assert len(claimed["lease_token"]) >= 16
    assert claimed["lease_seconds"] == settings.lease_seconds
    assert claimed["heartbeat_seconds"] == settings.heartbeat_seconds
    assert claimed["resume_checkpoint"] is None
    assert claimed["init_checkpoint"] is None
    shown = client.get(f"/jobs/{job['id']}").json()
    assert (shown["status"], shown["worker"], shown["device"], shown["attempt"]) == ("running", "host:42", "cuda:0", 1)
    assert "lease_token" not in shown
    assert claim(client) is None  # handed out once


def test_claim_takes_highest_priority_first_then_oldest(client: TestClient) -> None:
    low_old = submit(client, pretrain_body(name="low-old"))["id"]
    high_old = submit(client, pretrain_body(name="high-old", priority=5))["id"]
    negative = submit(client, pretrain_body(name="negative", priority=-1))["id"]
    high_new = submit(client, pretrain_body(name="high-new", priority=5))["id"]
    low_new = submit(client, pretrain_body(name="low-new"))["id"]
    highest = submit(client, pretrain_body(name="highest", priority=1000))["id"]

    order = []
    while (claimed := claim(client)) is not None:
        order.append(claimed["id"])

    assert order == [highest, high_old, high_new, low_old, low_new, negative]


def test_claim_long_poll_returns_a_job_submitted_while_it_waits(client: TestClient) -> None:
    outcome: dict[str, Any] = {}

    def wait_for_a_job() -> None:
        started = time.monotonic()
        outcome["claimed"] = claim(client, "poller", wait_seconds=5)
        outcome["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=wait_for_a_job)
    poller.start()
    time.sleep(0.3)  # let the claim start waiting
    job_id = submit(client, pretrain_body())["id"]
    poller.join(timeout=10)

    assert not poller.is_alive()
    assert outcome["claimed"] is not None
    assert outcome["claimed"]["id"] == job_id
    assert outcome["seconds"] < 4


def test_claim_long_poll_wakes_when_a_base_job_succeeds(client: TestClient) -> None:
    base_id, token = start(client, pretrain_body())
    tuned = submit(client, finetune_body(base_id))["id"]
    outcome: dict[str, Any] = {}

    def wait_for_a_job() -> None:
        started = time.monotonic()
        outcome["claimed"] = claim(client, "poller", wait_seconds=5)
        outcome["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=wait_for_a_job)
    poller.start()
    time.sleep(0.3)
    assert put_checkpoint(client, base_id, token, b"encoder", "best").status_code == 201
    assert finish(client, base_id, token).status_code == 200
    poller.join(timeout=10)

    assert outcome["claimed"] is not None
    assert outcome["claimed"]["id"] == tuned
    assert outcome["seconds"] < 4


def test_claim_long_poll_gives_204_when_the_wait_is_over(client: TestClient) -> None:
    started = time.monotonic()
    r = client.post("/worker/claim", json={"worker_id": "w1", "wait_seconds": 0.3})

    assert r.status_code == 204
    assert time.monotonic() - started >= 0.25


BAD_CLAIMS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "missing-worker-id": ({}, ["body", "worker_id"]),
    "empty-worker-id": ({"worker_id": ""}, ["body", "worker_id"]),
    "negative-wait": ({"worker_id": "w", "wait_seconds": -1}, ["body", "wait_seconds"]),
    "wait-too-long": ({"worker_id": "w", "wait_seconds": 301}, ["body", "wait_seconds"]),
    "unknown-field": ({"worker_id": "w", "gpu": 1}, ["body", "gpu"]),
}


def test_bad_claims_are_422(client: TestClient, subtests: pytest.Subtests) -> None:
    submit(client, pretrain_body())

    for case, (body, loc) in BAD_CLAIMS.items():
        with subtests.test(case):
            r = client.post("/worker/claim", json=body)
            assert r.status_code == 422
            assert loc in [e["loc"] for e in r.json()["detail"]]
    assert client.get("/jobs").json()["data"][0]["status"] == "queued"


def test_a_nul_character_in_the_worker_id_is_422_not_a_server_error(client: TestClient) -> None:
    # PostgreSQL cannot store NUL in text: refuse it on both backends rather than answer 500 on one.
    submit(client, pretrain_body())

    r = client.post("/worker/claim", json={"worker_id": "host\x00:1"})

    assert r.status_code == 422, r.text
    assert ["body", "worker_id"] in [e["loc"] for e in r.json()["detail"]]
    assert client.get("/jobs").json()["data"][0]["status"] == "queued"


# --- heartbeat -----------------------------------------------------------------------------------


def test_heartbeat_reports_progress(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    r = heartbeat(client, job_id, token, {"epoch": 1, "epochs": 2, "step": 17})

    assert r.status_code == 200
    assert r.json() == {"cancel_requested": False}
    assert client.get(f"/jobs/{job_id}").json()["progress"] == {"epoch": 1, "epochs": 2, "step": 17}
    assert heartbeat(client, job_id, token).status_code == 200  # progress is optional
    assert client.get(f"/jobs/{job_id}").json()["progress"] == {"epoch": 1, "epochs": 2, "step": 17}


def test_heartbeat_with_a_wrong_token_is_409(client: TestClient) -> None:
    job_id, _ = start(client, pretrain_body())

    r = heartbeat(client, job_id, "not-the-token")

    assert r.status_code == 409
    assert "lease lost" in r.json()["detail"]


def test_heartbeat_for_an_unknown_job_is_404(client: TestClient) -> None:
    r = heartbeat(client, 999, "any")

    assert r.status_code == 404
    assert r.json() == {"detail": "job 999 not found"}


def test_heartbeat_for_a_queued_job_is_409(client: TestClient) -> None:
    job_id = submit(client, pretrain_body())["id"]

    assert heartbeat(client, job_id, "any").status_code == 409


def test_heartbeat_with_negative_progress_is_422(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    r = heartbeat(client, job_id, token, {"epoch": -1, "epochs": 2, "step": 0})

    assert r.status_code == 422
    assert ["body", "progress", "epoch"] in [e["loc"] for e in r.json()["detail"]]


# --- metrics ----------------------------------------------------------------------------------------


def test_a_metrics_batch_of_1000_points_is_accepted_and_1001_is_422(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    ok = post_points(client, job_id, token, [{"name": "loss", "step": s, "value": 1.0} for s in range(1000)])
    too_many = post_points(client, job_id, token, [{"name": "acc", "step": s, "value": 1.0} for s in range(1001)])

    assert ok.status_code == 200
    assert ok.json() == {"accepted": 1000}
    assert too_many.status_code == 422
    assert ["body", "points"] in [e["loc"] for e in too_many.json()["detail"]]
    assert set(client.get(f"/jobs/{job_id}/metrics").json()["series"]) == {"loss"}


def test_a_non_finite_metric_value_is_422_and_nothing_of_the_batch_is_stored(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    job_id, token = start(client, pretrain_body())

    for value in ["NaN", "Infinity", "-Infinity", "1e999"]:
        with subtests.test(value):
            raw = (
                f'{{"lease_token": "{token}", "points": ['
                f'{{"name": "loss", "step": 1, "value": 0.5}}, {{"name": "loss", "step": 2, "value": {value}}}]}}'
            )
            r = client.post(f"/worker/jobs/{job_id}/metrics", content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 422
            assert ["body", "points", 1, "value"] in [e["loc"] for e in r.json()["detail"]]
    assert client.get(f"/jobs/{job_id}/metrics").json()["series"] == {}


BAD_POINTS: dict[str, tuple[dict[str, Any], str]] = {
    "name-with-space": ({"name": "bad name", "step": 1, "value": 1.0}, "name"),
    "empty-name": ({"name": "", "step": 1, "value": 1.0}, "name"),
    "negative-step": ({"name": "loss", "step": -1, "value": 1.0}, "step"),
    "value-text": ({"name": "loss", "step": 1, "value": "high"}, "value"),
    "unknown-field": ({"name": "loss", "step": 1, "value": 1.0, "unit": "nats"}, "unit"),
}


def test_a_bad_metric_point_is_422_naming_the_field(client: TestClient, subtests: pytest.Subtests) -> None:
    job_id, token = start(client, pretrain_body())

    for case, (point, field) in BAD_POINTS.items():
        with subtests.test(case):
            r = post_points(client, job_id, token, [point])
            assert r.status_code == 422
            assert ["body", "points", 0, field] in [e["loc"] for e in r.json()["detail"]]
    assert client.get(f"/jobs/{job_id}/metrics").json()["series"] == {}


def test_metrics_with_a_wrong_token_are_409_and_not_stored(client: TestClient) -> None:
    job_id, _ = start(client, pretrain_body())

    r = post_points(client, job_id, "not-the-token", [{"name": "loss", "step": 1, "value": 1.0}])

    assert r.status_code == 409
    assert client.get(f"/jobs/{job_id}/metrics").json()["series"] == {}


def test_metrics_for_an_unknown_job_are_404(client: TestClient) -> None:
    assert post_points(client, 999, "any", [{"name": "loss", "step": 1, "value": 1.0}]).status_code == 404


# --- finish -------------------------------------------------------------------------------------------


def test_finish_succeeded_shows_the_result(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    r = finish(client, job_id, token, result={"test_accuracy": 0.91, "test_loss": 0.3})

    assert r.status_code == 200
    assert r.json()["status"] == "succeeded"
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["result"] == {"test_accuracy": 0.91, "test_loss": 0.3}
    assert job["error"] is None
    assert job["finished_at"] is not None


def test_finish_failed_keeps_the_error(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    r = finish(client, job_id, token, "failed", error="RuntimeError: CUDA out of memory")

    assert r.status_code == 200
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"] == "RuntimeError: CUDA out of memory"
    assert claim(client) is None  # a failure is final, not retried


def test_finish_cancelled(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    assert finish(client, job_id, token, "cancelled").status_code == 200
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_finish_with_a_status_that_is_not_an_end_is_422(client: TestClient, subtests: pytest.Subtests) -> None:
    job_id, token = start(client, pretrain_body())

    for status in ["queued", "running", "done"]:
        with subtests.test(status):
            r = finish(client, job_id, token, status)
            assert r.status_code == 422
            assert ["body", "status"] in [e["loc"] for e in r.json()["detail"]]
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_finish_with_a_non_finite_number_in_the_result_is_422(client: TestClient) -> None:
    # A diverged run can report a NaN loss; PostgreSQL's JSON refuses NaN, so the API must answer, not 500.
    job_id, token = start(client, pretrain_body())
    raw = f'{{"lease_token": "{token}", "status": "succeeded", "result": {{"test_loss": NaN}}}}'

    r = client.post(f"/worker/jobs/{job_id}/finish", content=raw, headers={"Content-Type": "application/json"})

    assert r.status_code == 422, r.text
    assert any(e["loc"][:2] == ["body", "result"] for e in r.json()["detail"])
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_finish_or_release_of_an_unknown_job_is_404(client: TestClient) -> None:
    assert finish(client, 999, "any").status_code == 404
    assert client.post("/worker/jobs/999/release", json={"lease_token": "any"}).status_code == 404


# --- release -------------------------------------------------------------------------------------------


def test_release_requeues_without_spending_an_attempt(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    r = client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": token})

    assert r.status_code == 200
    assert r.json()["status"] == "queued"
    assert r.json()["attempt"] == 0
    again = claim(client, "w2")
    assert again is not None
    assert again["id"] == job_id
    assert again["attempt"] == 1
    assert again["lease_token"] != token


def test_release_offers_the_last_checkpoint_to_the_next_claim(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    data = b"epoch-1 state" * 10
    assert put_checkpoint(client, job_id, token, data, "last", epoch=1, step=29).status_code == 201

    client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": token})
    again = claim(client, "w2")

    assert again is not None
    resume = again["resume_checkpoint"]
    assert (resume["job_id"], resume["tag"], resume["epoch"], resume["step"]) == (job_id, "last", 1, 29)
    assert client.get(resume["url"], headers={"X-Lease-Token": again["lease_token"]}).content == data


def test_release_of_a_job_with_a_cancel_requested_ends_it_cancelled(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    client.post(f"/jobs/{job_id}/cancel")

    r = client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": token})

    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert claim(client) is None


# --- fencing: the old token after release or finish -------------------------------------------------------


def old_token_writes(client: TestClient, job_id: int, token: str) -> dict[str, int]:
    return {
        "heartbeat": heartbeat(client, job_id, token).status_code,
        "metrics": post_points(client, job_id, token, [{"name": "loss", "step": 99, "value": 1.0}]).status_code,
        "checkpoint": put_checkpoint(client, job_id, token, b"stale").status_code,
        "finish": finish(client, job_id, token, "failed", error="stale").status_code,
        "release": client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": token}).status_code,
    }


def test_after_release_the_old_token_writes_nothing(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": token})
    new_token = claim_job(client, job_id, "w2")

    assert old_token_writes(client, job_id, token) == dict.fromkeys(
        ["heartbeat", "metrics", "checkpoint", "finish", "release"], 409
    )
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["worker"], job["error"]) == ("running", "w2", None)
    assert client.get(f"/jobs/{job_id}/metrics").json()["series"] == {}
    assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
    assert heartbeat(client, job_id, new_token).status_code == 200


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_after_finish_the_old_token_writes_nothing(client: TestClient, status: str) -> None:
    job_id, token = start(client, pretrain_body())
    finish(client, job_id, token, status, result={"test_accuracy": 0.5})

    assert old_token_writes(client, job_id, token) == dict.fromkeys(
        ["heartbeat", "metrics", "checkpoint", "finish", "release"], 409
    )
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == status
    assert job["result"] == {"test_accuracy": 0.5}
    assert client.get(f"/jobs/{job_id}/metrics").json()["series"] == {}


def test_a_metrics_body_that_is_not_json_is_422_under_body(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    for raw in [b"", b"{not json", b"[]", f'{{"lease_token": "{token}"}}'.encode()]:
        r = client.post(f"/worker/jobs/{job_id}/metrics", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, raw
        assert all(e["loc"][0] == "body" for e in r.json()["detail"]), r.json()
    assert client.get(f"/jobs/{job_id}/metrics").json()["series"] == {}


def test_a_metrics_body_sent_as_another_media_type_is_422(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    raw = f'{{"lease_token": "{token}", "points": [{{"name": "loss", "step": 1, "value": 0.5}}]}}'
    r = client.post(f"/worker/jobs/{job_id}/metrics", content=raw, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body"] and "application/json" in r.json()["detail"][0]["msg"]
    ok = client.post(
        f"/worker/jobs/{job_id}/metrics", content=raw, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200, ok.text


def test_the_metrics_body_is_documented_in_openapi(client: TestClient) -> None:
    """The batch is parsed from raw bytes (faster), so its schema is written into the operation by hand."""
    op = client.get("/openapi.json").json()["paths"]["/worker/jobs/{job_id}/metrics"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert op["requestBody"]["required"] is True
    assert set(schema["required"]) == {"lease_token", "points"}
    assert schema["properties"]["points"]["maxItems"] == 1000
    point = schema["properties"]["points"]["items"]
    assert {"name", "step", "value"} <= set(point["required"])
    assert "$ref" not in str(schema)
