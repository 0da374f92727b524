"""Checkpoints: upload (fenced, checked, size-capped, replacing), listing, and download with ETag and Range."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.db import Database
from tests.api.helpers import (
    client_with,
    files_of_job,
    finish,
    put_checkpoint,
    sha256,
    start,
    submit,
)
from tests.conftest import finetune_body, pretrain_body

DATA = bytes(range(256)) * 4  # 1 KiB, every byte value


@pytest.fixture
def running(client: TestClient) -> tuple[int, str]:
    """A running job: (id, lease token)."""
    return start(client, pretrain_body())


# --- upload ------------------------------------------------------------------------------------


def test_upload_stores_the_checkpoint_and_lists_it(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running

    r = put_checkpoint(client, job_id, token, DATA, "last", epoch=2, step=58, metric="0.125")

    assert r.status_code == 201
    ckpt = r.json()
    assert ckpt["tag"] == "last"
    assert ckpt["format"] == "pt"
    assert (ckpt["epoch"], ckpt["step"], ckpt["size"]) == (2, 58, len(DATA))
    assert ckpt["sha256"] == sha256(DATA)
    assert ckpt["metric_value"] == 0.125
    assert ckpt["url"] == f"/worker/jobs/{job_id}/checkpoints/last?format=pt"
    listed = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert len(listed) == 1
    assert listed[0]["sha256"] == sha256(DATA)
    assert listed[0]["url"] == f"/jobs/{job_id}/checkpoint?tag=last&format=pt"


def test_checkpoints_list_every_tag_and_format(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, b"last", "last")
    put_checkpoint(client, job_id, token, b"best", "best", metric="0.9")
    put_checkpoint(client, job_id, token, b"best-weights", "best", fmt="safetensors")

    listed = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]

    assert sorted((c["tag"], c["format"]) for c in listed) == [("best", "pt"), ("best", "safetensors"), ("last", "pt")]
    for c in listed:
        assert client.get(c["url"]).status_code == 200


def test_checkpoints_of_a_job_without_any_is_an_empty_list(client: TestClient, running: tuple[int, str]) -> None:
    assert client.get(f"/jobs/{running[0]}/checkpoints").json() == {"data": []}


def test_checkpoints_of_an_unknown_job_is_404(client: TestClient) -> None:
    r = client.get("/jobs/999/checkpoints")

    assert r.status_code == 404
    assert r.json() == {"detail": "job 999 not found"}


def test_upload_with_a_wrong_sha256_is_422_and_stores_nothing(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running

    r = put_checkpoint(client, job_id, token, DATA, digest=sha256(b"something else"))

    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "x-checkpoint-sha256"]
    assert sha256(DATA) in r.json()["detail"][0]["msg"]
    assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
    assert files_of_job(settings.artifacts_dir, job_id) == []


def test_a_wrong_sha256_does_not_replace_the_checkpoint_there(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA)

    assert put_checkpoint(client, job_id, token, b"new", digest=sha256(b"other")).status_code == 422

    assert client.get(f"/jobs/{job_id}/checkpoint").content == DATA
    assert len(files_of_job(settings.artifacts_dir, job_id)) == 1


def chunks(data: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_upload_streamed_in_chunks_without_content_length(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running

    r = put_checkpoint(client, job_id, token, chunks(DATA), digest=sha256(DATA))

    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(DATA)
    assert client.get(f"/jobs/{job_id}/checkpoint").content == DATA


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_upload_over_max_upload_bytes_is_413_and_stores_nothing(
    settings: Settings, db: Database, tokens: dict[str, str], streamed: bool
) -> None:
    with client_with(settings, db, tokens, max_upload_bytes=1000) as client:
        job_id, token = start(client, pretrain_body())
        body = chunks(DATA) if streamed else DATA

        r = put_checkpoint(client, job_id, token, body, digest=sha256(DATA))

        assert r.status_code == 413
        assert "1000 bytes" in r.json()["detail"]
        assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
        assert files_of_job(settings.artifacts_dir, job_id) == []
        exactly = DATA[:1000]
        assert put_checkpoint(client, job_id, token, exactly).status_code == 201


def test_upload_with_a_wrong_lease_token_is_409_and_stores_nothing(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, _ = running

    r = put_checkpoint(client, job_id, "not-the-token", DATA)

    assert r.status_code == 409
    assert "lease lost" in r.json()["detail"]
    assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
    assert files_of_job(settings.artifacts_dir, job_id) == []


def test_upload_with_a_stale_lease_token_is_409_and_stores_nothing(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running
    client.post(f"/worker/jobs/{job_id}/release", json={"lease_token": token})
    start_again = client.post("/worker/claim", json={"worker_id": "w2"}).json()
    assert start_again["id"] == job_id

    r = put_checkpoint(client, job_id, token, DATA)

    assert r.status_code == 409
    assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
    assert files_of_job(settings.artifacts_dir, job_id) == []


def test_upload_for_a_queued_or_unknown_job(client: TestClient, settings: Settings) -> None:
    queued = submit(client, pretrain_body())["id"]

    assert put_checkpoint(client, queued, "any", DATA).status_code == 409
    assert put_checkpoint(client, 999, "any", DATA).status_code == 404
    assert files_of_job(settings.artifacts_dir, queued) == []


def test_a_reupload_replaces_the_file_and_removes_the_old_one(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, b"epoch one" * 50, epoch=1, step=10)
    assert len(files_of_job(settings.artifacts_dir, job_id)) == 1
    old_file = files_of_job(settings.artifacts_dir, job_id)[0]

    r = put_checkpoint(client, job_id, token, b"epoch two" * 50, epoch=2, step=20)

    assert r.status_code == 201
    assert files_of_job(settings.artifacts_dir, job_id) != [old_file]
    assert len(files_of_job(settings.artifacts_dir, job_id)) == 1
    listed = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["epoch"], c["step"], c["sha256"]) for c in listed] == [(2, 20, sha256(b"epoch two" * 50))]
    assert client.get(f"/jobs/{job_id}/checkpoint").content == b"epoch two" * 50


def test_reuploading_the_same_bytes_keeps_the_file(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA, epoch=1)

    assert put_checkpoint(client, job_id, token, DATA, epoch=2).status_code == 201

    assert len(files_of_job(settings.artifacts_dir, job_id)) == 1
    r = client.get(f"/jobs/{job_id}/checkpoint")
    assert (r.content, r.headers["X-Checkpoint-Epoch"]) == (DATA, "2")


# Header changes (None: leave the header out) and where the 422 points.
BAD_HEADERS: dict[str, tuple[dict[str, str | None], list[str]]] = {
    "no-token": ({"X-Lease-Token": None}, ["header", "x-lease-token"]),
    "short-sha": ({"X-Checkpoint-Sha256": "abc"}, ["header", "x-checkpoint-sha256"]),
    "no-sha": ({"X-Checkpoint-Sha256": None}, ["header", "x-checkpoint-sha256"]),
    "negative-epoch": ({"X-Checkpoint-Epoch": "-1"}, ["header", "x-checkpoint-epoch"]),
    "step-text": ({"X-Checkpoint-Step": "ten"}, ["header", "x-checkpoint-step"]),
    "metric-nan": ({"X-Checkpoint-Metric": "nan"}, ["header", "x-checkpoint-metric"]),
    "metric-inf": ({"X-Checkpoint-Metric": "inf"}, ["header", "x-checkpoint-metric"]),
}


def test_upload_with_bad_headers_is_422(
    client: TestClient, settings: Settings, running: tuple[int, str], subtests: pytest.Subtests
) -> None:
    job_id, token = running
    good = {
        "X-Lease-Token": token,
        "X-Checkpoint-Sha256": sha256(DATA),
        "X-Checkpoint-Epoch": "1",
        "X-Checkpoint-Step": "10",
    }

    for case, (changes, loc) in BAD_HEADERS.items():
        with subtests.test(case):
            sent = {k: v for k, v in (good | changes).items() if v is not None}
            r = client.put(f"/worker/jobs/{job_id}/checkpoints/last", content=DATA, headers=sent)
            assert r.status_code == 422
            assert loc in [e["loc"] for e in r.json()["detail"]]
    assert files_of_job(settings.artifacts_dir, job_id) == []


def test_upload_with_a_bad_tag_or_format_is_422(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    headers = {"X-Lease-Token": token, "X-Checkpoint-Sha256": sha256(DATA)}
    headers |= {"X-Checkpoint-Epoch": "1", "X-Checkpoint-Step": "1"}

    for url, loc in [("checkpoints/first", ["path", "tag"]), ("checkpoints/last?format=onnx", ["query", "format"])]:
        r = client.put(f"/worker/jobs/{job_id}/{url}", content=DATA, headers=headers)
        assert r.status_code == 422
        assert loc in [e["loc"] for e in r.json()["detail"]]


# --- download -------------------------------------------------------------------------------------


def test_download_before_any_checkpoint_is_404_with_a_message(client: TestClient, running: tuple[int, str]) -> None:
    job_id, _ = running

    for params in [{}, {"tag": "last"}, {"tag": "best"}, {"format": "safetensors"}]:
        r = client.get(f"/jobs/{job_id}/checkpoint", params=params)
        assert r.status_code == 404
        assert f"job {job_id} has no" in r.json()["detail"]
        assert "checkpoint" in r.json()["detail"]


def test_download_of_an_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/jobs/999/checkpoint").json() == {"detail": "job 999 not found"}


def test_download_defaults_to_best_falling_back_to_last(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, b"last-1", "last", epoch=1)
    assert client.get(f"/jobs/{job_id}/checkpoint").content == b"last-1"
    only_best = client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "best"})
    assert only_best.status_code == 404
    assert "'best'" in only_best.json()["detail"]

    put_checkpoint(client, job_id, token, b"best-1", "best", epoch=1)
    put_checkpoint(client, job_id, token, b"last-2", "last", epoch=2)
    finish(client, job_id, token)

    assert client.get(f"/jobs/{job_id}/checkpoint").content == b"best-1"
    assert client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "last"}).content == b"last-2"
    assert client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "best"}).content == b"best-1"


def test_download_safetensors(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, b"full dict", "last")
    put_checkpoint(client, job_id, token, b"weights only", "last", fmt="safetensors")

    r = client.get(f"/jobs/{job_id}/checkpoint", params={"format": "safetensors"})

    assert r.content == b"weights only"
    assert r.headers["Content-Disposition"] == f'attachment; filename="job-{job_id}-last.safetensors"'
    assert client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "best", "format": "safetensors"}).status_code == 404


def test_download_headers(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA, "best", epoch=3, step=87)

    r = client.get(f"/jobs/{job_id}/checkpoint")

    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == f'attachment; filename="job-{job_id}-best.pt"'
    assert r.headers["ETag"] == f'"{sha256(DATA)}"'
    assert r.headers["Accept-Ranges"] == "bytes"
    assert (r.headers["X-Checkpoint-Epoch"], r.headers["X-Checkpoint-Step"]) == ("3", "87")


def test_if_none_match_with_the_etag_is_304(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA)
    etag = f'"{sha256(DATA)}"'

    same = client.get(f"/jobs/{job_id}/checkpoint", headers={"If-None-Match": etag})
    among = client.get(f"/jobs/{job_id}/checkpoint", headers={"If-None-Match": f'"abc", {etag}'})
    other = client.get(f"/jobs/{job_id}/checkpoint", headers={"If-None-Match": '"abc"'})

    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["ETag"] == etag
    assert among.status_code == 304
    assert other.status_code == 200
    assert other.content == DATA


def test_range_request_returns_exactly_those_bytes(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA)

    r = client.get(f"/jobs/{job_id}/checkpoint", headers={"Range": "bytes=10-19"})

    assert r.status_code == 206
    assert r.content == DATA[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    assert r.headers["Content-Length"] == "10"
    assert r.headers["ETag"] == f'"{sha256(DATA)}"'

    tail = client.get(f"/jobs/{job_id}/checkpoint", headers={"Range": "bytes=-5"})
    assert (tail.status_code, tail.content) == (206, DATA[-5:])
    rest = client.get(f"/jobs/{job_id}/checkpoint", headers={"Range": "bytes=1000-"})
    assert (rest.status_code, rest.content) == (206, DATA[1000:])


def test_an_unsatisfiable_range_is_416(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA)

    for byte_range in ["bytes=5000-6000", f"bytes={len(DATA)}-"]:
        r = client.get(f"/jobs/{job_id}/checkpoint", headers={"Range": byte_range})
        assert r.status_code == 416, byte_range
        assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_a_missing_file_is_404_with_a_message(client: TestClient, settings: Settings, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA)
    for name in files_of_job(settings.artifacts_dir, job_id):
        os.remove(settings.artifacts_dir / "jobs" / str(job_id) / name)

    r = client.get(f"/jobs/{job_id}/checkpoint")

    assert r.status_code == 404
    assert "missing" in r.json()["detail"]


def test_download_with_a_bad_tag_or_format_is_422(client: TestClient, running: tuple[int, str]) -> None:
    for params, loc in [({"tag": "first"}, ["query", "tag"]), ({"format": "onnx"}, ["query", "format"])]:
        r = client.get(f"/jobs/{running[0]}/checkpoint", params=params)
        assert r.status_code == 422
        assert loc in [e["loc"] for e in r.json()["detail"]]


def test_worker_download_serves_the_file_back(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    put_checkpoint(client, job_id, token, DATA, "last")

    lease = {"X-Lease-Token": token}
    r = client.get(f"/worker/jobs/{job_id}/checkpoints/last", headers=lease)

    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["ETag"] == f'"{sha256(DATA)}"'
    ranged = client.get(f"/worker/jobs/{job_id}/checkpoints/last", headers={"Range": "bytes=0-9", **lease})
    assert (ranged.status_code, ranged.content) == (206, DATA[:10])
    assert client.get(f"/worker/jobs/{job_id}/checkpoints/best", headers=lease).status_code == 404


def test_a_worker_reads_only_the_checkpoints_its_lease_starts_from(client: TestClient) -> None:
    """Its own job's (to resume) and its job's base's (a finetune's init); another job's is a 404, like a bad lease."""
    base, base_token = start(client, pretrain_body())
    put_checkpoint(client, base, base_token, DATA, "best")
    assert finish(client, base, base_token, result={"test_loss": 0.1}).status_code == 200
    other, other_token = start(client, pretrain_body())
    put_checkpoint(client, other, other_token, DATA, "last")
    finetune, finetune_token = start(client, finetune_body(base))
    url = "/worker/jobs/{}/checkpoints/{}"
    assert client.get(url.format(base, "best"), headers={"X-Lease-Token": finetune_token}).content == DATA
    assert client.get(url.format(other, "last"), headers={"X-Lease-Token": other_token}).content == DATA
    for job_id, token in [(other, finetune_token), (base, other_token), (base, "stale"), (finetune, other_token)]:
        r = client.get(url.format(job_id, "best"), headers={"X-Lease-Token": token})
        assert r.status_code == 404, (job_id, token)
    assert client.get(url.format(base, "best")).status_code == 422  # no lease named at all


