"""``GET /metrics``: the service's counters and the database's state now, in Prometheus' text format.

For an admin's user token or ``TRAINJOBS_METRICS_TOKEN`` (a scraper's, good for this route alone).
The counters and latencies are app/core/telemetry.py's (every API process's, summed, when there are
several); the jobs by status, the queue and the workers are read from the database at each scrape.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from app.api.auth import METRICS_PATH, MetricsReader
from app.api.deps import DatabaseDep, SettingsDep
from app.core.models import utcnow
from app.core.telemetry import Snapshot

router = APIRouter(tags=["operators"])


def counters() -> CollectorRegistry:
    """This process's counters, or with several API processes everyone's (their files, summed)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


@router.get(
    METRICS_PATH,
    dependencies=[MetricsReader],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus' text format."},
        401: {"description": "No token, or a wrong one."},
        403: {"description": "A user token that is not an admin's."},
    },
)
def scrape(db: DatabaseDep, settings: SettingsDep) -> Response:
    """Counters since start-up (claims, lease expiries, requeues, jobs finished, points and log lines
    ingested, checkpoint bytes, request latency by route and status) and gauges read now (jobs by
    status and kind, queue depth, the oldest queued job's age, live workers, their free devices)."""
    with db.read() as session:
        now = Snapshot.read(session, settings.lease_seconds, utcnow())
    state = CollectorRegistry(auto_describe=False)
    state.register(now)
    return Response(generate_latest(counters()) + generate_latest(state), media_type=CONTENT_TYPE_LATEST)
