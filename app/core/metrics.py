"""Reading metric series: filtering, summaries and downsampling that keeps the shape.

Series can hold 100,000s of points, so rows are read as plain tuples (no ORM
objects) and downsampled per bucket keeping first, last, min and max: a plot
of the result shows the same spikes as the full series.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.models import MetricPoint

Point = tuple[int, int | None, float, float]  # step, epoch, value, time


def higher_is_better(name: str) -> bool:
    """Accuracy-like series are maximised; losses and everything else minimised."""
    return "acc" in name or name.endswith(("_score", "_f1", "samples_per_second"))


def read_series(
    session: Session, job_id: int, *, name: str | None = None, since_step: int | None = None
) -> dict[str, list[Point]]:
    stmt = select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value, MetricPoint.time).where(
        MetricPoint.job_id == job_id
    )
    if name is not None:
        stmt = stmt.where(MetricPoint.name == name)
    if since_step is not None:
        stmt = stmt.where(MetricPoint.step > since_step)
    stmt = stmt.order_by(MetricPoint.name, MetricPoint.step)
    series: dict[str, list[Point]] = {}
    for n, step, epoch, value, time in session.execute(stmt):
        series.setdefault(n, []).append((step, epoch, value, time))
    return series


def summarize(name: str, points: list[Point]) -> dict[str, Any]:
    """Last value, best value and the step of the best (first one on ties)."""
    if higher_is_better(name):
        best = max(points, key=lambda p: (p[2], -p[0]))
    else:
        best = min(points, key=lambda p: (p[2], p[0]))
    return {"last": points[-1][2], "best": best[2], "best_step": best[0]}


def downsample(points: list[Point], max_points: int) -> list[Point]:
    """At most ``max_points`` points: per bucket keep the first, last, min and max, in step order."""
    if len(points) <= max_points:
        return points
    buckets = max(1, max_points // 4)
    size = len(points) / buckets
    out: list[Point] = []
    for b in range(buckets):
        chunk = points[int(b * size) : int((b + 1) * size)]
        if not chunk:
            continue
        lo = min(range(len(chunk)), key=lambda i: chunk[i][2])
        hi = max(range(len(chunk)), key=lambda i: chunk[i][2])
        for i in sorted({0, lo, hi, len(chunk) - 1}):
            out.append(chunk[i])
    return out


def metrics_document(
    job_id: int,
    series: dict[str, list[Point]],
    *,
    max_points: int | None = None,
) -> dict[str, Any]:
    """The body of GET /jobs/{id}/metrics; summaries are over every point, before downsampling."""
    out_series: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for name, points in series.items():
        summary[name] = summarize(name, points)
        kept = downsample(points, max_points) if max_points else points
        out_series[name] = [{"step": s, "epoch": e, "value": v, "time": t} for s, e, v, t in kept]
    return {"job_id": job_id, "series": out_series, "summary": summary}
