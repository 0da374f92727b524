"""The benchmarks' helpers around the real processes of devtools/servers.py: workers, CPU time, job polling."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.core.states import TERMINAL
from devtools.servers import WorkerProcess, wait_until


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


def start_worker(api_url: str, root: Path, *, name: str = "bench", **options: Any) -> WorkerProcess:
    """A worker as a user starts it (its own poll interval and threads unless given), logging warnings only."""
    options.setdefault("threads", None)
    return WorkerProcess(api_url, root, name, poll_seconds=None, log_level="warning", **options)


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
        if job["status"] in TERMINAL:
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return None

    return wait_until(done, timeout=timeout, interval=interval, what=f"job {job_id} to be {'/'.join(sorted(statuses))}")
