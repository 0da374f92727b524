"""Benchmark 8: the dashboard with 10,000 jobs and a job of 1,000,000 metric points (quick: 1,000 and 100,000).

The jobs and points are written straight into the service's SQLite database (as if a long history
had run), then measured over HTTP as the page asks for them:

- ``GET /ui/``: the jobs page (50 rows of 10,000, newest first), a page deep in the history
  (``?cursor=``) and a name filter that reads every row;
- ``GET /jobs/{id}/metrics?max_points=1000`` (what the job page asks for, sized to a chart) and
  with ``per_epoch=true`` (its epoch means) on the 1,000,000-point series: time and bytes;
- where Chromium is installed, in a real browser: from navigation to the jobs table shown, and to
  the job page's charts drawn.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select, update

from app.core import rollups
from app.core.db import Database
from app.core.models import Job, MetricPoint
from devtools.servers import ApiServer

from .metrics import JOB
from .servers import submit
from .stats import Result

PAGE_ROUNDS = 20


def seed(db_url: str, template_id: int, jobs: int, points: int) -> int:
    """``jobs`` finished copies of job ``template_id``, and a job holding one series of ``points`` points."""
    db = Database.from_url(db_url)
    try:
        with db.write() as session:
            row = session.scalars(select(Job).where(Job.id == template_id)).one()
            base = {
                "owner_id": row.owner_id,
                "kind": row.kind,
                "spec": row.spec,
                "status": "succeeded",
                "attempt": 1,
                "result": {"primary_metric": "test_loss", "test_loss": 0.1, "best_test_loss": 0.1},
                "progress": {"epoch": 10, "epochs": 10, "step": 1000},
                "created_at": row.created_at,
                "updated_at": row.updated_at,
                "started_at": row.created_at,
                "finished_at": row.updated_at,
                "lease_owner": "bench-worker",
                "worker_device": "cpu",
            }
            for first in range(0, jobs, 5000):
                session.execute(
                    insert(Job), [{**base, "name": f"run-{i:05d}"} for i in range(first, min(jobs, first + 5000))]
                )
            long_id = session.scalars(select(Job.id).order_by(Job.id.desc()).limit(1)).one()
            epoch_steps = max(1, points // 100)
            series = [
                (s, (s - 1) // epoch_steps + 1, 1.0 / math.sqrt(s) + 0.01 * math.sin(s / 50), 1.7e9 + s / 100)
                for s in range(1, points + 1)
            ]
            for first in range(0, points, 50_000):
                rows = [
                    {"job_id": long_id, "name": "train_loss", "step": s, "epoch": e, "value": v, "time": t, "batch": 1}
                    for s, e, v, t in series[first : first + 50_000]
                ]
                session.execute(insert(MetricPoint), rows)
            # ... and summed into its buckets, as record_metrics does with every batch
            buckets = rollups.group(series)
            rollups.write(session, long_id, {("train_loss", level, b): agg for (level, b), agg in buckets.items()})
            session.execute(update(Job).where(Job.id == long_id).values(metric_batches=1))
        return long_id
    finally:
        db.dispose()


def timed(http: httpx.Client, path: str, rounds: int) -> tuple[list[float], int]:
    """Milliseconds of each GET (body read), and the body's size."""
    samples, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        r = http.get(path)
        r.raise_for_status()
        size = len(r.content)
        samples.append((time.perf_counter() - started) * 1000)
    return samples, size


def in_browser(api: ApiServer, job_id: int, rounds: int) -> dict[str, list[float]] | None:
    """Milliseconds from navigation to the table shown, and to the job page's charts drawn; None without Chromium."""
    executable = shutil.which("chromium")
    if executable is None:
        return None
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"table": [], "charts": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(base_url=api.url, viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto("/ui/login")
        page.click("#login-form details summary")
        page.fill("input[name=token]", api.token)
        page.click("#login-form button[type=submit]")
        page.wait_for_url("**/ui/")
        for _ in range(rounds):
            started = time.perf_counter()
            page.goto("/ui/")
            page.wait_for_selector("#jobs tbody tr")
            times["table"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            page.goto(f"/ui/jobs/{job_id}")
            while not page.evaluate("Boolean(window.tj && window.tj.charts && window.tj.charts.train_loss)"):
                time.sleep(0.005)
            times["charts"].append((time.perf_counter() - started) * 1000)
        browser.close()
    return times


def run(*, quick: bool) -> Result:
    jobs, points = (1_000, 100_000) if quick else (10_000, 1_000_000)
    rounds = 3 if quick else PAGE_ROUNDS
    result = Result(
        "dashboard",
        f"Dashboard: {jobs:,} jobs in the table, a job of {points:,} metric points",
        {"jobs": jobs, "points": points, "rounds": rounds, "database": "sqlite"},
    )
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp, ApiServer(Path(tmp) / "api") as api:
        with api.client(timeout=120) as http:
            template = submit(http, {**JOB, "name": "template"})["id"]
            long_id = seed(api.env["TRAINJOBS_DATABASE_URL"], template, jobs, points)
            middle = long_id - jobs // 2
            pages: dict[str, Any] = {
                "GET /ui/ (the newest 50)": "/ui/",
                f"GET /ui/?cursor= ({jobs // 2:,} jobs back)": f"/ui/?cursor={middle}",
                "GET /ui/?name= (a filter over every name)": "/ui/?name=run-0042",
                "GET /jobs/{id}/metrics?max_points=1000": f"/jobs/{long_id}/metrics?max_points=1000",
                "GET /jobs/{id}/metrics?per_epoch=true&max_points=1000": (
                    f"/jobs/{long_id}/metrics?per_epoch=true&max_points=1000"
                ),
            }
            timed(http, "/ui/", 2)  # warm: templates compiled, connections open
            for label, path in pages.items():
                samples, size = timed(http, path, rounds if "metrics" not in path else max(2, rounds // 4))
                result.add(f"{label}: time", "ms", samples)
                result.add(f"{label}: size", "kB", [size / 1000])
        browser = in_browser(api, long_id, 3 if quick else 5)
    if browser is not None:
        result.add("browser: navigation to the jobs table shown", "ms", browser["table"])
        result.add(f"browser: navigation to the charts of {points:,} points drawn", "ms", browser["charts"])
    return result
