"""Many workers on one service, and two services on one PostgreSQL: every job runs exactly once."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.core.migrate import upgrade
from devtools.servers import ApiServer, WorkerProcess, wait_until
from tests.conftest import TABLES, TINY_JOB

pytestmark = pytest.mark.slow


def run_fleet(apis: list[ApiServer], tmp_path: Path, jobs: int, workers: int) -> tuple[list[WorkerProcess], list[dict]]:
    with apis[0].client(timeout=30) as http:
        ids = [http.post("/jobs", json={**TINY_JOB, "name": f"job-{i}"}).json()["id"] for i in range(jobs)]
    # forkserver: each job is still a process of its own, without paying for a torch import per job.
    options = ("--max-jobs", str(jobs), "--start-method", "forkserver")
    fleet = [WorkerProcess(apis[n % len(apis)].url, tmp_path, f"w{n}", *options) for n in range(workers)]
    try:
        with apis[-1].client(timeout=30) as http:

            def finished() -> list[dict] | None:
                page = http.get("/jobs", params={"limit": 500}).json()["data"]
                done = [j for j in page if j["status"] not in ("queued", "running")]
                return page if len(done) == jobs else None

            final = wait_until(finished, 600, f"{jobs} jobs to finish")
            assert isinstance(final, list) and sorted(j["id"] for j in final) == sorted(ids)
    finally:
        for w in fleet:
            w.kill()
    return fleet, final


def assert_each_ran_once(fleet: list[WorkerProcess], final: list[dict]) -> None:
    failed = {j["id"]: j["error"] for j in final if j["status"] != "succeeded"}
    assert failed == {}
    assert all(j["attempt"] == 1 for j in final)
    starts = Counter(job_id for w in fleet for job_id, _pid in w.children())
    assert set(starts) == {j["id"] for j in final}
    assert set(starts.values()) == {1}, "a job's training process was started more than once"
    logs = "\n".join(w.text() for w in fleet)
    assert not re.search(r"database is locked|deadlock|could not serialize", logs, re.IGNORECASE)


def test_four_workers_forty_jobs_on_sqlite(tmp_path: Path) -> None:
    # SQLite's one writer at a time; PostgreSQL's row locks under four workers: the two services below.
    url = f"sqlite:///{tmp_path / 'trainjobs.db'}"
    upgrade(url)
    with ApiServer(tmp_path, url, claim_poll_seconds="0.2") as api:
        fleet, final = run_fleet([api], tmp_path, jobs=40, workers=4)
    assert_each_ran_once(fleet, final)
    assert len({j["worker"] for j in final}) > 1  # the work was actually shared


@pytest.fixture
def two_apis_on_postgres(postgres_url: str, tmp_path: Path) -> Iterator[list[ApiServer]]:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()
    with ApiServer(tmp_path, postgres_url) as a, ApiServer(tmp_path, postgres_url) as b:
        yield [a, b]


def test_two_services_on_one_postgresql_with_four_workers(
    two_apis_on_postgres: list[ApiServer], tmp_path: Path
) -> None:
    fleet, final = run_fleet(two_apis_on_postgres, tmp_path, jobs=20, workers=4)
    assert_each_ran_once(fleet, final)


def test_three_workers_on_two_services_start_at_most_max_concurrent_of_a_sweeps_trials(
    two_apis_on_postgres: list[ApiServer], tmp_path: Path
) -> None:
    """The claim holds a sweep's max_concurrent across API processes: three workers, two services on one
    PostgreSQL, six trials of thirty short epochs each, two at a time; the third worker takes the job beside it."""
    sweep = {
        "base": {**TINY_JOB, "train": {"epochs": 30, "batch_size": 16}},
        "parameters": {"train.lr": {"values": [0.01, 0.001, 0.0001]}},
        "seeds": [0, 1],
        "max_concurrent": 2,
    }
    a, b = two_apis_on_postgres
    with a.client(timeout=30) as http:
        r = http.post("/sweeps", json=sweep)
        assert r.status_code == 201, r.text
        sweep_id = r.json()["id"]
        other = http.post("/jobs", json={**TINY_JOB, "name": "beside", "priority": -1}).json()["id"]
    options = ("--start-method", "forkserver")
    fleet = [WorkerProcess((a, b)[n % 2].url, tmp_path, f"w{n}", *options, poll_seconds=0.1) for n in range(3)]
    running_seen: list[int] = []
    try:
        with b.client(timeout=30) as http:

            def ended() -> bool:
                now = http.get(f"/sweeps/{sweep_id}").json()
                running_seen.append(now["counts"]["running"])
                return bool(now["status"] != "running")

            wait_until(ended, 300, "the sweep to end", interval=0.02)
            trials = http.get("/jobs", params={"sweep": sweep_id}).json()["data"]
            beside = http.get(f"/jobs/{other}").json()
    finally:
        for w in fleet:
            w.kill()
    assert all(t["status"] == "succeeded" and t["attempt"] == 1 for t in trials), trials
    assert beside["status"] == "succeeded"
    assert max(running_seen) == 2, running_seen  # two at a time, never three, with three workers asking
    assert len({t["worker"] for t in trials}) >= 2
