"""Checkpoint files under stress: a full disk, replacement during downloads, files that vanish, kills mid-upload,
and the status of each way an upload can be wrong."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.servers import ApiServer, WorkerProcess, wait_until
from tests.api.helpers import claim, put_checkpoint, sha256, start
from tests.conftest import TINY_JOB, finetune_body, pretrain_body
from tests.hostile.conftest import Live

pytestmark = pytest.mark.slow


def temporaries(artifacts: Path) -> list[str]:
    return sorted(p.name for p in artifacts.rglob(".*-*")) if artifacts.exists() else []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The artifacts folder of a server, on a file system of 1 MiB (tmpfs; mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    folder = tmp_path / "artifacts"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def test_a_full_disk_is_a_507_that_keeps_nothing_and_the_service_stays_up(small_disk: Path, tmp_path: Path) -> None:
    with ApiServer(tmp_path) as api, api.client(timeout=30) as http:
        job_id, lease = start(http, TINY_JOB)
        free = free_bytes(small_disk)
        big = os.urandom(2 * 1024 * 1024)
        r = put_checkpoint(http, job_id, lease, big)
        assert r.status_code == 507, r.text
        assert "disk is full" in r.json()["detail"]
        assert temporaries(small_disk) == [] and free_bytes(small_disk) >= free
        assert http.get(f"/jobs/{job_id}/checkpoints").json()["data"] == []
        chunked = put_checkpoint(http, job_id, lease, iter([big[:1_000_000], big[1_000_000:]]), digest=sha256(big))
        assert chunked.status_code == 507 and temporaries(small_disk) == []
        small = b"fits"
        assert put_checkpoint(http, job_id, lease, small).status_code == 201  # room again for what fits
        assert http.get("/healthz").status_code == 200
        assert http.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_a_worker_that_finds_no_room_for_its_checkpoint_fails_the_job_saying_so(
    small_disk: Path, tmp_path: Path
) -> None:
    """Retried for TRAINJOBS_STORAGE_RETRY_SECONDS, then failed with the reason; never succeeded without it."""
    job = {**TINY_JOB, "model": {"arch": "mlp_autoencoder", "hidden": [2048], "bottleneck": 8}}  # about 3.5 MB
    with ApiServer(tmp_path) as api, api.client(timeout=30) as http:
        assert api.artifacts_dir == small_disk
        job_id = http.post("/jobs", json=job).json()["id"]
        with WorkerProcess(api.url, tmp_path / "worker", storage_retry_seconds="2") as worker:

            def ended() -> dict[str, Any] | None:
                found: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
                return found if found["status"] in ("succeeded", "failed", "cancelled") else None

            final = wait_until(ended, timeout=120, what="the job to end")
            assert final["status"] == "failed", final
            assert "disk is full" in final["error"] and "checkpoint" in final["error"], final["error"]
            assert final["result"] is None
            assert "no room at the service for the upload" in worker.text()
        assert temporaries(small_disk) == []


def test_downloads_while_the_checkpoint_is_replaced_are_whole_and_never_fail(live: Live) -> None:
    job_id, lease = start(live.http, TINY_JOB)
    versions = [os.urandom(256 * 1024) for _ in range(40)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    assert put_checkpoint(live.http, job_id, lease, versions[0]).status_code == 201
    done = threading.Event()
    seen: list[tuple[int, int, int, str]] = []

    def download(worker: bool) -> None:
        url = f"/worker/jobs/{job_id}/checkpoints/last" if worker else f"/jobs/{job_id}/checkpoint?tag=last"
        headers = {"X-Lease-Token": lease} if worker else {}
        with live.api.client(timeout=30) as http:
            while not done.is_set():
                r = http.get(url, headers=headers)
                seen.append(
                    (r.status_code, int(r.headers.get("content-length", -1)), len(r.content), sha256(r.content))
                )

    readers = [threading.Thread(target=download, args=(n % 2 == 0,)) for n in range(4)]
    for t in readers:
        t.start()
    try:
        for step, data in enumerate(versions[1:], start=2):
            assert put_checkpoint(live.http, job_id, lease, data, step=step).status_code == 201
    finally:
        done.set()
        for t in readers:
            t.join()
    assert len(seen) > 50, len(seen)
    assert {code for code, *_ in seen} == {200}, sorted({code for code, *_ in seen})
    for _code, declared, got, digest in seen:
        assert declared == got == 256 * 1024 and digest in digests
    # Each private link goes as its answer ends: just after the client has the last byte.
    folder = live.api.artifacts_dir / "jobs" / str(job_id)
    wait_until(lambda: temporaries(folder) == [], timeout=5, what="the downloads' private links to go")


def job_folder(live: Live, job_id: int) -> Path:
    return live.api.artifacts_dir / "jobs" / str(job_id)


def remove_file_of(live: Live, job_id: int, tag: str) -> None:
    (path,) = job_folder(live, job_id).glob(f"{tag}-*.pt")
    path.unlink()


def test_a_vanished_checkpoint_is_not_listed_and_a_resume_takes_the_last_one_left(live: Live) -> None:
    """The rule (README, "Crashes and stops"): resume from last; if its file is gone, from best; else start over."""
    job_id, lease = start(live.http, TINY_JOB)
    assert put_checkpoint(live.http, job_id, lease, b"best one", "best", epoch=1).status_code == 201
    assert put_checkpoint(live.http, job_id, lease, b"last one", "last", epoch=2).status_code == 201
    remove_file_of(live, job_id, "last")
    listed = live.http.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["tag"] for c in listed] == ["best"]
    missing = live.http.get(f"/jobs/{job_id}/checkpoint", params={"tag": "last"})
    assert missing.status_code == 404, missing.text
    assert live.http.post(f"/worker/jobs/{job_id}/release", json={"lease_token": lease}).status_code == 200
    again = claim(live.http)
    assert again is not None and again["id"] == job_id
    assert (again["resume_checkpoint"]["tag"], again["resume_checkpoint"]["epoch"]) == ("best", 1)
    remove_file_of(live, job_id, "best")
    live.http.post(f"/worker/jobs/{job_id}/release", json={"lease_token": again["lease_token"]})
    fresh = claim(live.http)
    assert fresh is not None and fresh["id"] == job_id and fresh["resume_checkpoint"] is None  # starts over


def test_a_finetune_whose_base_checkpoints_vanished_fails_at_claim_saying_why(live: Live) -> None:
    base, lease = start(live.http, pretrain_body())
    assert put_checkpoint(live.http, base, lease, b"encoder", "best").status_code == 201
    body = {"lease_token": lease, "status": "succeeded", "result": {"test_loss": 0.1}}
    assert live.http.post(f"/worker/jobs/{base}/finish", json=body).status_code == 200
    finetune = live.http.post("/jobs", json=finetune_body(base)).json()["id"]
    remove_file_of(live, base, "best")
    assert claim(live.http) is None  # nothing else to run: that one failed at once
    failed = live.http.get(f"/jobs/{finetune}").json()
    assert failed["status"] == "failed" and "no checkpoint file left" in failed["error"], failed


def test_temporary_files_of_an_api_killed_mid_upload_are_removed_when_it_starts(tmp_path: Path) -> None:
    api = ApiServer(tmp_path).start()
    with api.client(timeout=30) as http:
        job_id, lease = start(http, TINY_JOB)
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"x" * 1_000_000
        sent.set()
        time.sleep(30)  # never finishes: the API is killed meanwhile
        yield b"x"

    def upload() -> None:
        with api.client(timeout=60) as http, pytest.raises(httpx.HTTPError):
            put_checkpoint(http, job_id, lease, slow_body(), digest="0" * 64)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    sent.wait(10)
    folder = api.artifacts_dir / "jobs" / str(job_id)
    wait_until(lambda: temporaries(folder), timeout=10, what="the upload's temporary file")
    api.kill()
    assert temporaries(folder), "the killed upload left no file: nothing to test"
    stranger = folder / ".upload-otherhost-1-abc"  # another machine's, recent: not ours to remove
    stranger.write_bytes(b"partial")
    with ApiServer(tmp_path) as again:
        assert temporaries(folder) == [stranger.name]
        assert "removed 1 temporary file" in again.log.read_text()


def upload_headers(lease: str, data: bytes, **extra: str) -> dict[str, str]:
    return {
        "X-Lease-Token": lease,
        "X-Checkpoint-Sha256": sha256(data),
        "X-Checkpoint-Epoch": "1",
        "X-Checkpoint-Step": "1",
        **extra,
    }


def test_each_way_an_upload_can_be_wrong_has_its_status(live: Live) -> None:
    """The table in README's "Checkpoints": 404, 409, 412, 422 (413: test_bodies.py; 507: the full-disk tests)."""
    job_id, lease = start(live.http, TINY_JOB)
    data = b"a checkpoint"
    url = f"/worker/jobs/{job_id}/checkpoints/last"
    assert live.http.put(url, content=data, headers=upload_headers(lease, data)).status_code == 201
    without_digest = {k: v for k, v in upload_headers(lease, data).items() if k != "X-Checkpoint-Sha256"}
    cases: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
        ("no such job", "/worker/jobs/99999/checkpoints/last", data, upload_headers(lease, data), 404),
        ("not the lease", url, data, upload_headers("not-the-lease", data), 409),
        ("no digest", url, data, without_digest, 422),
        ("a digest that is not hex", url, data, upload_headers(lease, data, **{"X-Checkpoint-Sha256": "z" * 64}), 422),
        ("the body is not what the digest says", url, b"other bytes", upload_headers(lease, data), 422),
        ("an epoch that is not a number", url, data, upload_headers(lease, data, **{"X-Checkpoint-Epoch": "one"}), 422),
        ("a metric that is not finite", url, data, upload_headers(lease, data, **{"X-Checkpoint-Metric": "nan"}), 422),
        ("a tag there is not", f"/worker/jobs/{job_id}/checkpoints/first", data, upload_headers(lease, data), 422),
        ("a body with same-as", f"/worker/jobs/{job_id}/checkpoints/best", data,
         upload_headers(lease, data, **{"X-Checkpoint-Same-As": "last"}), 422),
        ("same-as, another digest", f"/worker/jobs/{job_id}/checkpoints/best", None,
         upload_headers(lease, b"other", **{"X-Checkpoint-Same-As": "last"}), 412),
    ]  # fmt: skip
    for what, path, body, headers, expected in cases:
        r = live.http.put(path, content=body, headers=headers)
        assert r.status_code == expected, (what, r.status_code, r.text)
        assert r.json()["detail"], what
    listed = live.http.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["tag"], c["sha256"]) for c in listed] == [("last", sha256(data))]
    assert temporaries(job_folder(live, job_id)) == []
