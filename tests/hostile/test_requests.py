"""Requests no client should send: paths that loop, jobs no machine could run, odd ids, every method on every path."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from tests.api.helpers import start
from tests.conftest import TINY_JOB, finetune_body, pretrain_body
from tests.hostile.conftest import Live

pytestmark = pytest.mark.slow


def imagefolder_job(path: str) -> dict[str, Any]:
    return finetune_body(
        dataset={"name": "imagefolder", "path": path, "image_size": 32}, model={"arch": "resnet18", "num_classes": 2}
    )


def test_a_path_through_a_symlink_loop_is_a_422(live: Live) -> None:
    data = live.api.root / "data"
    data.mkdir(exist_ok=True)
    os.symlink("self", data / "self")
    os.symlink("b", data / "a")
    os.symlink("a", data / "b")
    os.symlink("/", data / "root")
    for path in ["self", "self/sub", "a", "b/c/d", "root", "root/etc", "../..", "/etc", "./self/.."]:
        r = live.http.post("/jobs", json=imagefolder_job(path))
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"][-1] == "path", (path, r.text)
    live.assert_up()


def test_jobs_no_machine_could_run_are_refused_with_the_estimate_and_the_limit(live: Live) -> None:
    huge_image = {"name": "synthetic", "num_samples": 2_000_000, "image_shape": [4, 512, 512]}
    jobs = {
        "a 34-billion-parameter MLP": (
            pretrain_body(
                dataset={"name": "synthetic", "num_samples": 100, "image_shape": [3, 512, 512]},
                model={"arch": "mlp_autoencoder", "hidden": [22_000], "bottleneck": 64},
            ),
            "TRAINJOBS_MAX_PARAMS",
        ),
        "2 TB of synthetic images": (pretrain_body(dataset=huge_image), "TRAINJOBS_MAX_DATASET_BYTES"),
        "batch 65,536 at 512x512": (
            pretrain_body(
                dataset={"name": "synthetic", "num_samples": 100, "image_shape": [3, 512, 512]},
                model={"arch": "mlp_autoencoder", "hidden": [8], "bottleneck": 4},
                train={"batch_size": 65_536},
            ),
            "TRAINJOBS_MAX_DATASET_BYTES",
        ),
        "100,000 classes, 10,000 epochs, a point every step": (
            finetune_body(
                dataset={"name": "imagefolder", "path": "cats", "image_size": 32},
                model={"arch": "resnet18", "num_classes": 100_000},
                train={"epochs": 10_000, "batch_size": 1, "log_every_steps": 1},
            ),
            "TRAINJOBS_MAX_METRIC_POINTS_PER_JOB",
        ),
    }
    (live.api.root / "data" / "cats").mkdir(parents=True, exist_ok=True)
    for what, (body, setting) in jobs.items():
        r = live.http.post("/jobs", json=body)
        assert r.status_code == 422, (what, r.status_code, r.text)
        message = r.json()["detail"][0]["msg"]
        assert setting in message and "over the limit of" in message and "about" in message, (what, message)
    assert live.http.get("/jobs").json()["data"] == []


@pytest.mark.parametrize("job_id", ["1_0", "+1", "01", "-1", " 1", "1 ", "1.0", "1e1", "\u0661", "0x1", "9" * 30])
def test_an_id_that_is_not_plain_digits_names_no_job(live: Live, job_id: str) -> None:
    for path in [f"/jobs/{job_id}", f"/jobs/{job_id}/metrics", f"/jobs/{job_id}/checkpoints"]:
        r = live.http.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
    r = live.http.post(f"/worker/jobs/{job_id}/heartbeat", json={"lease_token": "x"})
    assert r.status_code in (404, 422)


def test_plain_ids_still_name_their_jobs(live: Live) -> None:
    job_id, _ = start(live.http, TINY_JOB)
    assert live.http.get(f"/jobs/{job_id}").json()["id"] == job_id
    assert live.http.get(f"/jobs/{job_id}0").status_code == 404


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
BODIES: list[bytes | None] = [None, b"", b"{}", b"[]", b"null", b'"x"', b"{bad json", b"\xff\xfe\x00", b"[" * 10_000]


def test_every_method_on_every_path_with_odd_bodies_never_answers_500(live: Live) -> None:
    job_id, _ = start(live.http, TINY_JOB)
    paths = [
        path.replace("{job_id}", str(job_id))
        .replace("{tag}", "last")
        .replace("{token_id}", "99999")
        .replace("{user_id}", "99999")
        for path in live.http.get("/openapi.json").json()["paths"]
    ]
    paths += ["/", "/nope", "/jobs/", "//jobs", "/jobs/%00", "/worker", "/worker/", "/docs/../jobs"]
    callers = {"admin": live.http, "nobody": httpx.Client(base_url=live.api.url, timeout=30)}
    codes: set[int] = set()
    for who, http in callers.items():
        for path in paths:
            for method in METHODS:
                for body in BODIES:
                    request = http.build_request(
                        method, path, content=body, headers={"Content-Type": "application/json"}
                    )
                    r = http.send(request, stream=True)  # an event stream's answer never ends: its status is the test
                    if r.headers.get("content-type", "").startswith("text/event-stream"):
                        r.close()
                    else:
                        r.read()
                    assert r.status_code < 500, (who, method, path, body and body[:20], r.status_code, r.text[:200])
                    codes.add(r.status_code)
    callers["nobody"].close()
    assert {401, 404, 405, 422} <= codes, codes
    live.assert_up()
