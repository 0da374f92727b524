"""Metric series: writes from workers (fenced upserts) and reads for users (summaries, downsampling).

Series can hold 100,000s of points, so rows are written through Core on the table and read as
plain tuples (no ORM objects), and downsampled per bucket keeping first, last, min and max: a
plot of the result shows the same spikes as the full series.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import rollups
from app.core.db import Database
from app.core.jobs import Scope, get_job
from app.core.leases import check_lease, next_metric_batch
from app.core.models import MetricPoint, utcnow
from app.core.protocol import MetricIn

Point = rollups.Point


def higher_is_better(name: str) -> bool:
    """Accuracy-like series are maximised; losses and everything else minimised."""
    return "acc" in name or name.endswith(("_score", "_f1", "samples_per_second"))


def record_metrics(
    session: Session, job_id: int, lease_token: str, points: Sequence[MetricIn], *, now: datetime | None = None
) -> int:
    """Upsert metric points: a (job, name, step) reported again replaces the value. Fenced. Each point is
    also summed into its series' buckets (rollups.py), in the same transaction."""
    now = now or utcnow()
    if not points:
        check_lease(session, job_id, lease_token, now=now)
        return 0
    batch = next_metric_batch(session, job_id, lease_token, now=now)
    received = now.timestamp()
    latest: dict[tuple[str, int], Point] = {}  # a step twice in one batch: its last value, as the upsert keeps
    for p in points:
        latest[p.name, p.step] = (p.step, p.epoch, p.value, received if p.time is None else p.time)
    series: dict[str, list[Point]] = {}
    for (name, _), point in latest.items():
        series.setdefault(name, []).append(point)
    replaced = _stored_already(session, job_id, series)
    rows = [(job_id, name, step, epoch, value, time, batch) for (name, _), (step, epoch, value, time) in latest.items()]
    # The driver's own executemany, with the statement written out: SQLAlchemy's per-row parameter handling
    # cost more than the insert itself (1,000 points: 4 ms of 7).
    connection = session.connection()
    connection.exec_driver_sql(_UPSERT[connection.dialect.paramstyle], rows)  # type: ignore[arg-type]
    rollups.record(session, job_id, series, replaced)
    return len(points)


_UPSERT = {
    style: (
        f"INSERT INTO metric_points (job_id, name, step, epoch, value, time, batch) VALUES ({', '.join([mark] * 7)}) "
        "ON CONFLICT (job_id, name, step) DO UPDATE SET epoch = excluded.epoch, value = excluded.value, "
        "time = excluded.time, batch = excluded.batch"
    )
    for style, mark in (("qmark", "?"), ("format", "%s"), ("pyformat", "%s"))
}


def _stored_already(session: Session, job_id: int, series: dict[str, list[Point]]) -> set[str]:
    """The series of the batch some of whose steps are stored already (a resumed job reports them again)."""
    steps = {name: {p[0] for p in pts} for name, pts in series.items()}
    low, high = min(min(s) for s in steps.values()), max(max(s) for s in steps.values())
    found = session.connection().execute(
        select(MetricPoint.name, MetricPoint.step).where(
            MetricPoint.job_id == job_id,
            MetricPoint.name.in_(list(series)),
            MetricPoint.step >= low,
            MetricPoint.step <= high,
        )
    )
    return {name for name, step in found if step in steps[name]}


def read_series(
    session: Session, job_id: int, *, name: str | None = None, since_step: int | None = None, limit: int | None = None
) -> dict[str, list[Point]]:
    stmt = select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value, MetricPoint.time).where(
        MetricPoint.job_id == job_id
    )
    if name is not None:
        stmt = stmt.where(MetricPoint.name == name)
    if since_step is not None:
        stmt = stmt.where(MetricPoint.step > since_step)
    stmt = stmt.order_by(MetricPoint.name, MetricPoint.step).limit(limit)
    series: dict[str, list[Point]] = {}
    # Through the connection, not the ORM session: plain tuples, without the ORM's row processing
    # (a third of the time of a 1,000,000-point read).
    for n, step, epoch, value, time in session.connection().execute(stmt):
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


def epoch_ends(points: list[Point]) -> list[Point]:
    """Each epoch's last point, in step order (points without an epoch are kept as they are)."""
    return [p for i, p in enumerate(points) if p[1] is None or i + 1 == len(points) or points[i + 1][1] != p[1]]


