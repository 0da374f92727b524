"""Benchmark 4: requests per second and latency of the public API on SQLite.

A load generator in its own process on loopback keeps 10 requests in flight: ``wrk`` (one thread)
where it is installed, otherwise ``python -m bench.loadgen`` (async httpx). Rounds of
``GET /bench/constant`` (the framework's ceiling: the same app, ``bench/ceiling.py``, answering a
constant object to a user token), ``GET /jobs/{id}`` and ``POST /jobs`` alternate; each round gives
requests per second and the p50 and p99 latency.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from devtools.servers import REPO, ApiServer

from .load import databases
from .servers import submit
from .stats import Result, at_least, at_most, interleave, ratios

CONNECTIONS = 10
JOB: dict[str, Any] = {
    "kind": "pretrain",
    "name": "digits-ae",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp_autoencoder", "hidden": [256], "bottleneck": 32},
    "train": {"epochs": 20, "batch_size": 64, "optimizer": "adam", "lr": 0.001},
}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str, percent: str) -> float:
    found = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {percent}% latency in wrk's output:\n{text}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def run_wrk(url: str, token: str, seconds: float, body: dict[str, Any] | None, scripts: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
    cmd += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        script = scripts / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        cmd += ["-s", str(script)]
    text = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{text}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket = re.search(r"Socket errors:(.*)", text)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in re.findall(r"\d+", socket.group(1))) if socket else 0
    return {"rps": float(rps.group(1)), "p50_ms": _wrk_ms(text, "50"), "p99_ms": _wrk_ms(text, "99"), "errors": errors}


def run_httpx(url: str, token: str, seconds: float, body: dict[str, Any] | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.loadgen", url, "--connections", str(CONNECTIONS), "--seconds", str(seconds)]
    cmd += ["--token", token]
    if body is not None:
        cmd += ["--method", "POST", "--body", json.dumps(body)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO, timeout=seconds + 120).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(*, quick: bool, loadgen: str = "auto") -> Result:
    seconds, rounds = (1.0, 2) if quick else (5.0, 5)
    tool = ("wrk" if shutil.which("wrk") else "httpx") if loadgen == "auto" else loadgen
    result = Result(
        "api",
        "API throughput on SQLite (loopback load generator)",
        {"load_generator": tool, "connections": CONNECTIONS, "seconds_per_round": seconds, "rounds": rounds},
    )
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        with (
            ApiServer(root / "api", module="bench.ceiling", max_active_jobs_per_user="100000000") as api,
            api.client(timeout=30) as http,
        ):
            job_url = f"{api.url}/jobs/{submit(http, JOB)['id']}"
            post_url = f"{api.url}/jobs"
            constant_url = f"{api.url}/bench/constant"

            def load(url: str, body: dict[str, Any] | None) -> dict[str, float]:
                if tool == "wrk":
                    return run_wrk(url, api.token, seconds, body, root)
                return run_httpx(url, api.token, seconds, body)

            runs = interleave(
                {
                    "constant": lambda: load(constant_url, None),
                    "GET": lambda: load(job_url, None),
                    "POST": lambda: load(post_url, JOB),
                },
                rounds,
                warmup=True,
            )
    result.add(
        "GET /bench/constant (the framework's ceiling) requests/s", "req/s", [r["rps"] for r in runs["constant"]]
    )
    result.add(
        "GET /jobs/{id} / the ceiling (round by round)",
        "x",
        ratios([r["rps"] for r in runs["GET"]], [r["rps"] for r in runs["constant"]]),
        ">= 0.8",
        check=at_least(0.8),
    )
    if not quick:
        processes_on_postgresql(result, tool, seconds, rounds)
    for name, target_rps in (("GET", 1000.0), ("POST", None)):
        label = "GET /jobs/{id}" if name == "GET" else "POST /jobs"
        rs = runs[name]
        if any(r["errors"] for r in rs):
            result.notes.append(f"{label}: {sum(r['errors'] for r in rs):.0f} error responses")
        if target_rps:
            result.add(
                f"{label} requests/s", "req/s", [r["rps"] for r in rs], f">= {target_rps:g}", check=at_least(target_rps)
            )
            result.add(f"{label} p50 latency", "ms", [r["p50_ms"] for r in rs])
            result.add(f"{label} p99 latency", "ms", [r["p99_ms"] for r in rs], "< 50", check=at_most(50))
        else:
            result.add(f"{label} requests/s", "req/s", [r["rps"] for r in rs])
            result.add(f"{label} p50 latency", "ms", [r["p50_ms"] for r in rs])
            result.add(f"{label} p99 latency", "ms", [r["p99_ms"] for r in rs])
    return result


def processes_on_postgresql(result: Result, tool: str, seconds: float, rounds: int) -> None:
    """GET /jobs/{id} of one API process against two (``trainjobs-api --workers 2``) on one PostgreSQL database."""
    with tempfile.TemporaryDirectory(prefix="bench-api-pg-") as tmp:
        root = Path(tmp)
        with contextlib.ExitStack() as stack:
            found = databases(root, quick=False)  # the PostgreSQL database is dropped when it closes
            stack.callback(found.close)
            pg = next((url for backend, url in found if backend == "postgresql"), None)
            if pg is None:
                result.notes.append("no PostgreSQL reachable: one API process against two not measured")
                return
            one = stack.enter_context(ApiServer(root / "api-1", pg, args=("--workers", "1")))
            two = stack.enter_context(ApiServer(root / "api-2", pg, args=("--workers", "2")))
            with one.client(timeout=30) as http:
                path = f"/jobs/{submit(http, JOB)['id']}"  # one database: the same job and admin token for both
            urls = {"1": one.url + path, "2": two.url + path}

            def load(processes: str) -> float:
                url = urls[processes]
                run = (
                    run_wrk(url, one.token, seconds, None, root)
                    if tool == "wrk"
                    else run_httpx(url, one.token, seconds, None)
                )
                return run["rps"]

            runs = interleave({p: functools.partial(load, p) for p in urls}, rounds, warmup=True)
    result.add("PostgreSQL, one API process: GET /jobs/{id} requests/s", "req/s", runs["1"])
    result.add("PostgreSQL, two API processes: GET /jobs/{id} requests/s", "req/s", runs["2"])
    result.add(
        "PostgreSQL: two API processes / one (round by round)",
        "x",
        ratios(runs["2"], runs["1"]),
        ">= 1.6",
        check=at_least(1.6),
    )
