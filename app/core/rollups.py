"""Metric series summed up as they arrive, so that reading a long one costs what its picture costs.

Every point also lands in buckets (``metric_buckets``) at several widths of steps (2^6, 2^10, ... 2^30:
each level 16 times the one below) and in its epoch's bucket (level -1, keyed by epoch). A bucket keeps its
count and four of its points: the first, the last, the lowest and the highest. A read of a long series
with ``max_points`` reads the finest level with at most 4 x max_points buckets and merges them into
max_points / 4 groups (first, last, min and max of each: a plot shows the same spikes as the whole
series); the summary (last, best) is the coarsest level's, a few rows; ``per_epoch`` is the epoch level's
last points. None of it reads the series' points.

Written with each batch of points in the same transaction (``record``): the batch's own buckets are
merged into the stored ones, a handful of rows. A step reported again (a resumed job reports the steps
after its checkpoint again) may change a bucket's min or max in a way a merge cannot undo: those buckets
are computed again from the points (the finest level) and from the level below (the others).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.orm import Session

from app.core.models import MetricBucket, MetricPoint

SHIFTS = (6, 10, 14, 18, 22, 26, 30)
"""Level i buckets hold the steps that agree above bit SHIFTS[i]."""
EPOCHS = -1
"""The level of epoch buckets: bucket = the points' epoch."""
LEVELS = (*range(len(SHIFTS)), EPOCHS)

Point = tuple[int, int | None, float, float]  # step, epoch, value, time


@dataclass
class Bucket:
    """A bucket's count and its first, last, lowest and highest points (ties: the earlier step)."""

    count: int
    first: Point
    last: Point
    low: Point
    high: Point

    @classmethod
    def of(cls, point: Point) -> Bucket:
        return cls(1, point, point, point, point)

    def add(self, other: Bucket) -> None:
        self.count += other.count
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.low = min(self.low, other.low, key=_lowest)
        self.high = max(self.high, other.high, key=_highest)

    def points(self) -> list[Point]:
        """Its kept points in step order, each once."""
        return sorted({self.first, self.last, self.low, self.high})


def key_of(level: int, point: Point) -> int | None:
    """The point's bucket at ``level`` (None: a point without an epoch has no epoch bucket)."""
    return point[1] if level == EPOCHS else point[0] >> SHIFTS[level]


def group(points: Iterable[Point], levels: Sequence[int] = LEVELS) -> dict[tuple[int, int], Bucket]:
    """(level, bucket) -> the bucket of ``points`` at each of ``levels``: the finest level and the epochs from the
    points (in runs of one bucket), each coarser level from the one below."""
    ordered = sorted(points)
    found: dict[tuple[int, int], Bucket] = {}
    finest = _runs(ordered, lambda p: p[0] >> SHIFTS[0])
    if EPOCHS in levels:
        found.update(
            ((EPOCHS, k), b) for k, b in _runs([p for p in ordered if p[1] is not None], lambda p: p[1]).items()
        )
    below = finest
    for level in range(len(SHIFTS)):
        if level > 0:
            bits = SHIFTS[level] - SHIFTS[level - 1]
            above: dict[int, Bucket] = {}
            for key, b in below.items():
                if key >> bits in above:
                    above[key >> bits].add(b)
                else:
                    above[key >> bits] = Bucket(b.count, b.first, b.last, b.low, b.high)
            below = above
        if level in levels:
            found.update(((level, k), b) for k, b in below.items())
    return found


def _runs(ordered: list[Point], key: Any) -> dict[int, Bucket]:
    """The buckets of points in step order, each a run of one ``key`` (a key in two runs: both, added)."""
    found: dict[int, Bucket] = {}
    start = 0
    while start < len(ordered):
        k = key(ordered[start])
        end = start + 1
        while end < len(ordered) and key(ordered[end]) == k:
            end += 1
        run = ordered[start:end]
        b = Bucket(len(run), run[0], run[-1], min(run, key=_lowest), max(run, key=_highest))
        if k in found:
            found[k].add(b)
        else:
            found[k] = b
        start = end
    return found


def _lowest(p: Point) -> tuple[float, int]:
    return p[2], p[0]


