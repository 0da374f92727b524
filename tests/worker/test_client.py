"""The worker's HTTP client moving checkpoints through a real API process (uvicorn, httptools)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.migrate import upgrade
from app.core.protocol import ClaimedJob, MetricIn
from devtools.servers import WORKER_TOKEN, ApiServer
from tests.conftest import TINY_JOB
from worker.client import ServiceUnavailable, WorkerClient
from worker.messages import Metrics
from worker.process import Shutdown
from worker.runner import JobRun
from worker.settings import WorkerConfig, WorkerSettings


@pytest.fixture
def leased(tmp_path: Path) -> Iterator[tuple[ApiServer, int, str]]:
    """(the API, job id, lease token) of a job claimed by hand on a running API."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(tmp_path, url) as api:
        job_id = httpx.post(f"{api.url}/jobs", json=TINY_JOB, headers=api.headers).json()["id"]
        claim = {"worker_id": "test", "device": "cpu", "wait_seconds": 0}
        token = httpx.post(f"{api.url}/worker/claim", json=claim, headers=api.worker_headers).json()["lease_token"]
        yield api, job_id, token


def test_a_checkpoint_goes_up_and_comes_back_byte_for_byte(tmp_path: Path, leased: tuple[ApiServer, int, str]) -> None:
    api, job_id, token = leased
    data = os.urandom(19 * 1024 * 1024 + 7)
    source = tmp_path / "last.pt"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    client = WorkerClient(api.url, WORKER_TOKEN)
    try:
        client.upload_checkpoint(job_id, token, tag="last", fmt="pt", path=source, epoch=1, step=10, metric=None)
        dest = tmp_path / "back.pt"
        client.download(f"/worker/jobs/{job_id}/checkpoints/last?format=pt", dest, digest, token)
        assert dest.read_bytes() == data

        wrong = tmp_path / "wrong.pt"
        with pytest.raises(ServiceUnavailable, match="does not match"):
            client.download(f"/worker/jobs/{job_id}/checkpoints/last?format=pt", wrong, "0" * 64, token)
        assert not wrong.exists()
        assert not wrong.with_suffix(".pt.part").exists()
    finally:
        client.close()


def test_metrics_sent_by_the_client_are_stored(leased: tuple[ApiServer, int, str]) -> None:
    api, job_id, token = leased
    client = WorkerClient(api.url, WORKER_TOKEN)
    try:
        points = [MetricIn(name="train_loss", step=s, epoch=1, value=1 / s, time=1.7e9) for s in range(1, 1001)]
        client.send_metrics(job_id, token, points)
    finally:
        client.close()
    series = httpx.get(f"{api.url}/jobs/{job_id}/metrics", headers=api.headers).json()["series"]["train_loss"]
    assert [(p["step"], p["value"]) for p in series] == [(s, 1 / s) for s in range(1, 1001)]


def test_points_that_are_not_finite_are_dropped_before_sending(tmp_path: Path) -> None:
    """A NaN in one point must not lose the batch (the service refuses non-finite values) or crash the relay."""
    sent: list[MetricIn] = []

    class Recording:
        def send_metrics(self, job_id: int, token: str, points: list[MetricIn]) -> None:
            sent.extend(points)

    job = ClaimedJob(
        id=1,
        kind="pretrain",
        spec={},
        attempt=1,
        max_attempts=3,
        lease_token="t",
        lease_seconds=60,
        heartbeat_seconds=5,
        resume_checkpoint=None,
        init_checkpoint=None,
    )
    config = WorkerConfig.of(WorkerSettings(work_dir=tmp_path, _env_file=None), "w", "cpu")  # type: ignore[call-arg]
    run = JobRun(Recording(), job, config, Shutdown())  # type: ignore[arg-type]
    values = [0.5, float("nan"), float("inf"), 0.25]
    run._handle(Metrics([{"name": "loss", "step": i, "epoch": None, "value": v} for i, v in enumerate(values)], 1.7e9))
    run.relay.flush_metrics(force=True)
    assert [(p.step, p.value, p.time) for p in sent] == [(0, 0.5, 1.7e9), (3, 0.25, 1.7e9)]


def test_a_file_uploaded_as_best_is_not_sent_again_as_last(tmp_path: Path, leased: tuple[ApiServer, int, str]) -> None:
    api, job_id, token = leased
    source = tmp_path / "best.pt"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    client = WorkerClient(api.url, WORKER_TOKEN)
    stored: dict[str, str] = {}
    try:
        for tag in ("best", "last"):
            stored[tag] = client.upload_checkpoint(
                job_id, token, tag=tag, fmt="pt", path=source, epoch=1, step=5, metric=None, stored=stored
            )
        # The service lost its best file: the next same-content upload falls back to sending it.
        folder = tmp_path / "artifacts" / "jobs" / str(job_id)
        best, last = next(folder.glob("best-*.pt")), next(folder.glob("last-*.pt"))
        assert best.samefile(last)  # the service linked it: the second upload sent no body
        best.unlink()
        last.unlink()
        client.upload_checkpoint(
            job_id,
            token,
            tag="last",
            fmt="pt",
            path=source,
            epoch=2,
            step=9,
            metric=None,
            stored={"best": stored["best"]},
        )
    finally:
        client.close()
    assert (
        httpx.get(f"{api.url}/jobs/{job_id}/checkpoint", params={"tag": "last"}, headers=api.headers).content
        == source.read_bytes()
    )


def test_against_the_release_before_claims_describe_devices_without_their_state_and_heartbeats_fall_back() -> None:
    """That release refused unknown fields of a device (busy) and of a heartbeat (node, worker_id,
    capabilities): the worker goes on telling it what it can read, and keeps the rest."""
    import json

    from worker.capabilities import describe

    sent: list[tuple[str, dict[str, object]]] = []

    def older_service(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append((request.url.path, body))
        beat = request.url.path.endswith("/heartbeat")
        devices = (body.get("capabilities") or {}).get("devices") or []
        extra = "worker_id" if beat and "worker_id" in body else None
        extra = "capabilities.devices.0.busy" if any("busy" in d for d in devices) else extra
        if extra is not None:
            return httpx.Response(422, json={"detail": [{"loc": ["body", *extra.split(".")], "msg": "Extra inputs"}]})
        return httpx.Response(200, json={"cancel_requested": False}) if beat else httpx.Response(204)

    client = WorkerClient("http://service")
    client.http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(older_service))
    assert client.claim("w", "cpu", 0, describe("cpu")) is None
    assert client.claim("w", "cpu", 0, describe("cpu")) is None
    claims = [body for path, body in sent if path == "/worker/claim"]
    assert "busy" in claims[0]["capabilities"]["devices"][0]  # type: ignore[index]
    assert claims[1]["capabilities"]["archs"] and "busy" not in claims[1]["capabilities"]["devices"][0]  # type: ignore[index]
    assert len(claims) == 3 and "busy" not in claims[2]["capabilities"]["devices"][0]  # type: ignore[index]
    assert client.heartbeat(1, "t", None, node=None, worker_id="w", capabilities=describe("cpu")) is False
    assert client.heartbeat(1, "t", None, worker_id="w", capabilities=describe("cpu")) is False
    beats = [body for path, body in sent if path.endswith("/heartbeat")]
    assert [sorted(b) for b in beats] == [
        ["capabilities", "lease_token", "worker_id"],
        ["lease_token"],
        ["lease_token"],
    ]
