"""The worker's HTTP client moving checkpoints through a real API process (uvicorn, httptools)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.migrate import upgrade
from tests.conftest import TINY_JOB
from tests.servers import ApiServer
from worker.client import ServiceUnavailable, WorkerClient


@pytest.fixture
def leased(tmp_path: Path) -> Iterator[tuple[str, int, str]]:
    """(API url, job id, lease token) of a job claimed by hand on a running API."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(url, tmp_path) as api:
        job_id = httpx.post(f"{api.url}/jobs", json=TINY_JOB).json()["id"]
        claim = {"worker_id": "test", "device": "cpu", "wait_seconds": 0}
        token = httpx.post(f"{api.url}/worker/claim", json=claim).json()["lease_token"]
        yield api.url, job_id, token


def test_a_checkpoint_goes_up_and_comes_back_byte_for_byte(tmp_path: Path, leased: tuple[str, int, str]) -> None:
    api_url, job_id, token = leased
    data = os.urandom(19 * 1024 * 1024 + 7)
    source = tmp_path / "last.pt"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    client = WorkerClient(api_url)
    try:
        client.upload_checkpoint(job_id, token, tag="last", fmt="pt", path=source, epoch=1, step=10, metric=None)
        dest = tmp_path / "back.pt"
        client.download(f"/worker/jobs/{job_id}/checkpoints/last?format=pt", dest, digest)
        assert dest.read_bytes() == data

        wrong = tmp_path / "wrong.pt"
        with pytest.raises(ServiceUnavailable, match="does not match"):
            client.download(f"/worker/jobs/{job_id}/checkpoints/last?format=pt", wrong, "0" * 64)
        assert not wrong.exists()
        assert not wrong.with_suffix(".pt.part").exists()
    finally:
        client.close()
