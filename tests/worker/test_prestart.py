"""The next job's process is started while the worker idles, so a job starts without waiting for imports."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.migrate import upgrade
from devtools.servers import ApiServer, WorkerProcess, pid_alive, wait_until
from tests.conftest import TINY_JOB

pytestmark = pytest.mark.slow

AHEAD = re.compile(r"started the next job's process ahead: pid (\d+)")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(tmp_path, url) as server:
        yield server


def ahead(worker: WorkerProcess, count: int = 1) -> list[int]:
    """Pids of the first ``count`` processes the worker started ahead, once it has started that many."""

    def pids() -> list[int] | None:
        found = [int(p) for p in AHEAD.findall(worker.text())]
        return found[:count] if len(found) >= count else None

    found = wait_until(pids, 60, f"{count} process(es) started ahead")
    assert isinstance(found, list)
    return found


def run_job(api: ApiServer) -> int:
    job_id = int(httpx.post(f"{api.url}/jobs", json=TINY_JOB, headers=api.headers).json()["id"])
    wait_until(
        lambda: httpx.get(f"{api.url}/jobs/{job_id}", headers=api.headers).json()["status"] == "succeeded",
        120,
        "the job",
    )
    return job_id


def test_a_job_runs_in_the_process_started_ahead_and_the_next_one_is_started(api: ApiServer, tmp_path: Path) -> None:
    worker = WorkerProcess(api.url, tmp_path, "ahead")
    try:
        [first] = ahead(worker)
        assert pid_alive(first)  # waiting for a job, imports done or under way

        job_id = run_job(api)

        assert worker.child_of(job_id) == first
        assert f"started child pid {first} (started ahead)" in worker.text()
        second = ahead(worker, 2)[1]
        assert second != first
        wait_until(lambda: not pid_alive(first), 10, "the finished job's process to end")
        assert pid_alive(second)

        worker.signal(signal.SIGTERM)  # idle: exits at once, and takes the waiting process with it
        assert worker.wait(60) == 0
        wait_until(lambda: not pid_alive(second), 10, "the waiting process to end with the worker")
    finally:
        worker.kill()


def test_a_worker_killed_while_idle_leaves_no_waiting_process_behind(api: ApiServer, tmp_path: Path) -> None:
    worker = WorkerProcess(api.url, tmp_path, "killed")
    try:
        [waiting] = ahead(worker)
        worker.signal(signal.SIGKILL)
        worker.wait(30)
        wait_until(lambda: not pid_alive(waiting), 10, "the waiting process to die with its worker")
    finally:
        worker.kill()


def test_if_the_waiting_process_died_the_job_gets_a_new_one(api: ApiServer, tmp_path: Path) -> None:
    worker = WorkerProcess(api.url, tmp_path, "robust")
    try:
        [waiting] = ahead(worker)
        os.kill(waiting, signal.SIGKILL)  # the OOM killer, say, while the worker idles
        wait_until(lambda: not pid_alive(waiting), 10, "the waiting process to die")

        job_id = run_job(api)

        assert worker.child_of(job_id) != waiting
        assert "the process started ahead for it is gone; starting another" in worker.text()
    finally:
        worker.kill()


def test_with_no_prestart_no_process_waits_and_jobs_still_run(api: ApiServer, tmp_path: Path) -> None:
    worker = WorkerProcess(api.url, tmp_path, "plain", "--no-prestart")
    try:
        job_id = run_job(api)
        child = worker.child_of(job_id)
        assert "(started ahead)" not in worker.text()
        wait_until(lambda: not pid_alive(child), 10, "the job's process to end")
        assert AHEAD.findall(worker.text()) == []
    finally:
        worker.kill()
