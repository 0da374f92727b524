"""GET /metrics: who may read it, and what it counts after jobs run through the worker protocol.

The counters are the process's (Prometheus counters live as long as it does), so each test reads them
before and after and checks the difference; the gauges are the test's own database's state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.core import leases
from app.core.config import Settings
from app.core.db import Database
from app.core.models import utcnow
from tests.api.helpers import (
    claim,
    claim_job,
    client_with,
    finish,
    post_points,
    put_checkpoint,
    run_job,
    start,
    submit,
)
from tests.authed import AuthedClient
from tests.conftest import pretrain_body
from tests.scrapes import Samples, samples_of, value

METRICS_TOKEN = "m" * 32


def scrape(client: AuthedClient, token: str) -> Samples:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples_of(r.text)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metrics_need_an_admin_or_the_metrics_token(
    settings: Settings, db: Database, tokens: dict[str, str], client: AuthedClient
) -> None:
    with client.as_user(None):
        assert client.get("/metrics").status_code == 401
    r = client.get("/metrics")  # alice: a user, not an admin
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {tokens['root']}"}).status_code == 200
    wrong = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert wrong.status_code == 401  # no metrics token is set: it is no token at all
    with client_with(settings, db, tokens, metrics_token=SecretStr(METRICS_TOKEN)) as scraper:
        assert scraper.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
        assert scraper.get("/metrics", headers={"Authorization": f"Bearer {'x' * 32}"}).status_code == 401
        # The metrics token reads /metrics alone: not a job, not a worker's route.
        assert scraper.get("/jobs", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 401
        claimed = scraper.post(
            "/worker/claim", json={"worker_id": "w"}, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert claimed.status_code == 401


def test_a_short_metrics_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="TRAINJOBS_METRICS_TOKEN has 5 characters"):
        Settings(_env_file=None, metrics_token="short")  # type: ignore[call-arg]


def test_counts_after_jobs_run_through_the_worker_protocol(client: AuthedClient, tokens: dict[str, str]) -> None:
    admin = tokens["root"]
    before = scrape(client, admin)
    run_job(client, pretrain_body())
    run_job(client, pretrain_body(), status="cancelled")
    failed_id, lease = start(client, pretrain_body())
    points = [{"name": "train_loss", "step": s, "value": 1.0 / (s + 1), "epoch": 0} for s in range(7)]
    assert post_points(client, failed_id, lease, points).status_code == 200
    logged = client.post(
        f"/worker/jobs/{failed_id}/logs",
        json={
            "lease_token": lease,
            "lines": [{"seq": i, "stream": "stdout", "time": 1.7e9, "text": f"line {i}"} for i in range(3)],
        },
    )
    assert logged.status_code == 200, logged.text
    assert put_checkpoint(client, failed_id, lease, b"w" * 1000).status_code == 201
    downloaded = client.get(f"/jobs/{failed_id}/checkpoint", params={"tag": "last"})
    assert downloaded.status_code == 200 and len(downloaded.content) == 1000
    body = {"lease_token": lease, "status": "failed", "error": "CUDA out of memory", "error_class": "oom"}
    assert client.post(f"/worker/jobs/{failed_id}/finish", json=body).status_code == 200
    assert claim(client) is None
    queued = submit(client, pretrain_body())["id"]
    assert client.post(f"/jobs/{queued}/cancel").status_code == 200

    after = scrape(client, admin)
    assert grew(before, after, "trainjobs_claims_total", outcome="job") == 3
    assert grew(before, after, "trainjobs_claims_total", outcome="none") == 1
    assert grew(before, after, "trainjobs_claim_duration_seconds_count") == 4
    assert grew(before, after, "trainjobs_jobs_finished_total", status="succeeded", error_class="none") == 1
    assert grew(before, after, "trainjobs_jobs_finished_total", status="cancelled", error_class="none") == 2
    assert grew(before, after, "trainjobs_jobs_finished_total", status="failed", error_class="oom") == 1
    assert grew(before, after, "trainjobs_metric_points_ingested_total") == 7
    assert grew(before, after, "trainjobs_log_lines_ingested_total") == 3
    assert grew(before, after, "trainjobs_checkpoint_bytes_total", direction="in") == 1000
    assert grew(before, after, "trainjobs_checkpoint_bytes_total", direction="out") == 1000
    # Latency by the route's template (never a label per job), method and status:
    route = {"route": "/worker/jobs/{job_id}/finish", "method": "POST", "status": "200"}
    assert grew(before, after, "trainjobs_http_request_duration_seconds_count", **route) == 3
    assert not any("/jobs/1" in str(labels) for (_, labels) in after)
    # What the database holds now: this test's jobs alone.
    assert value(after, "trainjobs_jobs", status="succeeded", kind="pretrain") == 1
    assert value(after, "trainjobs_jobs", status="cancelled", kind="pretrain") == 2
    assert value(after, "trainjobs_jobs", status="failed", kind="pretrain") == 1
    assert value(after, "trainjobs_jobs", status="queued", kind="finetune") == 0
    assert value(after, "trainjobs_queue_depth") == 0
    assert value(after, "trainjobs_workers_live") == 1  # "w1", the helpers' worker


def test_queue_gauges_say_how_deep_and_how_old(client: AuthedClient, db: Database, tokens: dict[str, str]) -> None:
    ids = [submit(client, pretrain_body())["id"] for _ in range(3)]
    with db.write() as session:
        from app.core.models import Job

        session.get_one(Job, ids[0]).created_at = utcnow() - timedelta(minutes=10)
    after = scrape(client, tokens["root"])
    assert value(after, "trainjobs_queue_depth") == 3
    assert value(after, "trainjobs_jobs", status="queued", kind="pretrain") == 3
    assert 600 <= value(after, "trainjobs_oldest_queued_job_age_seconds") < 660
    assert value(after, "trainjobs_workers_live") == 0


def test_a_lease_expiry_counts_once_committed(client: AuthedClient, db: Database, tokens: dict[str, str]) -> None:
    first, _ = start(client, pretrain_body(max_attempts=2))
    before = scrape(client, tokens["root"])
    later = utcnow() + timedelta(hours=1)

    class Undone(Exception):
        pass

    with pytest.raises(Undone), db.write() as session:  # reaped, then rolled back: nothing happened
        assert leases.reap_expired_leases(session, now=later) == [(first, "queued")]
        raise Undone
    undone = scrape(client, tokens["root"])
    assert grew(before, undone, "trainjobs_lease_expiries_total", outcome="queued") == 0
    assert grew(before, undone, "trainjobs_requeues_total", reason="lease_expired") == 0
    with db.write() as session:
        assert leases.reap_expired_leases(session, now=later) == [(first, "queued")]
    after = scrape(client, tokens["root"])
    assert grew(before, after, "trainjobs_lease_expiries_total", outcome="queued") == 1
    assert grew(before, after, "trainjobs_requeues_total", reason="lease_expired") == 1
    claim_job(client, first)
    with db.write() as session:  # its last attempt's lease expires too: failed, an infra failure
        assert leases.reap_expired_leases(session, now=later + timedelta(hours=1)) == [(first, "failed")]
    final = scrape(client, tokens["root"])
    assert grew(after, final, "trainjobs_lease_expiries_total", outcome="failed") == 1
    assert grew(after, final, "trainjobs_jobs_finished_total", status="failed", error_class="infra") == 1


def test_finish_after_lease_loss_counts_nothing(client: AuthedClient, tokens: dict[str, str]) -> None:
    job_id, lease = start(client, pretrain_body())
    before = scrape(client, tokens["root"])
    assert finish(client, job_id, "not-the-lease").status_code == 409
    after = scrape(client, tokens["root"])
    assert grew(before, after, "trainjobs_jobs_finished_total", status="succeeded", error_class="none") == 0
    assert finish(client, job_id, lease).status_code == 200


def test_a_counters_folder_named_but_not_made_yet_is_made_not_a_500_on_every_request(tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet"
    code = (
        "from app.core import telemetry; from app.api.routes.operators import counters;"
        "from prometheus_client import generate_latest; telemetry.CLAIMS.labels('job').inc();"
        "print(generate_latest(counters()).decode())"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'trainjobs_claims_total{outcome="job"} 1.0' in done.stdout
    assert any(folder.glob("counter_*.db"))
