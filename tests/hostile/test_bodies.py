"""Bodies are bounded before they are buffered, and a request without a valid token is refused before its body."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import start
from tests.conftest import TINY_JOB
from tests.hostile.conftest import MAX_UPLOAD_BYTES, Live

pytestmark = pytest.mark.slow
MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def answer_to_headers(live: Live, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send only a request's headers (declaring a body that never comes); the status and body of the answer."""
    lines = [f"{method} {path} HTTP/1.1", "Host: trainjobs", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection(("127.0.0.1", live.api.port), timeout=10) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < length_of(data):
            chunk = s.recv(65536)
            assert chunk, f"closed without an answer: {data!r}"
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def length_of(response: bytes) -> int:
    head = response.partition(b"\r\n\r\n")[0].lower()
    return next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length:")), 0)


ROUTES = [
    ("POST", "/jobs"),
    ("POST", "/worker/claim"),
    ("POST", "/auth/login"),
    ("PUT", "/worker/jobs/1/checkpoints/last"),
]


def test_a_huge_declared_body_without_a_token_is_refused_before_a_byte_of_it(live: Live) -> None:
    for method, path in ROUTES:
        if path == "/auth/login":
            continue  # open by design: its limit answers instead (next test)
        code, _ = answer_to_headers(
            live, method, path, {"Content-Length": str(200 * MB), "Content-Type": "application/json"}
        )
        assert code == 401, (path, code)
    code, _ = answer_to_headers(
        live, "POST", "/jobs", {"Content-Length": "10", "Authorization": "Bearer tj_wrong_token"}
    )
    assert code == 401


def test_a_huge_declared_body_with_a_token_is_a_413_before_a_byte_of_it(live: Live) -> None:
    auth = {"Authorization": f"Bearer {live.api.token}"}
    worker = live.api.worker_headers
    for method, path in ROUTES:
        headers = {**(worker if path.startswith("/worker/") else auth), "Content-Length": str(200 * 1024 * MB)}
        code, body = answer_to_headers(live, method, path, headers)
        assert code == 413, (path, code, body)
        assert b"larger than this route takes" in body


def hundreds_of_megabytes(total: int = 200 * MB) -> Iterator[bytes]:
    chunk = b"[" * MB
    for _ in range(total // MB):
        yield chunk


def test_a_streamed_body_with_no_length_is_cut_off_at_the_limit_and_costs_no_memory(live: Live) -> None:
    assert live.api.proc is not None
    before = rss_mb(live.api.proc.pid)
    token = {"Authorization": f"Bearer {live.api.token}", "Content-Type": "application/json"}
    for path, headers in [("/jobs", token), ("/worker/claim", live.api.worker_headers), ("/worker/claim", {})]:
        try:
            r = httpx.post(f"{live.api.url}{path}", content=hundreds_of_megabytes(), headers=headers, timeout=30)
        except httpx.HTTPError:
            continue  # closed while we were still sending: refused all the same (memory checked below)
        assert r.status_code in (401, 413), (path, r.status_code, r.text[:200])
    grown = rss_mb(live.api.proc.pid) - before
    assert grown < 50, f"the API grew by {grown:.0f} MB taking 600 MB of refused bodies"
    live.assert_up()


def test_a_checkpoint_larger_than_the_upload_limit_is_a_413_and_leaves_no_file(live: Live) -> None:
    job_id, lease = start(live.http, TINY_JOB)
    headers = {
        "X-Lease-Token": lease,
        "X-Checkpoint-Sha256": "0" * 64,
        "X-Checkpoint-Epoch": "1",
        "X-Checkpoint-Step": "1",
    }
    r = live.http.put(
        f"/worker/jobs/{job_id}/checkpoints/last", content=hundreds_of_megabytes(2 * MAX_UPLOAD_BYTES), headers=headers
    )
    assert r.status_code == 413, r.text
    folder = live.api.artifacts_dir / "jobs" / str(job_id)
    assert not folder.exists() or list(folder.iterdir()) == []
    assert live.http.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []


def test_two_authorization_headers_are_refused(live: Live) -> None:
    headers = [("Authorization", f"Bearer {live.api.token}"), ("Authorization", "Bearer tj_other_token")]
    r = httpx.get(f"{live.api.url}/jobs", headers=headers)
    assert r.status_code == 422 and "one Authorization header" in r.text
    r = httpx.post(
        f"{live.api.url}/worker/claim", headers=[*live.api.worker_headers.items()] * 2, json={"worker_id": "w"}
    )
    assert r.status_code == 422
