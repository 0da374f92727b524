"""The real service for the benchmarks: an API process on a fresh SQLite file and worker processes.

The same processes a user starts (``trainjobs-api``, ``python -m worker``), each on its own port
and folders under one temporary root, logging to files there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float = 60, interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15 (man 5 proc).
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of every process below it (a worker and its forkserver, say)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:  # ended meanwhile
            continue
        todo.extend(children.get(current, []))
    return total


def settle(*pids: int, timeout: float = 60.0) -> None:
    """Wait until these processes and their children use under 1% of a core over a second.

    A worker starts the next job's process ahead when a job ends; its imports (seconds of CPU)
    must not land in the next measurement.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(tree_cpu_seconds(pid) for pid in pids)
        time.sleep(1.0)
        if sum(tree_cpu_seconds(pid) for pid in pids) - before < 0.01:
            return
    print(f"bench: processes {pids} still busy after {timeout:.0f} s; measuring anyway", file=sys.stderr)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Wait until the API process answers ``/healthz``; fail with its log's tail if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"API did not become healthy: {log.read_text()[-2000:]}")


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), **extra}


class ApiServer:
    """``trainjobs-api --migrate`` on a free port, with its database, artifacts and data under ``root``."""

    def __init__(self, root: Path, **settings: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _env(
            TRAINJOBS_DATABASE_URL=f"sqlite:///{root / 'trainjobs.db'}",
            TRAINJOBS_ARTIFACTS_DIR=str(root / "artifacts"),
            TRAINJOBS_DATA_DIR=str(root / "data"),
            TRAINJOBS_PORT=str(self.port),
            **{f"TRAINJOBS_{k.upper()}": v for k, v in settings.items()},
        )
        self.log = root / "api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def start(self, timeout: float = 60) -> ApiServer:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "--migrate", "--log-level", "warning"],
                env=self.env,
                cwd=self.root,
                stdout=out,
                stderr=out,
            )
        wait_healthy(self.proc, self.url, self.log, timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess:
    """``python -m worker`` serving ``api_url``, with its defaults except device, threads and folders."""

    def __init__(
        self,
        api_url: str,
        root: Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        start_method: str | None = None,
        name: str = "bench",
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"worker-{name}.log"
        cmd = [
            sys.executable, "-m", "worker",
            "--api", api_url,
            "--device", device,
            "--worker-id", name,
            "--work-dir", str(root / "work"),
            "--data-dir", str(root / "data"),
            "--log-level", "warning",
        ]  # fmt: skip
        if threads:
            cmd += ["--threads", str(threads)]
        if start_method:
            cmd += ["--start-method", start_method]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=_env(), cwd=root, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        terminate(self.proc)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def submit(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post("/jobs", json=body)
    r.raise_for_status()
    return dict(r.json())


def wait_for_status(
    http: httpx.Client, job_id: int, statuses: set[str], timeout: float, interval: float = 0.05
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its status is one of ``statuses``; fail on an unexpected end."""

    def done() -> dict[str, Any] | None:
        job = dict(http.get(f"/jobs/{job_id}").json())
        if job["status"] in statuses:
            return job
        if job["status"] in {"failed", "cancelled", "succeeded"}:
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return None

    return wait_until(done, timeout=timeout, interval=interval, what=f"job {job_id} to be {'/'.join(sorted(statuses))}")