# --- large files: the server buffers 8 MiB per write and reads 4 MiB per chunk --------------------

BIG = os.urandom(21 * 1024 * 1024 + 12_345)  # several write buffers and read chunks, and an odd tail


def test_a_large_upload_in_odd_chunks_comes_back_byte_for_byte(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running

    r = put_checkpoint(client, job_id, token, chunks(BIG, 65_537), digest=sha256(BIG))

    assert r.status_code == 201, r.text
    assert (r.json()["size"], r.json()["sha256"]) == (len(BIG), sha256(BIG))
    assert client.get(f"/jobs/{job_id}/checkpoint").content == BIG
    assert client.get(f"/worker/jobs/{job_id}/checkpoints/last", headers={"X-Lease-Token": token}).content == BIG
    start_at, end_at = 4 * 1024 * 1024 - 3, 12 * 1024 * 1024 + 2  # across read-chunk boundaries
    part = client.get(f"/jobs/{job_id}/checkpoint", headers={"Range": f"bytes={start_at}-{end_at}"})
    assert (part.status_code, part.content) == (206, BIG[start_at : end_at + 1])


def test_a_large_upload_with_one_flipped_byte_is_422_and_stores_nothing(
    settings: Settings, client: TestClient, running: tuple[int, str]
) -> None:
    job_id, token = running
    flipped = bytearray(BIG)
    flipped[17 * 1024 * 1024] ^= 1  # in the third write buffer

    r = put_checkpoint(client, job_id, token, chunks(bytes(flipped), 65_536), digest=sha256(BIG))

    assert r.status_code == 422
    assert files_of_job(settings.artifacts_dir, job_id) == []


def test_a_large_streamed_upload_over_the_limit_stops_with_413_and_stores_nothing(
    settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    with client_with(settings, db, tokens, max_upload_bytes=10 * 1024 * 1024) as client:
        job_id, token = start(client, pretrain_body())

        r = put_checkpoint(client, job_id, token, chunks(BIG, 65_536), digest=sha256(BIG))

        assert r.status_code == 413
        assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
        assert files_of_job(settings.artifacts_dir, job_id) == []


# --- X-Checkpoint-Same-As: one file saved as two tags is sent once --------------------------------


def same_as(
    client: TestClient, job_id: int, token: str, source: str, digest: str, tag: str = "last", **extra: Any
) -> Any:
    headers = {
        "X-Lease-Token": token,
        "X-Checkpoint-Sha256": digest,
        "X-Checkpoint-Epoch": "2",
        "X-Checkpoint-Step": "20",
        "X-Checkpoint-Same-As": source,
        **extra,
    }
    return client.put(f"/worker/jobs/{job_id}/checkpoints/{tag}?format=pt", headers=headers)


def test_same_as_stores_the_other_tags_file_without_a_body(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running
    assert put_checkpoint(client, job_id, token, DATA, "best").status_code == 201

    r = same_as(client, job_id, token, "best", sha256(DATA))

    assert r.status_code == 201, r.text
    assert (r.json()["tag"], r.json()["size"], r.json()["sha256"], r.json()["step"]) == (
        "last",
        len(DATA),
        sha256(DATA),
        20,
    )
    assert client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "last"}).content == DATA
    folder = settings.artifacts_dir / "jobs" / str(job_id)
    best, last = sorted(folder.glob("best-*.pt")), sorted(folder.glob("last-*.pt"))
    assert len(best) == len(last) == 1 and best[0].samefile(last[0])  # linked, not copied
    # Each tag's file lives on its own: a new best leaves last as it was.
    other = DATA[::-1]
    assert put_checkpoint(client, job_id, token, other, "best").status_code == 201
    assert client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "last"}).content == DATA
    assert client.get(f"/jobs/{job_id}/checkpoint", params={"tag": "best"}).content == other