def _highest(p: Point) -> tuple[float, int]:
    return p[2], -p[0]


# --- stored rows ------------------------------------------------------------------


def _row(job_id: int, name: str, level: int, bucket: int, b: Bucket) -> dict[str, Any]:
    row: dict[str, Any] = {"job_id": job_id, "name": name, "level": level, "bucket": bucket, "count": b.count}
    for which, point in (("first", b.first), ("last", b.last), ("low", b.low), ("high", b.high)):
        for part, value in zip(("step", "epoch", "value", "time"), point, strict=True):
            row[f"{which}_{part}"] = value
    return row


def _bucket(row: Any) -> Bucket:
    def point(which: str) -> Point:
        return (
            getattr(row, f"{which}_step"),
            getattr(row, f"{which}_epoch"),
            getattr(row, f"{which}_value"),
            getattr(row, f"{which}_time"),
        )

    return Bucket(row.count, point("first"), point("last"), point("low"), point("high"))


def _table() -> Table:
    table = MetricBucket.__table__
    assert isinstance(table, Table)
    return table


def stored(session: Session, job_id: int, keys: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int, int], Bucket]:
    """The stored buckets of (name, level, bucket) ``keys``."""
    table, keys = _table(), list(keys)
    found: dict[tuple[str, int, int], Bucket] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = session.connection().execute(
            select(table).where(
                table.c.job_id == job_id, tuple_(table.c.name, table.c.level, table.c.bucket).in_(chunk)
            )
        )
        found.update({(r.name, r.level, r.bucket): _bucket(r) for r in rows})
    return found


def write(session: Session, job_id: int, buckets: dict[tuple[str, int, int], Bucket]) -> None:
    """Store ``buckets`` as they are (replacing the stored ones of the same keys)."""
    if not buckets:
        return
    table = _table()
    keys = list(buckets)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        session.connection().execute(
            delete(table).where(
                table.c.job_id == job_id, tuple_(table.c.name, table.c.level, table.c.bucket).in_(chunk)
            )
        )
    session.connection().execute(table.insert(), [_row(job_id, *key, b) for key, b in buckets.items()])


def record(session: Session, job_id: int, points: dict[str, list[Point]], replaced: set[str]) -> None:
    """Sum a batch's points (by series name) into the job's buckets; ``replaced`` names series some of whose
    steps were stored before (their buckets are computed again, not merged)."""
    merged: dict[tuple[str, int, int], Bucket] = {}
    for name, series in points.items():
        if name in replaced:
            continue
        for (level, bucket), b in group(series).items():
            merged[name, level, bucket] = b
    for key, old in stored(session, job_id, merged).items():
        old.add(merged[key])
        merged[key] = old
    for name in replaced:
        merged.update(_recomputed(session, job_id, name, points[name]))
    write(session, job_id, merged)


def _recomputed(session: Session, job_id: int, name: str, series: list[Point]) -> dict[tuple[str, int, int], Bucket]:
    """The buckets the steps of ``series`` fall in, computed again: the finest level and the epochs from the
    stored points, each coarser level from the level below."""
    found: dict[tuple[str, int, int], Bucket] = {}
    epochs = stored(session, job_id, {(name, EPOCHS, p[1]) for p in series if p[1] is not None})
    for level in (0, EPOCHS):
        for bucket in {k for p in series if (k := key_of(level, p)) is not None}:
            if level == EPOCHS:  # an epoch's steps: from its stored ones to the batch's
                steps = [p[0] for p in series if p[1] == bucket]
                old = epochs.get((name, EPOCHS, bucket))
                low, high = (
                    min([*steps, *([old.first[0]] if old else [])]),
                    max([*steps, *([old.last[0]] if old else [])]),
                )
            else:
                low, high = bucket << SHIFTS[level], ((bucket + 1) << SHIFTS[level]) - 1
            points = _points(session, job_id, name, low, high, bucket if level == EPOCHS else None)
            for (_, key), agg in group(points, [level]).items():
                found[name, level, key] = agg
    for level in range(1, len(SHIFTS)):
        parents = {p[0] >> SHIFTS[level] for p in series}
        bits = SHIFTS[level] - SHIFTS[level - 1]
        children = _children(session, job_id, name, level - 1, parents, bits)
        for (_, below, child), agg in found.items():  # the level below as just computed, not as stored
            if below == level - 1:
                children.setdefault(child >> bits, {})[child] = agg
        for parent in parents:
            buckets = [children[parent][child] for child in sorted(children.get(parent, {}))]
            if buckets:
                total = Bucket(0, buckets[0].first, buckets[0].last, buckets[0].low, buckets[0].high)
                for agg in buckets:
                    total.add(agg)
                found[name, level, parent] = total
    return found


