"""Event streams against real API processes: a client that joins mid-job, drops and reconnects with
Last-Event-ID gets every status change, metric point and log line once, in order; and on PostgreSQL a
client of one API process sees what a worker reports to another."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from devtools.servers import ApiServer, CallerAuth
from tests.api.helpers import claim, finish, heartbeat, post_points, submit
from tests.conftest import BACKENDS, TINY_JOB, new_postgres_database

pytestmark = pytest.mark.slow


def post_lines(http: httpx.Client, job_id: int, lease: str, first: int, count: int) -> list[str]:
    texts = [f"line {i}" for i in range(first, first + count)]
    batch = [
        {"seq": i, "stream": "stdout", "time": time.time(), "text": t}
        for i, t in zip(range(first, first + count), texts, strict=True)
    ]
    r = http.post(f"/worker/jobs/{job_id}/logs", json={"lease_token": lease, "lines": batch})
    assert r.status_code == 200, r.text
    return texts


class Listener:
    """Reads a job's event stream in a thread until it ends or ``stop`` is set (the connection dropped)."""

    def __init__(self, api: ApiServer, job_id: int, last_event_id: str | None = None, start: str | None = None) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stop = threading.Event()
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        path = f"/jobs/{job_id}/events" + (f"?start={start}" if start else "")
        self.thread = threading.Thread(target=self._read, args=(api, path, headers), daemon=True)
        self.thread.start()

    def _read(self, api: ApiServer, path: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(httpx.TransportError):  # the server closing a stream nobody reads any more
            self._read_until_end(api, path, headers)

    def _read_until_end(self, api: ApiServer, path: str, headers: dict[str, str]) -> None:
        with (
            httpx.Client(base_url=api.url, auth=CallerAuth(api.token), timeout=30) as http,
            connect_sse(http, "GET", path, headers=headers) as source,
        ):
            for sse in source.iter_sse():
                self.events.put({"event": sse.event, "id": sse.id, "data": json.loads(sse.data)})
                if self.stop.is_set() or sse.event == "end":
                    return

    def until(self, predicate: Any, timeout: float = 10) -> list[dict[str, Any]]:
        """Events, as they come, up to and including the first that ``predicate`` accepts."""
        got, deadline = [], time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            got.append(event)
            if predicate(event):
                return got


def lines_of(events: list[dict[str, Any]]) -> list[str]:
    return [line["text"] for e in events if e["event"] == "log" for line in e["data"]["lines"]]


def points_of(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(p["name"], p["step"]) for e in events if e["event"] == "metrics" for p in e["data"]["points"]]


@pytest.fixture(params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiServer]:
    if request.param == "postgresql":
        with new_postgres_database() as url, ApiServer(tmp_path, url) as server:
            yield server
    else:
        with ApiServer(tmp_path) as server:
            yield server


def test_a_client_that_joins_mid_job_drops_and_reconnects_gets_everything_once_in_order(api: ApiServer) -> None:
    with api.client(timeout=30) as http:
        job_id = submit(http, TINY_JOB)["id"]
        lease = claim(http)["lease_token"]  # type: ignore[index]
        sent_lines = post_lines(http, job_id, lease, 0, 3)
        points = [{"name": "train_loss", "step": s, "value": 1.0 / s} for s in range(1, 4)]
        assert post_points(http, job_id, lease, points).status_code == 200

        first = Listener(api, job_id)  # joins mid-job: gets what happened so far
        seen = first.until(lambda e: e["event"] == "log")
        assert seen[0]["event"] == "status" and seen[0]["data"]["status"] == "running"
        sent_lines += post_lines(http, job_id, lease, 3, 2)
        seen += first.until(lambda e: e["event"] == "log" and e["data"]["lines"][-1]["text"] == "line 4")
        first.stop.set()  # drops; the next event it reads ends its connection
        sent_lines += post_lines(http, job_id, lease, 5, 1)
        seen += first.until(lambda e: True)

        # While no one listens: progress, points, lines.
        assert heartbeat(http, job_id, lease, progress={"epoch": 1, "epochs": 1, "step": 8}).status_code == 200
        more = [{"name": "train_loss", "step": s, "value": 1.0 / s} for s in range(4, 9)]
        assert post_points(http, job_id, lease, more).status_code == 200
        sent_lines += post_lines(http, job_id, lease, 6, 1000)  # more than one event's worth
        sent_lines += post_lines(http, job_id, lease, 1006, 500)
        second = Listener(api, job_id, last_event_id=seen[-1]["id"])
        seen += second.until(lambda e: e["event"] == "log" and e["data"]["lines"][-1]["text"] == "line 1505")
        assert finish(http, job_id, lease, "succeeded", result={"train_loss": 0.1}).status_code == 200
        seen += second.until(lambda e: e["event"] == "end", timeout=30)

    assert lines_of(seen) == sent_lines  # each once, in order
    assert points_of(seen) == [("train_loss", s) for s in range(1, 9)]
    statuses = [
        (e["data"]["status"], (e["data"]["progress"] or {}).get("step")) for e in seen if e["event"] == "status"
    ]
    assert statuses[0][0] == "running" and statuses[-1][0] == "succeeded"
    assert ("running", 8) in statuses
    assert len(statuses) == len(set(statuses)), statuses  # no status sent twice
    ids = [e["id"] for e in seen[:-1]]  # the end carries the cursor of the event before it
    assert len(ids) == len(set(ids)) and seen[-1]["event"] == "end" and seen[-1]["id"] == ids[-1]


def test_a_stream_started_now_sends_the_status_then_only_what_comes_after(api: ApiServer) -> None:
    """The dashboard's job page fetches what a job has (downsampled) and follows only what is new."""
    with api.client(timeout=30) as http:
        job_id = submit(http, TINY_JOB)["id"]
        lease = claim(http)["lease_token"]  # type: ignore[index]
        post_lines(http, job_id, lease, 0, 3)
        old = [{"name": "train_loss", "step": s, "value": 1.0} for s in range(1, 4)]
        assert post_points(http, job_id, lease, old).status_code == 200

        listener = Listener(api, job_id, start="now")
        seen = listener.until(lambda e: e["event"] == "status")
        new_lines = post_lines(http, job_id, lease, 3, 2)
        new = [{"name": "train_loss", "step": s, "value": 1.0} for s in range(4, 6)]
        assert post_points(http, job_id, lease, new).status_code == 200
        while len(lines_of(seen)) < 2 or len(points_of(seen)) < 2:  # the two come in either order
            seen += listener.until(lambda e: e["event"] in ("log", "metrics"))
        listener.stop.set()

    assert seen[0]["event"] == "status" and seen[0]["data"]["status"] == "running"
    assert lines_of(seen) == new_lines
    assert points_of(seen) == [("train_loss", 4), ("train_loss", 5)]


def test_a_client_of_one_api_process_sees_what_a_worker_reports_to_another(tmp_path: Path) -> None:
    credentials = str(tmp_path / "a" / "admin-credentials")
    with (
        new_postgres_database() as url,
        ApiServer(tmp_path / "a", url) as a,
        ApiServer(tmp_path / "b", url, admin_credentials_file=credentials) as b,
    ):
        assert b.token == a.token  # one service: the same admin, the same database
        with a.client(timeout=30) as http:
            job_id = submit(http, TINY_JOB)["id"]
            lease = claim(http)["lease_token"]  # type: ignore[index]
            listener = Listener(b, job_id)
            listener.until(lambda e: e["event"] == "status")
            sent = time.monotonic()
            post_lines(http, job_id, lease, 0, 1)
            got = listener.until(lambda e: e["event"] == "log")
            print(f"a line reported to API a reached a client of API b in {time.monotonic() - sent:.2f} s")
            assert lines_of(got) == ["line 0"]
            assert finish(http, job_id, lease, "failed", error="stopped by the test").status_code == 200
            ended = listener.until(lambda e: e["event"] == "end")
            assert [e["data"]["status"] for e in ended if e["event"] == "status"] == ["failed"]


def test_the_stream_of_all_my_jobs_sends_their_status_changes(api: ApiServer) -> None:
    seen: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        with (
            httpx.Client(base_url=api.url, auth=CallerAuth(api.token), timeout=30) as http,
            connect_sse(http, "GET", "/events") as source,
        ):
            for sse in source.iter_sse():
                seen.put(json.loads(sse.data))
                if sse.data and json.loads(sse.data)["status"] == "succeeded":
                    return

    with api.client(timeout=30) as http:
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.5)  # connected: it sends what changes from now on
        job_id = submit(http, TINY_JOB)["id"]
        lease = claim(http)["lease_token"]  # type: ignore[index]
        assert finish(http, job_id, lease, "succeeded", result={"train_loss": 0.1}).status_code == 200
        reader.join(10)
    statuses = [e["status"] for e in list(seen.queue) if e["id"] == job_id]
    assert statuses[-1] == "succeeded" and set(statuses) <= {"queued", "running", "succeeded"}
    assert {e["id"] for e in list(seen.queue)} == {job_id}


@pytest.mark.parametrize("last_id", ["99999999999999999999.0.x", "-5.-9.", "not an id", "1.2"])
def test_a_hostile_last_event_id_starts_the_stream_from_the_beginning(api: ApiServer, last_id: str) -> None:
    with api.client(timeout=30) as http:
        job_id = submit(http, TINY_JOB)["id"]
        listener = Listener(api, job_id, last_event_id=last_id)
        first = listener.until(lambda e: e["event"] == "status")
        assert first[-1]["data"]["status"] == "queued"
        listener.stop.set()
    with httpx.stream(
        "GET",
        f"{api.url}/events",
        headers={"Authorization": f"Bearer {api.token}", "Last-Event-ID": "0001-01-01T00:00:00+14:00"},
    ) as r:
        assert r.status_code == 200  # a stream from now on, not a 500 or a traceback
