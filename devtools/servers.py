"""Real trainjobs processes for the tests and the benchmarks: an API server, workers, and waiting on them.

The same processes a user starts (``trainjobs-api``, ``python -m worker``), each with its port,
folders and log file under one root, run from that root (so no ``.env`` of the checkout leaks in).
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
WORKER_TOKEN = f"dev-worker-{secrets.token_urlsafe(24)}"
"""The worker token (``TRAINJOBS_WORKER_TOKEN``) every server and worker started here shares: one per run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float = 60, what: str = "condition", interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_env(**extra: str) -> dict[str, str]:
    """This environment, with the checkout importable from any working directory."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), **extra}


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    """``lease_seconds="2"`` -> ``TRAINJOBS_LEASE_SECONDS=2``."""
    return {f"TRAINJOBS_{name.upper()}": value for name, value in settings.items()}


class CallerAuth(httpx.Auth):
    """A user token on the public API, the worker token on /worker/*, as the real callers send them."""

    def __init__(self, user_token: str) -> None:
        self.user_token = user_token

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        token = WORKER_TOKEN if request.url.path.startswith("/worker/") else self.user_token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class ApiServer:
    """``trainjobs-api`` on a free port (or ``port``), with its artifacts, data and log under ``root``.

    Without ``database_url`` it gets a fresh SQLite file under ``root``, migrated at start-up.
    ``settings`` are service settings by name (``lease_seconds="2"``), ``args`` further options of
    ``trainjobs-api`` (``("--workers", "2")``), ``env`` further variables. Workers reach it with
    ``WORKER_TOKEN``; ``token`` is its first admin's user token (from the credentials file its
    first start writes).
    """

    def __init__(
        self,
        root: Path,
        database_url: str | None = None,
        *,
        port: int | None = None,
        log_level: str = "warning",
        access_log: bool = False,
        open_files: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        module: str = "app.cli",
        **settings: str,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.migrate = database_url is None
        defaults = {
            "database_url": database_url or f"sqlite:///{root / 'trainjobs.db'}",
            "artifacts_dir": str(root / "artifacts"),
            "data_dir": str(root / "data"),
            "port": str(self.port),
            "worker_token": WORKER_TOKEN,
            "admin_credentials_file": str(root / "admin-credentials"),
        }
        self.env = process_env(**settings_env({**defaults, **settings}), **(env or {}))
        self.log = root / f"api-{self.port}.log"
        self.options = ["--log-level", log_level, *(["--access-log"] if access_log else []), *args]
        self.module = module
        """What ``python -m`` runs: ``app.cli`` (``trainjobs-api``), or a benchmark's wrapper of it."""
        self.open_files = open_files
        """The process's limit of open files (soft and hard), as ``ulimit -n`` would set it."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def token(self) -> str:
        """The first admin's user token, from the credentials file the service wrote on its first start."""
        for line in Path(self.env["TRAINJOBS_ADMIN_CREDENTIALS_FILE"]).read_text().splitlines():
            if line.startswith("export TRAINJOBS_TOKEN="):
                return line.split("=", 1)[1]
        raise RuntimeError("no token in the admin credentials file")

    @property
    def headers(self) -> dict[str, str]:
        """Authorization for the public API: the first admin's token."""
        return {"Authorization": f"Bearer {self.token}"}

    worker_headers = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    """Authorization for the worker protocol."""

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client that acts for the first admin on the public API and as a worker on /worker/*."""
        return httpx.Client(base_url=self.url, auth=CallerAuth(self.token), **options)

    def start(self, timeout: float = 60) -> ApiServer:
        cmd = [sys.executable, "-m", self.module, *self.options, *(["--migrate"] if self.migrate else [])]
        limit = self.open_files

        def limit_files() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, cwd=self.root, stdout=out, stderr=out, preexec_fn=limit_files
            )
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        """Wait until ``/healthz`` answers; fail with the log's tail if the process exits or never does."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API did not become healthy: {self.log.read_text()[-2000:]}")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``trainjobs-api ARGS`` with this server's settings (its database), as an operator runs it on the server."""
        cmd = [sys.executable, "-m", "app.cli", *args]
        return subprocess.run(cmd, env=self.env, cwd=self.root, input=stdin, capture_output=True, text=True, timeout=60)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess:
    """``python -m worker`` serving ``api_url``, logging to ``root/worker-<name>.log``.

    ``threads``, ``poll_seconds``, ``start_method`` and ``log_level`` are passed on when given
    (None: the worker's default); ``args`` are further options, ``settings`` further worker
    settings by name (``storage_retry_seconds="3"``).
    """

    CHILD = re.compile(r"job (\d+): attempt \d+ of \d+ started child pid (\d+)")

    def __init__(
        self,
        api_url: str,
        root: Path,
        name: str = "worker",
        *args: str,
        device: str = "cpu",
        threads: int | None = 1,
        poll_seconds: float | None = 1,
        start_method: str | None = None,
        log_level: str | None = None,
        token: str | None = WORKER_TOKEN,
        **settings: str,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = root / f"worker-{name}.log"
        options = {"--threads": threads, "--poll-seconds": poll_seconds, "--start-method": start_method}
        options["--log-level"] = log_level
        cmd = [
            sys.executable, "-m", "worker",
            "--api", api_url,
            "--device", device,
            "--worker-id", name,
            "--work-dir", str(root / "work"),
            "--data-dir", str(root / "data"),
            *[part for flag, value in options.items() if value is not None for part in (flag, str(value))],
            *args,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            secret = {"TRAINJOBS_WORKER_TOKEN": token} if token else {}  # not in argv: ps shows that
            env = process_env(**secret, **settings_env(settings))
            self.proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[tuple[int, int]]:
        """(job id, child pid) for every job this worker started, from its log."""
        return [(int(j), int(p)) for j, p in self.CHILD.findall(self.text())]

    def child_of(self, job_id: int, timeout: float = 60) -> int:
        def found() -> int | None:
            return next((pid for j, pid in self.children() if j == job_id), None)

        try:
            return wait_until(found, timeout, f"worker {self.name} to start job {job_id}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its log ends: {self.text()[-2000:]}") from None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        terminate(self.proc)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