def metrics_document(
    job_id: int,
    series: dict[str, list[Point]],
    *,
    max_points: int | None = None,
    per_epoch: bool = False,
) -> dict[str, Any]:
    """The body of GET /jobs/{id}/metrics; summaries are over every point, before downsampling."""
    out_series: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for name, points in series.items():
        summary[name] = summarize(name, points)
        kept = epoch_ends(points) if per_epoch else points
        kept = downsample(kept, max_points) if max_points else kept
        out_series[name] = [{"step": s, "epoch": e, "value": v, "time": t} for s, e, v, t in kept]
    return {"job_id": job_id, "series": out_series, "summary": summary}


def whole_series(session: Session, scope: Scope, job_id: int, name: str | None = None) -> dict[str, rollups.Bucket]:
    """Each series of a job the caller can see, summed up (its bucket at the coarsest level)."""
    get_job(session, scope, job_id)
    return rollups.totals(session, job_id, name)


def read_metrics(
    session: Session,
    scope: Scope,
    job_id: int,
    *,
    name: str | None = None,
    since_step: int | None = None,
    max_points: int | None = None,
    per_epoch: bool = False,
    wholes: dict[str, rollups.Bucket] | None = None,
) -> dict[str, Any]:
    """GET /jobs/{id}/metrics for a caller who can see the job. A long series is read from its buckets
    (rollups.py): downsampled, per epoch and its summary without reading its points. ``wholes``: the series
    summed up (``whole_series``), when the caller read them already."""
    get_job(session, scope, job_id)
    if since_step is not None:  # a tail, for a live chart: its points as they are, summed up over them
        series = read_series(session, job_id, name=name, since_step=since_step)
        return metrics_document(job_id, series, max_points=max_points, per_epoch=per_epoch)
    out_series: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, Any]] = {}
    if wholes is None:
        wholes = rollups.totals(session, job_id, name)
    for series_name, whole in sorted(wholes.items()):
        summary[series_name] = summary_of(series_name, whole)
        kept = _kept(session, job_id, series_name, whole, max_points, per_epoch)
        out_series[series_name] = [{"step": s, "epoch": e, "value": v, "time": t} for s, e, v, t in kept]
    return {"job_id": job_id, "series": out_series, "summary": summary}


def _kept(
    session: Session, job_id: int, name: str, whole: rollups.Bucket, max_points: int | None, per_epoch: bool
) -> list[Point]:
    """The points of a series a read returns: each epoch's last, or at most ``max_points``, or all."""
    if per_epoch:
        epochs = rollups.epoch_buckets(session, job_id, name)
        if sum(b.count for b in epochs) == whole.count:  # every point has an epoch
            ends = [b.last for b in epochs]
            return downsample(ends, max_points) if max_points else ends
    elif max_points is not None and whole.count > max_points:
        return rollups.downsampled(session, job_id, name, whole, max_points)
    points = read_series(session, job_id, name=name).get(name, [])
    kept = epoch_ends(points) if per_epoch else points
    return downsample(kept, max_points) if max_points else kept


def summary_of(name: str, whole: rollups.Bucket) -> dict[str, Any]:
    """``summarize`` of a whole series from its bucket: last value, best value and its step (first on ties)."""
    best = whole.high if higher_is_better(name) else whole.low
    return {"last": whole.last[2], "best": best[2], "best_step": best[0]}


PAGE = 10_000
"""Points a streamed read takes from the database at a time, each page in a transaction of its own."""


def stream_document(db: Database, job_id: int, wholes: dict[str, rollups.Bucket]) -> Iterator[bytes]:
    """GET /jobs/{id}/metrics of every point, as the same JSON document, streamed: a page of points at a time,
    so that a series of millions costs the API a page's memory (the summaries come from ``wholes``)."""
    yield f'{{"job_id":{job_id},"series":{{'.encode()
    for i, name in enumerate(sorted(wholes)):
        yield (("," if i else "") + json.dumps(name) + ":[").encode()
        after, first = -1, True
        while True:
            with db.read() as session:
                page = read_series(session, job_id, name=name, since_step=after, limit=PAGE).get(name, [])
            if not page:
                break
            text = ",".join(  # what json.dumps writes, written out: values are finite floats and ints
                f'{{"step":{s},"epoch":{"null" if e is None else e},"value":{v!r},"time":{t!r}}}' for s, e, v, t in page
            )
            yield (("" if first else ",") + text).encode()
            after, first = page[-1][0], False
        yield b"]"
    summary = {name: summary_of(name, whole) for name, whole in sorted(wholes.items())}
    yield ('},"summary":' + json.dumps(summary, separators=(",", ":")) + "}").encode()
