"""The API as real processes: durability across SIGKILL, two servers on one PostgreSQL, stale schema refused."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from app.core.migrate import alembic_config, upgrade
from devtools.servers import ApiServer
from tests.conftest import TABLES, pretrain_body

pytestmark = pytest.mark.slow


def test_accepted_jobs_survive_sigkill_of_the_api(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trainjobs.db'}"
    upgrade(url)
    server = ApiServer(tmp_path, url).start()
    accepted: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter() -> None:
        with server.client(timeout=5) as http:
            while not stop.is_set():
                try:
                    r = http.post("/jobs", json=pretrain_body())
                except httpx.HTTPError:
                    return  # the server is gone: what was acknowledged is what counts
                if r.status_code == 201:
                    with lock:
                        accepted.append(r.json()["id"])

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    while len(accepted) < 100:
        threading.Event().wait(0.01)
    server.kill()  # SIGKILL mid-stream
    stop.set()
    for t in threads:
        t.join()

    with ApiServer(tmp_path, url) as again, again.client() as http:
        for job_id in accepted:
            r = http.get(f"/jobs/{job_id}")
            assert r.status_code == 200, job_id
            assert r.json()["status"] == "queued"


def test_two_api_processes_on_postgresql_never_hand_out_a_job_twice(postgres_url: str, tmp_path: Path) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()
    with ApiServer(tmp_path, postgres_url) as a, ApiServer(tmp_path, postgres_url) as b:
        with a.client() as http:
            for _ in range(120):
                assert http.post("/jobs", json=pretrain_body()).status_code == 201

        def claimer(n: int) -> list[int]:
            got = []
            with (a if n % 2 else b).client(timeout=10) as http:
                while True:
                    r = http.post("/worker/claim", json={"worker_id": f"w{n}", "device": "cpu"})
                    if r.status_code == 204:
                        return got
                    assert r.status_code == 200, r.text
                    got.append(r.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            claimed = [job for result in pool.map(claimer, range(8)) for job in result]
    counts = Counter(claimed)
    assert len(counts) == 120 and set(counts.values()) == {1}


def test_api_refuses_to_start_on_an_old_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.stamp(alembic_config(url), "base")
    env = {"TRAINJOBS_DATABASE_URL": url, "TRAINJOBS_PORT": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "trainjobs-api migrate" in proc.stderr
    migrate = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert migrate.returncode == 0, migrate.stderr


def test_a_burst_of_concurrent_worker_writes_all_succeed(tmp_path: Path) -> None:
    """More concurrent writes than the API's thread pool has threads: none fails, none hangs (SQLite)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(tmp_path, url) as api, api.client(timeout=60) as http:
        job_id = http.post("/jobs", json=pretrain_body()).json()["id"]
        token = http.post("/worker/claim", json={"worker_id": "w", "device": "cpu", "wait_seconds": 0}).json()[
            "lease_token"
        ]

        def writes(n: int) -> list[int]:
            codes = []
            with api.client(timeout=60) as own:
                for i in range(5):
                    if n % 4 == 0:
                        point = {"name": "loss", "step": n * 5 + i, "value": 1.0}
                        r = own.post(f"/worker/jobs/{job_id}/metrics", json={"lease_token": token, "points": [point]})
                    else:
                        r = own.post(f"/worker/jobs/{job_id}/heartbeat", json={"lease_token": token})
                    codes.append(r.status_code)
            return codes

        with ThreadPoolExecutor(max_workers=80) as pool:
            codes = [c for batch in pool.map(writes, range(80)) for c in batch]

        assert Counter(codes) == {200: 400}
        series = http.get(f"/jobs/{job_id}/metrics").json()["series"]["loss"]
        assert len(series) == 20 * 5
