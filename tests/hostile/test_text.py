"""Text that is valid JSON but not valid Unicode (a lone surrogate, ``"\\ud800"``) in every field from outside.

Each is refused with a 422 that names the field, on the public API and the worker protocol, and
nothing of it is stored: the service answers everyone afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.helpers import start
from tests.conftest import TINY_JOB, finetune_body, pretrain_body
from tests.hostile.conftest import Live, dumps

pytestmark = pytest.mark.slow
SURROGATE = "\ud800"
Path = tuple[str | int, ...]


def variants(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """``value`` with one string (or one key) at a time made hostile: (where, the changed value)."""
    if isinstance(value, str):
        yield path, value + SURROGATE
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key + SURROGATE), {**{k: v for k, v in value.items() if k != key}, key + SURROGATE: item}
            for where, changed in variants(item, (*path, key)):
                yield where, {**value, key: changed}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for where, changed in variants(item, (*path, i)):
                yield where, [*value[:i], changed, *value[i + 1 :]]


def assert_refused_naming(r: Any, where: Path) -> None:
    """A 422 whose detail names the field: in an error's location, or (a key made unknown) its message."""
    assert r.status_code == 422, (where, r.status_code, r.text)
    field = next(str(part) for part in reversed(where) if isinstance(part, str))
    said = [" ".join(map(str, e["loc"])) + " " + e["msg"] for e in r.json()["detail"]]
    names = {field.encode("utf-8", "backslashreplace").decode(), field.removesuffix(SURROGATE)}
    assert any(name in text for text in said for name in names), (where, said)


def public_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    imagefolder = {"name": "imagefolder", "path": "cats", "image_size": 32}
    return [
        ("POST", "/jobs", pretrain_body(name="a job")),
        ("POST", "/jobs", finetune_body(dataset=imagefolder, model={"arch": "resnet18", "num_classes": 2})),
        ("POST", "/jobs", finetune_body(1)),
        ("POST", "/auth/login", {"username": "admin", "password": "not the password"}),
        ("POST", "/tokens", {"name": "laptop"}),
        ("POST", "/users", {"username": "carol", "password": "a long enough password"}),
    ]


def test_every_text_field_of_the_public_api_refuses_a_lone_surrogate(live: Live) -> None:
    before = live.http.get("/jobs").json()
    for method, path, body in public_bodies():
        for where, hostile in variants(body):
            assert_refused_naming(live.raw(method, path, dumps(hostile)), where)
    assert live.http.get("/jobs").json() == before
    assert [u["username"] for u in live.http.get("/users").json()["data"]] == ["admin"]
    live.assert_up()


def test_every_text_field_of_the_worker_protocol_refuses_a_lone_surrogate(live: Live) -> None:
    job_id, lease = start(live.http, TINY_JOB)
    jobs = f"/worker/jobs/{job_id}"
    bodies = [
        ("/worker/claim", {"worker_id": "w1", "device": "cpu", "wait_seconds": 0}),
        (f"{jobs}/heartbeat", {"lease_token": lease, "progress": {"epoch": 1, "step": 2}}),
        (f"{jobs}/metrics", {"lease_token": lease, "points": [{"name": "train_loss", "step": 1, "value": 0.5}]}),
        (f"{jobs}/finish", {"lease_token": lease, "status": "failed", "error": "it broke"}),
        (f"{jobs}/finish", {"lease_token": lease, "status": "succeeded", "result": {"acc": 0.5, "note": "ok"}}),
        (f"{jobs}/release", {"lease_token": lease}),
    ]
    for path, body in bodies:
        for where, hostile in variants(body):
            assert_refused_naming(live.raw("POST", path, dumps(hostile)), where)
    job = live.http.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["error"], job["result"]) == ("running", None, None)
    assert live.http.get(f"/jobs/{job_id}/metrics").json()["series"] == {}
    assert live.http.post(f"{jobs}/heartbeat", json={"lease_token": lease}).status_code == 200
    live.assert_up()


def test_text_that_is_not_utf8_in_a_path_a_query_or_a_header_is_a_client_error(live: Live) -> None:
    job_id, _ = start(live.http, TINY_JOB)
    for url in [
        "/jobs/%ED%A0%80",
        "/jobs?owner=%ED%A0%80",
        "/jobs?status=%FF",
        f"/jobs/{job_id}/metrics?name=%ED%A0%80",
    ]:
        r = live.http.get(url)
        assert r.status_code in (200, 404, 422), (url, r.status_code, r.text)
        r.json()  # an answer that is JSON, whatever was asked
    r = live.http.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": b"key-\xff\xfe"})
    assert r.status_code in (201, 422), r.text
    headers = {"X-Lease-Token": b"\xed\xa0\x80", "X-Checkpoint-Sha256": "0" * 64}
    headers |= {"X-Checkpoint-Epoch": "1", "X-Checkpoint-Step": "1"}
    r = live.http.put(f"/worker/jobs/{job_id}/checkpoints/last", content=b"x", headers=headers)
    assert r.status_code == 409, r.text  # read as Latin-1, as HTTP says: simply not the lease
    live.assert_up()
