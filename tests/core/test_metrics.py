"""Downsampling keeps what a plot needs; summaries know which way is better."""

from __future__ import annotations

import random

from app.core.metrics import Point, downsample, higher_is_better, metrics_document, summarize


def series(values: list[float]) -> list[Point]:
    return [(i + 1, 1, v, 0.0) for i, v in enumerate(values)]


def test_downsample_keeps_first_last_min_max_and_order() -> None:
    rng = random.Random(0)
    values = [rng.random() for _ in range(100_000)]
    values[31_337] = -5.0
    values[77_777] = 9.0
    points = series(values)
    kept = downsample(points, 500)
    assert len(kept) <= 500
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert min(p[2] for p in kept) == -5.0 and max(p[2] for p in kept) == 9.0
    steps = [p[0] for p in kept]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_short_series_are_untouched() -> None:
    points = series([3.0, 2.0, 1.0])
    assert downsample(points, 10) == points


def test_best_is_max_for_accuracy_and_min_for_loss() -> None:
    assert higher_is_better("test_accuracy") and not higher_is_better("test_loss")
    acc = series([0.5, 0.9, 0.8])
    assert summarize("test_accuracy", acc) == {"last": 0.8, "best": 0.9, "best_step": 2}
    loss = series([2.0, 1.0, 1.5])
    assert summarize("train_loss", loss) == {"last": 1.5, "best": 1.0, "best_step": 2}


def test_summary_is_over_all_points_even_when_downsampled() -> None:
    values = [1.0] * 1000
    values[500] = 0.001
    doc = metrics_document(7, {"train_loss": series(values)}, max_points=8)
    assert doc["summary"]["train_loss"]["best_step"] == 501
    assert len(doc["series"]["train_loss"]) <= 8
    assert doc["job_id"] == 7
