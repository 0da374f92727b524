"""Series summed up as they arrive: the stored buckets are always what the points make, steps reported again
included, and the reads from them keep what a plot and a summary need."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from sqlalchemy import select

from app.core import jobs, metrics, queue, rollups
from app.core.db import Database
from app.core.jobs import EVERYONE
from app.core.models import MetricBucket
from app.core.protocol import MetricIn
from app.core.specs import parse_job_spec
from tests.conftest import pretrain_body, store_owner


def leased_job(db: Database) -> tuple[int, str]:
    with db.write() as s:
        job, _ = jobs.submit_job(s, EVERYONE, parse_job_spec(pretrain_body()), owner_id=store_owner(s))
    with db.write() as s:
        claimed = queue.claim_next_job(s, worker_id="w", device="cpu", lease_seconds=600)
        assert claimed is not None and claimed.lease_token is not None
        return job.id, claimed.lease_token


def report(db: Database, job_id: int, token: str, points: list[tuple[str, int, int, float]]) -> None:
    for start in range(0, len(points), 700):
        batch = [
            MetricIn(name=name, step=step, epoch=epoch, value=value, time=1.0 * step)
            for name, step, epoch, value in points[start : start + 700]
        ]
        with db.write() as s:
            metrics.record_metrics(s, job_id, token, batch)


def stored_buckets(db: Database, job_id: int, name: str) -> dict[tuple[int, int], rollups.Bucket]:
    with db.read() as s:
        rows = s.connection().execute(
            select(MetricBucket.__table__).where(MetricBucket.job_id == job_id, MetricBucket.name == name)
        )
        return {(r.level, r.bucket): rollups._bucket(r) for r in rows}


def noisy(rng: random.Random, steps: range, per_epoch: int) -> list[tuple[str, int, int, float]]:
    return [("train_loss", s, s // per_epoch + 1, rng.gauss(1.0 / (1 + s / 500), 0.05)) for s in steps]


def test_buckets_are_what_the_points_make_even_when_steps_come_again(db: Database) -> None:
    rng = random.Random(4)
    job_id, token = leased_job(db)
    first = noisy(rng, range(1, 6001, 3), per_epoch=900)
    first[700] = ("train_loss", first[700][1], first[700][2], 50.0)  # a spike
    report(db, job_id, token, first)
    again = noisy(rng, range(3001, 9001, 3), per_epoch=900)  # a resumed run: 3,001..6,000 reported again
    report(db, job_id, token, again)
    report(db, job_id, token, [("test_loss", e * 900, e, 1.0 / e) for e in range(1, 10)])
    with db.read() as s:
        raw = metrics.read_series(s, job_id, name="train_loss")["train_loss"]
    assert len(raw) == 3000 and max(p[2] for p in raw) == 50.0
    assert stored_buckets(db, job_id, "train_loss") == rollups.group(raw)

    with db.read() as s:
        whole = rollups.totals(s, job_id)["train_loss"]
        assert (whole.count, whole.first, whole.last) == (3000, raw[0], raw[-1])
        assert metrics.summary_of("train_loss", whole) == metrics.summarize("train_loss", raw)
        kept = rollups.downsampled(s, job_id, "train_loss", whole, 100)
        ends = [b.last for b in rollups.epoch_buckets(s, job_id, "train_loss")]
    assert len(kept) <= 100 and kept == sorted(set(kept))
    assert {raw[0], raw[-1], min(raw, key=lambda p: p[2]), max(raw, key=lambda p: p[2])} <= set(kept)
    assert ends == metrics.epoch_ends(raw)


def test_a_read_of_a_long_series_streams_the_same_document(db: Database) -> None:
    job_id, token = leased_job(db)
    rng = random.Random(5)
    report(db, job_id, token, noisy(rng, range(1, metrics.PAGE * 2 + 501), per_epoch=5000))
    report(db, job_id, token, [("lr", s, s // 5000 + 1, 0.1) for s in (5000, 10000, 15000, 20000)])
    with db.read() as s:
        wholes = metrics.whole_series(s, EVERYONE, job_id)
        whole = metrics.read_metrics(s, EVERYONE, job_id, max_points=None)
    streamed: dict[str, Any] = json.loads(b"".join(metrics.stream_document(db, job_id, wholes)))
    assert streamed == json.loads(json.dumps(whole))
    assert len(streamed["series"]["train_loss"]) == metrics.PAGE * 2 + 500


@pytest.mark.parametrize("max_points", [4, 40, 1000])
def test_a_downsampled_read_keeps_its_extremes_and_never_exceeds_its_budget(db: Database, max_points: int) -> None:
    job_id, token = leased_job(db)
    rng = random.Random(max_points)
    points = noisy(rng, range(50, 200_000, 50), per_epoch=20_000)  # logged every 50 steps
    points[1234] = ("train_loss", points[1234][1], points[1234][2], -3.0)
    report(db, job_id, token, points)
    with db.read() as s:
        document = metrics.read_metrics(s, EVERYONE, job_id, max_points=max_points)
    kept = document["series"]["train_loss"]
    assert 0 < len(kept) <= max_points
    assert min(p["value"] for p in kept) == -3.0
    assert kept[0]["step"] == 50 and kept[-1]["step"] == points[-1][1]
    assert document["summary"]["train_loss"]["best"] == -3.0
