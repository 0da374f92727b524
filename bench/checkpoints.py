"""Benchmark 6: moving a 200 MB checkpoint (quick: 20 MB) over loopback, against ``cat`` of the same file.

Every variant starts with the file out of the page cache (``posix_fadvise(DONTNEED)`` after an
fsync), so each reads it from disk as ``cat`` does; then, in turn:

- ``cat``: ``cat file > /dev/null``;
- ``dd``: ``dd if=file of=copy bs=4M conv=fsync``, the disk's own read-then-durably-write speed: the
  ceiling for an upload, which the server must also write and fsync;
- ``upload``: the worker's ``WorkerClient.upload_checkpoint`` with the file's sha256 as the training process
  computed it while writing (so the file is read once), a streamed ``PUT /worker/jobs/{id}/checkpoints/last``;
  the server hashes, writes, fsyncs and renames it;
- ``download``: the worker's ``WorkerClient.download`` (``GET /worker/jobs/{id}/checkpoints/last``
  to a file, sha256 checked), what a resumed job does;
- ``get``: ``GET /jobs/{id}/checkpoint`` read and thrown away, as ``curl -o /dev/null`` would.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.core.states import CheckpointFormat, CheckpointTag
from devtools.servers import WORKER_TOKEN, ApiServer
from worker.client import WorkerClient
from worker.training.checkpoints import sha256_of

from .metrics import NO_REAPING, claim_new_job
from .servers import cpu_seconds
from .stats import Result, at_least, interleave, ratios

CHUNK = 1 << 20


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(os.urandom(CHUNK))
        f.flush()
        os.fsync(f.fileno())


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache, so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed_mb_per_s(size: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return size / 1e6 / (time.perf_counter() - started)


def run(*, quick: bool) -> Result:
    size, rounds = (20 * CHUNK, 2) if quick else (200 * CHUNK, 5)
    result = Result(
        "checkpoints",
        f"Checkpoint transfer over loopback: {size // CHUNK} MiB file",
        {"bytes": size, "rounds": rounds, "page_cache": "evicted before every variant (from disk)"},
    )
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        root = Path(tmp)
        source = root / "checkpoint.pt"
        write_random_file(source, size)
        digest = sha256_of(source)
        with (
            ApiServer(root / "api", lease_seconds=NO_REAPING) as api,
            api.client(timeout=600) as http,
        ):
            job_id, token = claim_new_job(http)
            assert api.proc is not None
            api_pid = api.proc.pid
            cpu: dict[str, list[float]] = {"upload: API process CPU": [], "download: the client's CPU": []}
            client = WorkerClient(api.url, WORKER_TOKEN)
            step = iter(range(1, 1_000_000))
            stored: dict[str, str] = {}

            def cat() -> float:
                evict(source)
                return timed_mb_per_s(
                    size, lambda: subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)
                )

            def dd() -> float:
                evict(source)
                copy = root / "copy.pt"
                cmd = ["dd", f"if={source}", f"of={copy}", "bs=4M", "conv=fsync", "status=none"]
                speed = timed_mb_per_s(size, lambda: subprocess.run(cmd, check=True))
                copy.unlink()
                return speed

            def upload() -> float:
                evict(source)

                def put() -> None:  # with the digest the training process computed as it wrote the file
                    client.upload_checkpoint(
                        job_id,
                        token,
                        tag=CheckpointTag.LAST,
                        fmt=CheckpointFormat.PT,
                        path=source,
                        epoch=1,
                        step=next(step),
                        metric=None,
                        sha256=digest,
                    )

                before = cpu_seconds(api_pid)
                speed = timed_mb_per_s(size, put)
                cpu["upload: API process CPU"].append((cpu_seconds(api_pid) - before) * speed * 1e6 / size)
                ref = http.get(f"/jobs/{job_id}/checkpoints").json()["data"][0]
                stored["sha256"] = ref["sha256"]
                return speed

            def server_file() -> Path:
                return next((api.artifacts_dir / "jobs" / str(job_id)).glob("last-*.pt"))

            def download() -> float:
                evict(server_file())
                dest = root / "downloaded.pt"
                url = f"/worker/jobs/{job_id}/checkpoints/last?format=pt"
                before = time.process_time()
                speed = timed_mb_per_s(size, lambda: client.download(url, dest, stored["sha256"], token))
                cpu["download: the client's CPU"].append((time.process_time() - before) * speed * 1e6 / size)
                dest.unlink()
                return speed

            def get() -> float:
                evict(server_file())

                def read_all() -> None:
                    with http.stream("GET", f"/jobs/{job_id}/checkpoint", params={"tag": "last"}) as r:
                        r.raise_for_status()
                        for _ in r.iter_raw(CHUNK):
                            pass

                return timed_mb_per_s(size, read_all)

            try:
                runs = interleave({"cat": cat, "dd": dd, "upload": upload, "download": download, "get": get}, rounds)
            finally:
                client.close()
    result.add("cat file > /dev/null (from disk)", "MB/s", runs["cat"])
    result.add("dd copy with fsync (from disk, to disk)", "MB/s", runs["dd"])
    result.add("upload (worker client, PUT)", "MB/s", runs["upload"])
    result.add("download (worker client, GET to file + sha256)", "MB/s", runs["download"])
    result.add("GET /jobs/{id}/checkpoint read and discarded", "MB/s", runs["get"])
    for name in ("upload", "download"):
        result.add(
            f"{name} / cat (pair by pair)",
            "x",
            ratios(runs[name], runs["cat"]),
            ">= 0.5",
            check=at_least(0.5),
        )
    result.add("upload / dd (pair by pair)", "x", ratios(runs["upload"], runs["dd"]))
    for name, busy in cpu.items():  # CPU seconds per second of the transfer: 1.0 is a whole core
        result.add(f"{name} while it runs", "cores", busy)
    return result
