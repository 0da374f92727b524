"""A job's log over HTTP: workers send numbered lines (fenced, stored once), users page through them."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from app.core import leases
from app.core.config import Settings
from app.core.db import Database
from app.core.models import JobLog, utcnow
from tests.api.helpers import client_with, finish, start
from tests.authed import AuthedClient
from tests.conftest import TINY_JOB


def lines(*texts: str, first: int = 0, stream: str = "stdout") -> list[dict[str, Any]]:
    return [{"seq": first + i, "stream": stream, "time": time.time(), "text": t} for i, t in enumerate(texts)]


def send(client: AuthedClient, job_id: int, lease: str, batch: list[dict[str, Any]]) -> Any:
    r = client.post(f"/worker/jobs/{job_id}/logs", json={"lease_token": lease, "lines": batch})
    assert r.status_code == 200, r.text
    return r.json()


def test_lines_come_back_in_order_paged_by_seq_with_tail_and_filters(client: AuthedClient) -> None:
    job_id, lease = start(client, TINY_JOB)
    send(client, job_id, lease, lines("one", "two", "three"))
    send(client, job_id, lease, lines("oops", first=3, stream="stderr") + lines("claimed", first=4, stream="system"))
    whole = client.get(f"/jobs/{job_id}/logs").json()
    assert [line["text"] for line in whole["lines"]] == ["one", "two", "three", "oops", "claimed"]
    assert {line["attempt"] for line in whole["lines"]} == {1}
    seqs = [line["seq"] for line in whole["lines"]]
    assert seqs == sorted(seqs) and whole["next"] == seqs[-1]

    first_two = client.get(f"/jobs/{job_id}/logs", params={"limit": 2}).json()
    rest = client.get(f"/jobs/{job_id}/logs", params={"after": first_two["next"]}).json()
    assert first_two["lines"] + rest["lines"] == whole["lines"]
    assert client.get(f"/jobs/{job_id}/logs", params={"after": whole["next"]}).json() == {
        "lines": [],
        "next": whole["next"],
    }
    tail = client.get(f"/jobs/{job_id}/logs", params={"tail": 2}).json()["lines"]
    assert [line["text"] for line in tail] == ["oops", "claimed"]
    errors = client.get(f"/jobs/{job_id}/logs", params={"stream": "stderr"}).json()["lines"]
    assert [line["text"] for line in errors] == ["oops"]
    assert client.get(f"/jobs/{job_id}/logs", params={"attempt": 2}).json()["lines"] == []


def test_a_batch_sent_again_is_stored_once(client: AuthedClient) -> None:
    job_id, lease = start(client, TINY_JOB)
    batch = lines("a", "b", "c")
    assert send(client, job_id, lease, batch) == {"stored": 3}
    assert send(client, job_id, lease, batch + lines("d", first=3)) == {"stored": 1}  # a retry, then one more
    texts = [line["text"] for line in client.get(f"/jobs/{job_id}/logs").json()["lines"]]
    assert texts == ["a", "b", "c", "d"]


def test_past_the_cap_lines_are_dropped_and_one_line_says_how_much(
    settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    with client_with(settings, db, tokens, max_log_bytes=1024) as client:
        job_id, lease = start(client, TINY_JOB)
        send(client, job_id, lease, lines(*["x" * 100] * 9))  # 900 bytes: all kept
        send(client, job_id, lease, lines(*["y" * 100] * 5, first=9))  # one fits, four do not
        send(client, job_id, lease, lines(*["z" * 100] * 2, first=14))  # two more dropped
        got = client.get(f"/jobs/{job_id}/logs").json()["lines"]
        assert [line["text"][0] for line in got[:10]] == ["x"] * 9 + ["y"]
        [marker] = got[10:]
        assert marker["stream"] == "system"
        assert "TRAINJOBS_MAX_LOG_BYTES" in marker["text"] and "6 later line(s), 600 bytes" in marker["text"]


def test_log_writes_are_fenced_and_another_users_job_log_is_a_404(client: AuthedClient, tokens: dict[str, str]) -> None:
    job_id, _ = start(client, TINY_JOB)
    r = client.post(f"/worker/jobs/{job_id}/logs", json={"lease_token": "not-the-lease", "lines": lines("x")})
    assert r.status_code == 409, r.text
    with client.as_user(tokens["bob"]):
        assert client.get(f"/jobs/{job_id}/logs").status_code == 404


def test_a_line_that_is_not_text_or_too_long_is_refused_naming_the_line(client: AuthedClient) -> None:
    job_id, lease = start(client, TINY_JOB)
    for bad in ({"text": "x" * 8193}, {"seq": -1}, {"stream": "stdin"}, {"time": "now"}):
        line = {**lines("ok")[0], **bad}
        r = client.post(f"/worker/jobs/{job_id}/logs", json={"lease_token": lease, "lines": [line]})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"][:3] == ["body", "lines", 0], r.text
    r = client.post(
        f"/worker/jobs/{job_id}/logs",
        content=f'{{"lease_token": "{lease}", "lines": [{{"seq": 0, "stream": "stdout", "time": 1, "text": "\\ud800"}}]}}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text


def test_an_expired_lease_is_written_into_the_log_and_a_delete_removes_the_log(
    client: AuthedClient, db: Database
) -> None:
    job_id, lease = start(client, TINY_JOB)
    send(client, job_id, lease, lines("training"))
    with db.write() as session:
        leases.reap_expired_leases(session, now=utcnow() + timedelta(hours=1))
    got = client.get(f"/jobs/{job_id}/logs").json()["lines"]
    assert got[-1]["stream"] == "system" and "lease expired" in got[-1]["text"] and "requeued" in got[-1]["text"]
    lease = start_again(client, job_id)
    send(client, job_id, lease, lines("training again"))
    by_attempt = [(line["attempt"], line["text"]) for line in client.get(f"/jobs/{job_id}/logs").json()["lines"]]
    assert by_attempt[0] == (1, "training") and by_attempt[-1] == (2, "training again")
    assert finish(client, job_id, lease, "succeeded", result={"train_loss": 0.1}).status_code == 200
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(JobLog).where(JobLog.job_id == job_id)) == 0


def start_again(client: AuthedClient, job_id: int) -> str:
    r = client.post("/worker/claim", json={"worker_id": "w2", "device": "cpu"})
    assert r.status_code == 200 and r.json()["id"] == job_id, r.text
    token: str = r.json()["lease_token"]
    return token


def test_a_run_after_a_give_back_numbers_its_lines_after_the_first_runs(client: AuthedClient) -> None:
    """A job given back at a worker's shutdown keeps its attempt: the next run's lines must not be taken for
    the first run's (stored once by job, attempt and seq) and dropped."""
    from tests.api.helpers import claim

    job_id, lease = start(client, TINY_JOB)
    send(client, job_id, lease, lines("first run", "saved at step 7"))
    assert client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": lease}).status_code == 200
    again = claim(client, "w2")
    assert again is not None and again["attempt"] == 1 and again["first_log_seq"] == 2
    send(client, job_id, again["lease_token"], lines("resuming", first=again["first_log_seq"]))
    texts = [line["text"] for line in client.get(f"/jobs/{job_id}/logs").json()["lines"]]
    assert texts == ["first run", "saved at step 7", "resuming"]
