"""GET /metrics of a real service with two API processes, after real jobs trained by a real worker; and
its logs, and the worker's, as JSON lines (TRAINJOBS_LOG_FORMAT=json).

Each API process counts into its own file under PROMETHEUS_MULTIPROC_DIR; a scrape of either process
must give the sums of both, so every scrape (each on a new connection, whichever process takes it) reads
the same counts, and they are the counts of what happened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.servers import WORKER_TOKEN, ApiServer, WorkerProcess, wait_until
from tests.conftest import TINY_JOB
from tests.scrapes import Samples, samples_of, value

pytestmark = pytest.mark.slow
METRICS_TOKEN = "scraper-" + "s" * 32


def scrape(api: ApiServer) -> Samples:
    r = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return samples_of(r.text)


def counters(samples: Samples) -> Samples:
    """The counts of what the jobs did (a scrape's own request and the gauges set aside)."""
    return {k: v for k, v in samples.items() if "http_request" not in k[0] and k[0].endswith("_total")}


def test_two_api_processes_count_real_jobs_once_each(tmp_path: Path) -> None:
    shared = tmp_path / "prometheus"
    api = ApiServer(
        tmp_path,
        args=("--workers", "2"),
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared)},
        log_level="info",
        access_log=True,
        metrics_token=METRICS_TOKEN,
        log_format="json",
    )
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"stale")  # a file an earlier run left: emptied at start
    with api, api.client(timeout=30) as http:
        pre = http.post("/jobs", json={**TINY_JOB, "train": {"epochs": 2, "batch_size": 16}}).json()["id"]
        fine_spec = {
            "kind": "finetune",
            "dataset": {"name": "digits", "labels_per_class": 5},
            "model": {"arch": "mlp", "hidden": [16], "bottleneck": 4, "init": {"from": "job", "job_id": pre}},
            "train": {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.01},
        }
        submitted = http.post("/jobs", json=fine_spec)
        assert submitted.status_code == 201, submitted.text
        fine = submitted.json()["id"]
        missing = http.post("/jobs", json={**TINY_JOB, "dataset": {"name": "cifar10"}}).json()["id"]
        never = http.post("/jobs", json={**TINY_JOB, "priority": -5}).json()["id"]
        assert http.post(f"/jobs/{never}/cancel").status_code == 200
        for _ in range(10):  # new connections: the two processes take them as they come
            assert httpx.get(f"{api.url}/healthz").status_code == 200
        worker = WorkerProcess(api.url, tmp_path, "w1", log_format="json")
        try:

            def ended() -> list[dict[str, Any]] | None:
                jobs = [http.get(f"/jobs/{i}").json() for i in (pre, fine, missing)]
                return jobs if all(j["status"] not in ("queued", "running") for j in jobs) else None

            jobs = wait_until(ended, 180, "the jobs to end")
        finally:
            worker.stop()  # SIGTERM: it ends as it should, its last lines logged
        first = scrape(api)
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded", "failed"], [j["error"] for j in jobs]
        points = sum(
            len(series)
            for job_id in (pre, fine, missing)
            for series in http.get(f"/jobs/{job_id}/metrics").json()["series"].values()
        )
        base = next(c for c in http.get(f"/jobs/{pre}/checkpoints").json()["data"] if c["tag"] == "best")
        scrapes = [scrape(api) for _ in range(6)]

    assert len({p.name.rsplit("_", 1)[-1] for p in shared.glob("*.db")}) == 2  # a file of counts per process
    assert all(counters(s) == counters(first) for s in scrapes)  # whichever process answers: the sums
    assert value(first, "trainjobs_jobs_finished_total", status="succeeded", error_class="none") == 2
    assert value(first, "trainjobs_jobs_finished_total", status="failed", error_class="user") == 1
    assert value(first, "trainjobs_jobs_finished_total", status="cancelled", error_class="none") == 1
    assert value(first, "trainjobs_claims_total", outcome="job") == 3
    assert value(first, "trainjobs_metric_points_ingested_total") == points > 0
    assert value(first, "trainjobs_log_lines_ingested_total") > 0
    assert value(first, "trainjobs_checkpoint_bytes_total", direction="in") > base["size"]  # best and last
    assert (
        value(first, "trainjobs_checkpoint_bytes_total", direction="out") == base["size"]
    )  # the finetune starts from best
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    assert value(first, "trainjobs_http_request_duration_seconds_count", **healthz) >= 10
    assert value(first, "trainjobs_jobs", status="succeeded", kind="finetune") == 1
    assert value(first, "trainjobs_jobs", status="cancelled", kind="pretrain") == 1
    assert value(first, "trainjobs_workers_live") == 1
    assert_json_logs(api.log.read_text(), worker.log.read_text(), pre)


def assert_json_logs(api_log: str, worker_log: str, job_id: int) -> None:
    """TRAINJOBS_LOG_FORMAT=json: every line of either log one JSON object, naming the job where one applies."""
    api_lines = [json.loads(line) for line in api_log.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in api_lines)
    assert any("made admin" in line["message"] for line in api_lines)
    finished = [line for line in api_lines if line.get("path") == f"/worker/jobs/{job_id}/finish"]
    assert finished and finished[0]["method"] == "POST" and finished[0]["status"] == 200
    assert not any("tj_" in line["message"] or WORKER_TOKEN in str(line) for line in api_lines)  # no secrets
    worker_lines = [json.loads(line) for line in worker_log.splitlines()]
    assert all(line["worker"] == "w1" for line in worker_lines)
    about = [line for line in worker_lines if line.get("job_id") == job_id]
    assert any("succeeded" in line["message"] for line in about)
    assert all(line["attempt"] == 1 for line in about)
