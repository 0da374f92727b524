"""Steps the API tests take through the HTTP API: submit, claim, report, upload, finish."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from httpx import Client, Response

from app.core.config import Settings
from app.core.db import Database
from app.main import create_app
from tests.authed import AuthedClient


@contextmanager
def client_with(settings: Settings, db: Database, tokens: dict[str, str], **changes: Any) -> Iterator[AuthedClient]:
    """A client (acting for alice) of an app whose settings differ from the fixture's in ``changes``."""
    with AuthedClient(create_app(settings.model_copy(update=changes), db), tokens["alice"]) as c:
        yield c


def submit(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def claim(client: Client, worker_id: str = "w1", wait_seconds: float = 0.0) -> dict[str, Any] | None:
    """The claimed job, or None on 204."""
    r = client.post("/worker/claim", json={"worker_id": worker_id, "device": "cpu", "wait_seconds": wait_seconds})
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    claimed: dict[str, Any] = r.json()
    return claimed


def claim_job(client: Client, job_id: int, worker_id: str = "w1") -> str:
    """Claim and check that the claim is ``job_id``; returns its lease token."""
    claimed = claim(client, worker_id)
    assert claimed is not None, f"expected to claim job {job_id}, got 204"
    assert claimed["id"] == job_id
    token: str = claimed["lease_token"]
    return token


def start(client: Client, body: dict[str, Any]) -> tuple[int, str]:
    """Submit a job into an otherwise idle queue and claim it: (job id, lease token)."""
    job_id: int = submit(client, body)["id"]
    return job_id, claim_job(client, job_id)


def finish(
    client: Client,
    job_id: int,
    token: str,
    status: str = "succeeded",
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> Response:
    body = {"lease_token": token, "status": status, "error": error, "result": result}
    r: Response = client.post(f"/worker/jobs/{job_id}/finish", json=body)
    return r


def run_job(client: Client, body: dict[str, Any], status: str = "succeeded") -> int:
    """Submit, claim and finish a job in an otherwise idle queue; returns its id."""
    job_id, token = start(client, body)
    error = None if status == "succeeded" else f"ended {status} by the test"
    r = finish(client, job_id, token, status, error=error, result={"test_accuracy": 0.9})
    assert r.status_code == 200, r.text
    return job_id


def heartbeat(client: Client, job_id: int, token: str, progress: dict[str, int] | None = None) -> Response:
    r: Response = client.post(f"/worker/jobs/{job_id}/heartbeat", json={"lease_token": token, "progress": progress})
    return r


def post_points(client: Client, job_id: int, token: str, points: list[dict[str, Any]]) -> Response:
    r: Response = client.post(f"/worker/jobs/{job_id}/metrics", json={"lease_token": token, "points": points})
    return r


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_checkpoint(
    client: Client,
    job_id: int,
    token: str,
    data: Any,
    tag: str = "last",
    *,
    fmt: str = "pt",
    epoch: int = 1,
    step: int = 10,
    digest: str | None = None,
    metric: str | None = None,
) -> Response:
    """Upload ``data`` (bytes, or an iterator of chunks: sent chunked, without Content-Length)."""
    headers = {
        "X-Lease-Token": token,
        "X-Checkpoint-Sha256": digest or sha256(data),
        "X-Checkpoint-Epoch": str(epoch),
        "X-Checkpoint-Step": str(step),
    }
    if metric is not None:
        headers["X-Checkpoint-Metric"] = metric
    r: Response = client.put(f"/worker/jobs/{job_id}/checkpoints/{tag}?format={fmt}", content=data, headers=headers)
    return r


def files_of_job(artifacts_dir: Path, job_id: int) -> list[str]:
    """Names of every file (temporary ones included) in the job's artifacts folder."""
    folder = artifacts_dir / "jobs" / str(job_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_invalid(r: Response, loc: list[Any], *mentions: str) -> None:
    """A 422 whose detail has an error at ``loc`` whose message mentions each of ``mentions``."""
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    at_loc = [e for e in errors if e["loc"] == loc]
    assert at_loc, f"no error at {loc}: {errors}"
    for word in mentions:
        assert any(word in e["msg"] for e in at_loc), f"no error at {loc} mentions {word!r}: {at_loc}"
