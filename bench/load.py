"""Benchmark: the API under heavy read load, with a worker heartbeating throughout.

For each read route in turn, 200 clients (``wrk -c200``, or ``python -m bench.loadgen`` without
wrk) poll it for 30 s, as fast as they are answered. Meanwhile, each from its own process, a
worker heartbeats its running job every 100 ms and one more client polls the same route every
50 ms. Measured: every status the 200 clients got (a 500 is a failure), the heartbeat's latency
(its p99 must stay under 1 s: a lease is 60 s, and a slow heartbeat is how running jobs get
requeued), and how quickly a shed request (503) is answered. On SQLite, and on PostgreSQL when
one is reachable (``TRAINJOBS_BENCH_PG_URL``, default the local server's ``test`` database).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from app.core.migrate import upgrade
from devtools.servers import REPO, WORKER_TOKEN, ApiServer

from .servers import submit
from .stats import Result, at_most

CLIENTS = 200
ROUTES = ["/jobs?limit=20", "/healthz", "/jobs/{id}", "/jobs/{id}/metrics", "/jobs/{id}/checkpoints"]
JOB: dict[str, Any] = {
    "kind": "pretrain",
    "dataset": {"name": "synthetic", "num_samples": 32, "image_shape": [1, 8, 8]},
    "model": {"arch": "mlp_autoencoder", "hidden": [16], "bottleneck": 4},
    "train": {"epochs": 1, "batch_size": 16},
}
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STATUS_SCRIPT = """
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("counts")) do io.write(string.format("status %d %d\\n", code, n)) end
  end
end
"""


def wrk_statuses(url: str, token: str, seconds: float, script: Path) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t2",
        f"-c{CLIENTS}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
    ]
    cmd += ["-H", f"Authorization: Bearer {token}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    statuses: dict[str, int] = {}
    for code, n in re.findall(r"^status (\d+) (\d+)$", out, re.MULTILINE):  # a line per wrk thread
        statuses[code] = statuses.get(code, 0) + int(n)
    socket_errors = re.search(r"Socket errors:(.*)", out)
    if socket_errors:
        statuses["0"] = sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "statuses": statuses,
    }


def loadgen(
    url: str, token: str, seconds: float, connections: int, *, interval: float = 0, body: str | None = None
) -> subprocess.Popen[str]:
    """``python -m bench.loadgen`` in its own process (started now; ``.communicate()`` for its JSON)."""
    cmd = [sys.executable, "-m", "bench.loadgen", url, "--connections", str(connections), "--seconds", str(seconds)]
    cmd += ["--token", token, "--interval", str(interval)]
    if body is not None:
        cmd += ["--method", "POST", "--body", body]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=300)
    return dict(json.loads(out.strip().splitlines()[-1]))


def databases(root: Path, quick: bool) -> Generator[tuple[str, str], None, None]:
    """(backend, URL): a new SQLite file; then, in a full run, a new PostgreSQL database if one is reachable
    (dropped when the loop over them ends)."""
    url = f"sqlite:///{root / 'load.db'}"
    upgrade(url)
    found = [("sqlite", url)]
    admin_url = os.environ.get("TRAINJOBS_BENCH_PG_URL", PG_URL)
    name = f"trainjobs_bench_{uuid.uuid4().hex[:8]}"
    admin = None
    if not quick:
        try:
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            pg = admin_url.rsplit("/", 1)[0] + f"/{name}"
            upgrade(pg)
            found.append(("postgresql", pg))
        except Exception as exc:  # no server: SQLite only, and the table says so
            print(f"bench: load: no PostgreSQL ({type(exc).__name__}); SQLite only", file=sys.stderr)
            admin = None
    try:
        yield from found
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def seed(http: httpx.Client) -> tuple[int, str]:
    """Thirty queued jobs and one running, with 500 metric points: (its id, its lease)."""
    for _ in range(30):
        submit(http, JOB)
    job_id = submit(http, {**JOB, "priority": 10})["id"]
    claimed = http.post("/worker/claim", json={"worker_id": "bench", "device": "cpu"}).json()
    assert claimed["id"] == job_id, claimed
    points = [{"name": "train_loss", "step": s, "value": 1 / (s + 1)} for s in range(500)]
    http.post(f"/worker/jobs/{job_id}/metrics", json={"lease_token": claimed["lease_token"], "points": points})
    return job_id, claimed["lease_token"]


def measure_route(api: ApiServer, url: str, job_id: int, lease: str, seconds: float, tool: str) -> dict[str, Any]:
    beat = json.dumps({"lease_token": lease})
    heartbeats = loadgen(f"{api.url}/worker/jobs/{job_id}/heartbeat", WORKER_TOKEN, seconds, 1, interval=0.1, body=beat)
    prober = loadgen(url, api.token, seconds, 1, interval=0.05)
    if tool == "wrk":
        script = api.root / "statuses.lua"
        script.write_text(STATUS_SCRIPT)
        load = wrk_statuses(url, api.token, seconds, script)
    else:
        load = result_of(loadgen(url, api.token, seconds, CLIENTS))
        load["statuses"] = {code: s["count"] for code, s in load["statuses"].items()}
    return {"load": load, "heartbeat": result_of(heartbeats), "probe": result_of(prober)}


def run(*, quick: bool, loadgen_tool: str = "auto") -> Result:
    seconds = 1.0 if quick else 30.0
    tool = ("wrk" if shutil.which("wrk") else "httpx") if loadgen_tool == "auto" else loadgen_tool
    params = {"clients": CLIENTS, "seconds_per_route": seconds, "load_generator": tool, "routes": ROUTES}
    result = Result("load", "API under read load, a worker heartbeating (200 clients per route)", params)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        for backend, database_url in databases(root, quick):
            with ApiServer(root / backend, database_url) as api, api.client(timeout=30) as http:
                job_id, lease = seed(http)
                for route in ROUTES:
                    url = api.url + route.format(id=job_id)
                    got = measure_route(api, url, job_id, lease, seconds, tool)
                    result.extra[f"{backend} {route}"] = got
                    record(result, backend, route, got)
    return result


def record(result: Result, backend: str, route: str, got: dict[str, Any]) -> None:
    label = f"{backend}, GET {route}"
    statuses = {str(k): v for k, v in got["load"]["statuses"].items()}
    probe = got["probe"]["statuses"]
    served = sum(v for k, v in statuses.items() if k in ("200", "503"))
    result.add(f"{label}: answers of 500 (200 clients)", "answers", [statuses.get("500", 0)], "0", check=at_most(0))
    result.add(
        f"{label}: answers other than 200 or 503", "answers", [sum(statuses.values()) - served], "0", check=at_most(0)
    )
    result.add(f"{label}: requests/s (200 and 503)", "req/s", [got["load"]["rps"]])
    result.add(f"{label}: shed (503) share", "%", [100 * statuses.get("503", 0) / max(1, sum(statuses.values()))])
    beats = got["heartbeat"]["statuses"]
    result.add(f"{label}: heartbeat p99", "ms", [got["heartbeat"]["p99_ms"]], "< 1000", check=at_most(1000))
    result.add(
        f"{label}: heartbeats not 200",
        "answers",
        [got["heartbeat"]["requests"] - beats.get("200", {}).get("count", 0)],
        "0",
        check=at_most(0),
    )
    if "503" in probe:
        result.add(
            f"{label}: a shed request's answer p99 (503)", "ms", [probe["503"]["p99_ms"]], "< 100", check=at_most(100)
        )
    if "200" in probe:
        result.add(f"{label}: one more client's answer p99 (200)", "ms", [probe["200"]["p99_ms"]])
