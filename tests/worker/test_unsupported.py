"""A worker older than its service: a job it cannot read or run fails with the reason, never a traceback."""

from __future__ import annotations

import json
import os
from multiprocessing import Event, Pipe
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.protocol import UnsupportedJob
from app.core.specs import parse_job_spec
from app.core.states import JobStatus
from tests.conftest import TINY_JOB
from worker import child
from worker.agent import Agent
from worker.client import WorkerClient
from worker.messages import Failed, JobPayload
from worker.settings import WorkerConfig, WorkerSettings
from worker.training.data import LOADERS


def claim_answer(**changes: Any) -> dict[str, Any]:
    return {
        "id": 7,
        "kind": "pretrain",
        "spec": TINY_JOB,
        "attempt": 1,
        "max_attempts": 3,
        "lease_token": "lease-7",
        "lease_seconds": 60,
        "heartbeat_seconds": 5,
        "resume_checkpoint": None,
        "init_checkpoint": None,
        **changes,
    }


def client_answering(body: dict[str, Any]) -> WorkerClient:
    client = WorkerClient("http://service")
    client.http = httpx.Client(
        base_url="http://service", transport=httpx.MockTransport(lambda _request: httpx.Response(200, json=body))
    )
    return client


def test_a_claim_of_a_kind_this_worker_does_not_know_names_the_job_and_its_lease() -> None:
    client = client_answering(claim_answer(kind="gan"))
    with pytest.raises(UnsupportedJob, match=r"^this worker cannot run job 7 \(upgrade it.*kind") as caught:
        client.claim("w", "cpu", 0)
    assert (caught.value.job_id, caught.value.lease_token) == (7, "lease-7")


def test_the_agent_fails_such_a_job_with_the_reason_and_goes_on(tmp_path: Path) -> None:
    finished: list[tuple[int, str, JobStatus, str | None]] = []

    class Service:
        claims = 0
        http = httpx.Client(base_url="http://service")

        def claim(self, *_args: Any) -> None:
            self.claims += 1
            if self.claims == 1:
                raise UnsupportedJob(7, "lease-7", "kind: Input should be 'pretrain' or 'finetune'")

        def finish(self, job_id: int, token: str, status: JobStatus, *, error: str | None = None) -> None:
            finished.append((job_id, token, status, error))

    settings = WorkerSettings(work_dir=tmp_path, prestart=False, _env_file=None)  # type: ignore[call-arg]
    agent = Agent(Service(), WorkerConfig.of(settings, "w", "cpu"), once=True)  # type: ignore[arg-type]
    assert agent.run() == 0
    assert finished == [
        (
            7,
            "lease-7",
            JobStatus.FAILED,
            "this worker cannot run job 7 (upgrade it to the service's version): kind: Input should be 'pretrain' or 'finetune'",
        )
    ]


def test_a_name_the_spec_allows_but_no_registry_serves_fails_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(LOADERS._entries, "synthetic")
    receive, send = Pipe(duplex=False)
    payload = JobPayload(parse_job_spec(json.loads(json.dumps(TINY_JOB))), "cpu", tmp_path / "data", tmp_path / "work")
    child.train(payload, send, Event(), os.getppid())
    failed = receive.recv()
    assert isinstance(failed, Failed) and failed.traceback == ""
    assert failed.reason == (
        "this worker cannot run this job (upgrade it to the service's version): "
        "unknown dataset 'synthetic'; known: cifar10, cifar100, digits, fashion_mnist, imagefolder, mnist"
    )
