"""Requests racing each other end in a success or a 4xx, never a 500, and never leave a dangling reference."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.helpers import run_job
from tests.conftest import finetune_body, pretrain_body
from tests.hostile.conftest import Live

pytestmark = pytest.mark.slow
ROUNDS = 15


def test_deleting_a_pretrain_job_while_a_finetune_from_it_is_submitted(live: Live) -> None:
    outcomes = []
    with live.api.client(timeout=30) as a, live.api.client(timeout=30) as b, ThreadPoolExecutor(2) as pool:
        for _ in range(ROUNDS):
            base = run_job(live.http, pretrain_body())
            start = threading.Barrier(2)

            def delete(http: httpx.Client = a, base: int = base, start: threading.Barrier = start) -> httpx.Response:
                start.wait()
                return http.delete(f"/jobs/{base}")

            def submit(http: httpx.Client = b, base: int = base, start: threading.Barrier = start) -> httpx.Response:
                start.wait()
                return http.post("/jobs", json=finetune_body(base))

            deleted, submitted = (f.result() for f in [pool.submit(delete), pool.submit(submit)])
            outcomes.append((deleted.status_code, submitted.status_code))
            assert deleted.status_code in (204, 409), deleted.text
            assert submitted.status_code in (201, 409, 422), submitted.text
            if submitted.status_code == 201:
                assert deleted.status_code == 409, "a finetune was accepted from a job that was deleted"
                assert live.http.get(f"/jobs/{base}").status_code == 200
                assert submitted.json()["depends_on"] == base
                live.http.post(f"/jobs/{submitted.json()['id']}/cancel")
            else:
                assert deleted.status_code == 204, (deleted.text, submitted.text)
                assert live.http.get(f"/jobs/{base}").status_code == 404
    assert {o for o in outcomes} and all(o in {(409, 201), (204, 409), (204, 422)} for o in outcomes), outcomes


def test_cancel_delete_and_finish_of_one_job_at_once(live: Live) -> None:
    """A user cancels and deletes a running job while its worker finishes it: each request a success or a 4xx."""
    for _ in range(ROUNDS):
        job = live.http.post("/jobs", json=pretrain_body()).json()["id"]
        claimed = live.http.post("/worker/claim", json={"worker_id": "w", "device": "cpu"}).json()
        assert claimed["id"] == job
        finish: dict[str, Any] = {"lease_token": claimed["lease_token"], "status": "succeeded", "result": {"a": 1}}
        calls = [
            ("POST", f"/jobs/{job}/cancel", None),
            ("DELETE", f"/jobs/{job}", None),
            ("POST", f"/worker/jobs/{job}/finish", finish),
            ("GET", f"/jobs/{job}", None),
        ]
        start = threading.Barrier(len(calls))

        def call(method: str, path: str, body: Any, start: threading.Barrier = start) -> int:
            with live.api.client(timeout=30) as http:
                start.wait()
                return http.request(method, path, json=body).status_code

        with ThreadPoolExecutor(len(calls)) as pool:
            codes = list(pool.map(lambda c: call(*c), calls))
        assert all(c < 500 for c in codes), codes
        final = live.http.get(f"/jobs/{job}")
        assert final.status_code in (200, 404)
        if final.status_code == 200:
            assert final.json()["status"] in ("succeeded", "cancelled", "running"), final.json()
    live.assert_up()
