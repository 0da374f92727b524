"""Connections that never finish their request cannot take the service down (a real API process)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from devtools.servers import WORKER_TOKEN, ApiServer, CallerAuth, wait_until

pytestmark = pytest.mark.slow
HALF_A_HEADER = b"GET /healthz HTTP/1.1\r\nHost: trainjobs\r\nX-Slow: "


def test_more_half_open_connections_than_open_files_leave_healthz_answering(tmp_path: Path) -> None:
    """1,100 connections sending half a header to a process that may open 1,024 files."""
    # A long header deadline: what keeps the service answering here is the connection cap.
    with ApiServer(tmp_path, open_files=1024, header_timeout_seconds="60") as api:
        host, port = "127.0.0.1", api.port
        held: list[socket.socket] = []
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set() and len(held) < 1100:
                try:
                    s = socket.create_connection((host, port), timeout=5)
                    s.sendall(HALF_A_HEADER)
                    held.append(s)
                except OSError:
                    time.sleep(0.01)

        attacker = threading.Thread(target=attack)
        attacker.start()
        answers, slowest = [], 0.0
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                answers.append(httpx.get(f"{api.url}/healthz", timeout=5).status_code)
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.25)
        finally:
            stop.set()
            attacker.join()
            for s in held:
                s.close()
        assert len(held) >= 1000, "the attack did not get its connections open"
        assert answers and set(answers) == {200}, answers
        assert slowest < 2.0, f"healthz took {slowest:.2f} s under the attack"


def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path: Path) -> None:
    with ApiServer(tmp_path, header_timeout_seconds="1") as api:
        slow = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        slow.sendall(HALF_A_HEADER)
        started = time.monotonic()
        assert slow.recv(1) == b""  # closed by the service, with nothing sent
        assert 0.9 < time.monotonic() - started < 5
        silent = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        assert silent.recv(1) == b""


def send_head(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> socket.socket:
    """A connection that sent a request's headers and ``body`` (maybe less than it declared), and waits."""
    lines = [f"{method} {path} HTTP/1.1", "Host: trainjobs", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall("\r\n".join(lines).encode() + body)
    return s


def status_of(s: socket.socket) -> int:
    """The status of the answer that comes on ``s``."""
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    return int(data.split()[1])


def stalled_submit(api: ApiServer) -> socket.socket:
    """``POST /jobs`` with a token, declaring 100 bytes of body and sending 10."""
    headers = {"Authorization": f"Bearer {api.token}", "Content-Type": "application/json", "Content-Length": "100"}
    return send_head(api.port, "POST", "/jobs", headers, b'{"kind": "')


def test_a_body_that_stalls_is_a_408_on_public_and_worker_routes(tmp_path: Path) -> None:
    with ApiServer(tmp_path, body_timeout_seconds="1") as api:
        public = stalled_submit(api)
        worker_headers = {"Authorization": f"Bearer {WORKER_TOKEN}", "Content-Length": "50"}
        worker = send_head(api.port, "POST", "/worker/claim", worker_headers, b"{")
        started = time.monotonic()
        assert status_of(public) == 408
        assert status_of(worker) == 408
        assert 0.9 < time.monotonic() - started < 5
        public.close()
        worker.close()
        assert httpx.get(f"{api.url}/healthz").status_code == 200


def test_requests_past_the_concurrency_cap_are_503_at_once_and_heartbeats_are_not_counted(tmp_path: Path) -> None:
    """Eight requests in flight (their bodies stalled) fill a cap of eight: the next public one is shed."""
    with ApiServer(tmp_path, max_concurrency="8", body_timeout_seconds="20") as api, api.client() as http:
        held = [stalled_submit(api) for _ in range(8)]
        try:
            wait_for_shedding(api)
            started = time.monotonic()
            shed = http.get("/jobs")
            assert shed.status_code == 503 and shed.headers["Retry-After"] == "1", shed.text
            assert "busy" in shed.json()["detail"]
            assert time.monotonic() - started < 0.5
            # The same connection asking again at once, ignoring Retry-After, waits out the second first.
            started = time.monotonic()
            assert http.get("/jobs").status_code == 503
            assert time.monotonic() - started > 0.5
            # The worker protocol is never shed.
            claim = http.post("/worker/claim", json={"worker_id": "w", "device": "cpu"})
            assert claim.status_code == 204, claim.text
        finally:
            for s in held:
                s.close()
        assert wait_until(lambda: http.get("/jobs").status_code == 200, timeout=10, what="the cap to free up")


def wait_for_shedding(api: ApiServer) -> None:
    """Until the held requests are in flight at the service: each probe on a connection of its own."""
    wait_until(
        lambda: httpx.get(f"{api.url}/jobs", auth=CallerAuth(api.token)).status_code == 503,
        timeout=10,
        what="the cap to fill",
    )


def test_a_client_that_sends_its_body_slowly_holds_no_turn_to_run(tmp_path: Path) -> None:
    """Two turns (one thread): five slow bodies in flight, and a quick request still runs at once."""
    with ApiServer(tmp_path, api_threads="1", body_timeout_seconds="20") as api, api.client() as http:
        held = [stalled_submit(api) for _ in range(5)]
        try:
            time.sleep(0.5)
            started = time.monotonic()
            assert http.get("/jobs").status_code == 200
            assert http.get("/me").status_code == 200
            assert time.monotonic() - started < 2
        finally:
            for s in held:
                s.close()


def test_a_request_answered_before_its_body_is_read_has_its_connection_closed(tmp_path: Path) -> None:
    """A 401 to a 1 GB body: the rest of the body, trickling in, must not hold the connection open."""
    with ApiServer(tmp_path) as api:
        s = send_head(api.port, "POST", "/jobs", {"Content-Length": "1000000000", "Content-Type": "application/json"})
        assert status_of(s) == 401
        started = time.monotonic()
        s.settimeout(0.25)
        with contextlib.suppress(OSError):  # reset or closed: either way, gone
            while time.monotonic() - started < 6:  # past the 5 s keep-alive deadline that each byte puts off
                s.sendall(b"x")
                try:
                    if s.recv(65536) == b"":
                        break
                except TimeoutError:
                    continue
        assert time.monotonic() - started < 3
        s.close()


def test_a_public_body_that_trickles_in_is_a_408_once_the_body_timeout_is_up(tmp_path: Path) -> None:
    """A byte every 0.2 s never stalls for the timeout; the whole body must still arrive within it."""
    with ApiServer(tmp_path, body_timeout_seconds="1") as api:
        s = stalled_submit(api)
        started = time.monotonic()
        s.settimeout(0.2)
        code = None
        with contextlib.suppress(OSError):
            while code is None and time.monotonic() - started < 5:
                s.sendall(b" ")
                with contextlib.suppress(TimeoutError):
                    code = status_of(s)
        assert code == 408
        assert time.monotonic() - started < 3
        s.close()


def test_an_answer_before_the_body_is_read_tells_the_client_to_open_a_new_connection(tmp_path: Path) -> None:
    """Else a client reuses the connection the service is about to close, and its next request fails."""
    with ApiServer(tmp_path) as api, httpx.Client(base_url=api.url) as http:
        refused = http.post("/jobs", content=b"{" * 100_000, headers={"Content-Type": "application/json"})
        assert refused.status_code == 401 and refused.headers["connection"] == "close"
        for _ in range(3):  # the next requests on this client: new connections, all answered
            assert http.get("/healthz").status_code == 200
        kept = http.get("/healthz")
        assert kept.headers.get("connection") != "close"  # a request with no body keeps its connection
