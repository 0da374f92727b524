"""Real API server processes for tests: start on a free port, wait until healthy, kill.

Start-up is bench.servers' (the tests may use the benchmarks' helpers; the benchmarks never import tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.servers import free_port, wait_healthy

__all__ = ["ApiServer", "WorkerProcess", "free_port", "pid_alive", "wait_until"]


class ApiServer:
    """``trainjobs-api`` (python -m app.cli) in its own process."""

    def __init__(self, database_url: str, root: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TRAINJOBS_DATABASE_URL": database_url,
            "TRAINJOBS_ARTIFACTS_DIR": str(root / "artifacts"),
            "TRAINJOBS_DATA_DIR": str(root / "data"),
            "TRAINJOBS_PORT": str(self.port),
            **env,
        }
        self.log = root / f"api-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> ApiServer:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "--log-level", "warning"], env=self.env, stdout=out, stderr=out
            )
        wait_healthy(self.proc, self.url, self.log, timeout)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill(signal.SIGTERM)


class WorkerProcess:
    """``python -m worker`` in its own process, logging to a file the tests read."""

    CHILD = re.compile(r"job (\d+): attempt \d+ of \d+ started child pid (\d+)")

    def __init__(self, api_url: str, root: Path, name: str, *args: str) -> None:
        self.name = name
        self.log = root / f"worker-{name}.log"
        cmd = [
            sys.executable, "-m", "worker",
            "--api", api_url,
            "--device", "cpu",
            "--worker-id", name,
            "--work-dir", str(root / "work"),
            "--data-dir", str(root / "data"),
            "--poll-seconds", "1",
            "--threads", "1",
            *args,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def children(self) -> list[tuple[int, int]]:
        """(job id, child pid) for every job this worker started, from its log."""
        return [(int(j), int(p)) for j, p in self.CHILD.findall(self.text())]

    def child_of(self, job_id: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for j, pid in self.children():
                if j == job_id:
                    return pid
            time.sleep(0.05)
        raise AssertionError(f"worker {self.name} never started job {job_id}: {self.text()[-2000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
