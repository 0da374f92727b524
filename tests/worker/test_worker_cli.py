"""The worker command: scripts' options, an unreachable service, a wrong token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.core.migrate import upgrade
from devtools.servers import WORKER_TOKEN, ApiServer, WorkerProcess, free_port, process_env, wait_until
from tests.conftest import TINY_JOB

pytestmark = pytest.mark.slow


def worker_command(api_url: str, tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "worker", "--api", api_url, "--device", "cpu", "--work-dir", str(tmp_path), *args]


def test_once_with_nothing_queued_exits_zero(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(tmp_path, url) as api:
        done = subprocess.run(
            worker_command(api.url, tmp_path, "--once", "--poll-seconds", "0.5"),
            capture_output=True,
            timeout=60,
            env=process_env(TRAINJOBS_WORKER_TOKEN=WORKER_TOKEN),
        )
    assert done.returncode == 0, done.stderr


def test_an_unreachable_service_is_logged_once_and_the_worker_carries_on(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    worker = WorkerProcess(f"http://127.0.0.1:{port}", tmp_path, "patient", "--max-jobs", "1")
    try:
        wait_until(lambda: "service unavailable" in worker.text(), 60, "the outage to be logged")
        wait_until(lambda: worker.proc.poll() is None and worker.text().count("retrying") >= 1, 5)
        with ApiServer(tmp_path, url, port=port) as api:
            # Several retries happen while the service is down; the log says so once.
            assert worker.text().count("service unavailable") == 1
            job_id = httpx.post(f"{api.url}/jobs", json=TINY_JOB, headers=api.headers).json()["id"]
            assert worker.wait(timeout=120) == 0
            assert httpx.get(f"{api.url}/jobs/{job_id}", headers=api.headers).json()["status"] == "succeeded"
        assert "service reachable again" in worker.text()
    finally:
        worker.kill()


def test_a_wrong_token_stops_the_worker_with_a_clear_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(tmp_path, url, worker_token="the-right-worker-token-0123456789") as api:
        done = subprocess.run(
            worker_command(api.url, tmp_path, "--token", "wrong"), capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert "worker token wrong, expired or revoked" in done.stderr
    assert "wrong" not in done.stderr.replace("worker token wrong", "")  # the token itself is not echoed
