"""GET /jobs/{id}/metrics: series, summaries, filters, downsampling; points reported by the worker protocol."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import post_points, start
from tests.conftest import pretrain_body


def series_of(client: TestClient, job_id: int, **params: Any) -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}/metrics", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_metrics_document_has_series_and_summaries(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    before = time.time()
    losses = [2.0, 1.5, 0.7, 0.9, 1.1]
    accuracies = [0.5, 0.8, 0.75]
    points = [{"name": "train_loss", "step": 10 * (i + 1), "epoch": i, "value": v} for i, v in enumerate(losses)]
    points += [{"name": "val_accuracy", "step": 10 * (i + 1), "epoch": i, "value": v} for i, v in enumerate(accuracies)]
    points.append({"name": "lr", "step": 0, "value": 0.1, "time": 1_700_000_000.5})
    r = post_points(client, job_id, token, points)
    assert r.status_code == 200
    assert r.json() == {"accepted": 9}

    doc = series_of(client, job_id)

    assert doc["job_id"] == job_id
    assert set(doc["series"]) == {"train_loss", "val_accuracy", "lr"}
    loss = doc["series"]["train_loss"]
    assert [p["step"] for p in loss] == [10, 20, 30, 40, 50]
    assert [p["value"] for p in loss] == losses
    assert [p["epoch"] for p in loss] == [0, 1, 2, 3, 4]
    assert all(set(p) == {"step", "epoch", "value", "time"} for p in loss)
    assert all(before - 1 <= p["time"] <= time.time() + 1 for p in loss)  # stamped on arrival
    assert doc["series"]["lr"] == [{"step": 0, "epoch": None, "value": 0.1, "time": 1_700_000_000.5}]
    assert doc["summary"]["train_loss"] == {"last": 1.1, "best": 0.7, "best_step": 30}  # loss: lowest is best
    assert doc["summary"]["val_accuracy"] == {"last": 0.75, "best": 0.8, "best_step": 20}  # accuracy: highest


def test_metrics_of_a_job_without_points_are_empty(client: TestClient) -> None:
    job_id, _ = start(client, pretrain_body())

    assert series_of(client, job_id) == {"job_id": job_id, "series": {}, "summary": {}}


def test_metrics_filter_by_name_and_since_step(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    points = [{"name": n, "step": s, "value": float(s)} for n in ("train_loss", "val_loss") for s in range(10)]
    post_points(client, job_id, token, points)

    only_val = series_of(client, job_id, name="val_loss")
    assert set(only_val["series"]) == {"val_loss"}
    assert len(only_val["series"]["val_loss"]) == 10

    recent = series_of(client, job_id, since_step=6)
    assert {n: [p["step"] for p in s] for n, s in recent["series"].items()} == {
        "train_loss": [7, 8, 9],
        "val_loss": [7, 8, 9],
    }

    both = series_of(client, job_id, name="train_loss", since_step=8)
    assert [p["step"] for p in both["series"]["train_loss"]] == [9]
    assert series_of(client, job_id, name="nothing")["series"] == {}


def test_reporting_a_step_again_replaces_its_value(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    post_points(client, job_id, token, [{"name": "train_loss", "step": s, "value": 1.0} for s in range(3)])

    post_points(client, job_id, token, [{"name": "train_loss", "step": 1, "epoch": 7, "value": 0.25}])

    loss = series_of(client, job_id)["series"]["train_loss"]
    assert [(p["step"], p["value"], p["epoch"]) for p in loss] == [(0, 1.0, None), (1, 0.25, 7), (2, 1.0, None)]


def test_a_batch_reporting_one_step_twice_keeps_the_later_value(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())

    r = post_points(
        client, job_id, token, [{"name": "loss", "step": 5, "value": 1.0}, {"name": "loss", "step": 5, "value": 2.0}]
    )

    assert r.status_code == 200, r.text
    assert [(p["step"], p["value"]) for p in series_of(client, job_id)["series"]["loss"]] == [(5, 2.0)]


def noisy_series(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    values = [math.exp(-i / n) + rng.uniform(-0.05, 0.05) for i in range(n)]
    values[n // 3] = 9.0  # a spike up
    values[2 * n // 3] = -4.0  # a spike down
    return values


def test_downsampling_keeps_first_last_min_and_max_within_max_points(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    job_id, token = start(client, pretrain_body())
    values = noisy_series(1000)
    post_points(client, job_id, token, [{"name": "train_loss", "step": s, "value": v} for s, v in enumerate(values)])
    post_points(client, job_id, token, [{"name": "val_accuracy", "step": s, "value": -v} for s, v in enumerate(values)])

    for max_points in [4, 5, 40, 101, 500]:
        with subtests.test(max_points=max_points):
            doc = series_of(client, job_id, max_points=max_points)
            for name, sign in [("train_loss", 1), ("val_accuracy", -1)]:
                kept = doc["series"][name]
                steps = [p["step"] for p in kept]
                assert 0 < len(kept) <= max_points
                assert steps == sorted(set(steps))
                assert (steps[0], steps[-1]) == (0, 999)
                assert {9.0 * sign, -4.0 * sign} <= {p["value"] for p in kept}
                assert all(p["value"] == sign * values[p["step"]] for p in kept)  # points are kept, not averaged
            assert doc["summary"]["train_loss"] == {"last": values[-1], "best": -4.0, "best_step": 666}
            assert doc["summary"]["val_accuracy"] == {"last": -values[-1], "best": 4.0, "best_step": 666}


def test_downsampling_leaves_short_series_alone(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    post_points(client, job_id, token, [{"name": "loss", "step": s, "value": float(s)} for s in range(10)])

    assert len(series_of(client, job_id, max_points=10)["series"]["loss"]) == 10


def test_a_job_with_100000_points_answers_and_downsamples(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    for start_step in range(0, 100_000, 1000):
        batch = [
            {"name": "train_loss", "step": s, "epoch": s // 10_000, "value": 1.0 / (1 + s)}
            for s in range(start_step, start_step + 1000)
        ]
        assert post_points(client, job_id, token, batch).status_code == 200

    small = series_of(client, job_id, max_points=500)

    kept = small["series"]["train_loss"]
    assert len(kept) <= 500
    assert (kept[0]["step"], kept[-1]["step"]) == (0, 99_999)
    assert small["summary"]["train_loss"] == {"last": 1.0 / 100_000, "best": 1.0 / 100_000, "best_step": 99_999}
    full = series_of(client, job_id)
    assert len(full["series"]["train_loss"]) == 100_000


def test_metrics_of_an_unknown_job_is_404(client: TestClient) -> None:
    r = client.get("/jobs/999/metrics")

    assert r.status_code == 404
    assert r.json() == {"detail": "job 999 not found"}


BAD_PARAMETERS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "max-points-3": ({"max_points": 3}, ["query", "max_points"]),
    "max-points-text": ({"max_points": "many"}, ["query", "max_points"]),
    "since-step-negative": ({"since_step": -1}, ["query", "since_step"]),
    "name-too-long": ({"name": "x" * 101}, ["query", "name"]),
}


def test_bad_metrics_parameters_are_422(client: TestClient, subtests: pytest.Subtests) -> None:
    job_id, _ = start(client, pretrain_body())

    for case, (params, loc) in BAD_PARAMETERS.items():
        with subtests.test(case):
            r = client.get(f"/jobs/{job_id}/metrics", params=params)
            assert r.status_code == 422
            assert loc in [e["loc"] for e in r.json()["detail"]]


def test_per_epoch_keeps_each_epochs_last_point_and_the_summary_of_every_point(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    values = {1: 0.9, 2: 0.5, 3: 0.8, 4: 0.4, 5: 0.3, 6: 0.35}  # two epochs of three steps
    points = [{"name": "train_loss", "step": s, "epoch": (s - 1) // 3 + 1, "value": v} for s, v in values.items()]
    points.append({"name": "lr", "step": 0, "value": 0.1})  # no epoch: kept as it is
    assert post_points(client, job_id, token, points).status_code == 200

    doc = series_of(client, job_id, per_epoch="true")

    assert [(p["step"], p["epoch"], p["value"]) for p in doc["series"]["train_loss"]] == [(3, 1, 0.8), (6, 2, 0.35)]
    assert [p["step"] for p in doc["series"]["lr"]] == [0]
    assert doc["summary"]["train_loss"] == {"last": 0.35, "best": 0.3, "best_step": 5}
    assert len(series_of(client, job_id)["series"]["train_loss"]) == 6