def test_same_as_a_missing_or_different_checkpoint_is_412_and_stores_nothing(
    client: TestClient, settings: Settings, running: tuple[int, str]
) -> None:
    job_id, token = running
    assert same_as(client, job_id, token, "best", sha256(DATA)).status_code == 412  # no best yet
    assert put_checkpoint(client, job_id, token, DATA, "best").status_code == 201

    r = same_as(client, job_id, token, "best", sha256(b"something else"))

    assert r.status_code == 412
    assert "upload the file" in r.json()["detail"]
    assert [c["tag"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()["data"]] == ["best"]
    assert [n.split("-")[0] for n in files_of_job(settings.artifacts_dir, job_id)] == ["best"]


def test_same_as_is_fenced_and_refuses_a_body(client: TestClient, running: tuple[int, str]) -> None:
    job_id, token = running
    assert put_checkpoint(client, job_id, token, DATA, "best").status_code == 201
    assert same_as(client, job_id, "not-the-token", "best", sha256(DATA)).status_code == 409
    with_body = client.put(
        f"/worker/jobs/{job_id}/checkpoints/last?format=pt",
        content=DATA,
        headers={
            "X-Lease-Token": token,
            "X-Checkpoint-Sha256": sha256(DATA),
            "X-Checkpoint-Epoch": "1",
            "X-Checkpoint-Step": "1",
            "X-Checkpoint-Same-As": "best",
        },
    )
    assert with_body.status_code == 422
    assert same_as(client, job_id, token, "worst", sha256(DATA)).status_code == 422