def _points(session: Session, job_id: int, name: str, low: int, high: int, epoch: int | None) -> list[Point]:
    """The stored points of a series from step ``low`` to ``high`` (of ``epoch`` alone, if given)."""
    c = MetricPoint
    where = [c.job_id == job_id, c.name == name, c.step >= low, c.step <= high]
    if epoch is not None:
        where.append(c.epoch == epoch)
    stmt = select(c.step, c.epoch, c.value, c.time).where(*where).order_by(c.step)
    return [(row.step, row.epoch, row.value, row.time) for row in session.connection().execute(stmt)]


def _children(
    session: Session, job_id: int, name: str, level: int, parents: set[int], bits: int
) -> dict[int, dict[int, Bucket]]:
    """The stored level ``level`` buckets under each of ``parents`` (the next level up): parent -> bucket -> it."""
    table = _table()
    found: dict[int, dict[int, Bucket]] = {}
    for parent in parents:
        rows = session.connection().execute(
            select(table).where(
                table.c.job_id == job_id,
                table.c.name == name,
                table.c.level == level,
                table.c.bucket >= parent << bits,
                table.c.bucket < (parent + 1) << bits,
            )
        )
        found[parent] = {row.bucket: _bucket(row) for row in rows}
    return found


# --- reads ------------------------------------------------------------------------------


def totals(session: Session, job_id: int, name: str | None = None) -> dict[str, Bucket]:
    """Each series' whole bucket (the coarsest level's, merged): its count, first, last, lowest, highest."""
    table = _table()
    stmt = select(table).where(table.c.job_id == job_id, table.c.level == len(SHIFTS) - 1)
    if name is not None:
        stmt = stmt.where(table.c.name == name)
    found: dict[str, Bucket] = {}
    for row in session.connection().execute(stmt.order_by(table.c.name, table.c.bucket)):
        if row.name in found:
            found[row.name].add(_bucket(row))
        else:
            found[row.name] = _bucket(row)
    return found


def downsampled(session: Session, job_id: int, name: str, whole: Bucket, max_points: int) -> list[Point]:
    """At most ``max_points`` points of a series: the first, last, min and max of max_points / 4 groups of its
    buckets, read at the finest level with at most 4 x max_points of them."""
    groups = max(1, max_points // 4)
    span = whole.last[0] - whole.first[0]
    level = next((i for i, shift in enumerate(SHIFTS) if span >> shift < 4 * max_points), len(SHIFTS) - 1)
    table = _table()
    rows = session.connection().execute(
        select(table)
        .where(table.c.job_id == job_id, table.c.name == name, table.c.level == level)
        .order_by(table.c.bucket)
    )
    first = whole.first[0] >> SHIFTS[level]
    width = ((whole.last[0] >> SHIFTS[level]) - first) / groups + 1e-9
    merged: dict[int, Bucket] = {}
    for row in rows:
        index = int((row.bucket - first) / width)
        if index in merged:
            merged[index].add(_bucket(row))
        else:
            merged[index] = _bucket(row)
    return [p for index in sorted(merged) for p in merged[index].points()]


def epoch_buckets(session: Session, job_id: int, name: str) -> list[Bucket]:
    """Each epoch's bucket of a series, in step order."""
    table = _table()
    rows = session.connection().execute(
        select(table)
        .where(table.c.job_id == job_id, table.c.name == name, table.c.level == EPOCHS)
        .order_by(table.c.last_step)
    )
    return [_bucket(r) for r in rows]
