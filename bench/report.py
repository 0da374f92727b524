"""The machine a run measured, the markdown table, and the results file."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .stats import Result

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe_machine(device: str, threads: int) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "host": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": threads,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "git_commit": _git_commit(),
        "load_average_start": list(os.getloadavg()),
    }


def format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| benchmark | measure | median | min - max | n | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for result in results:
        for m in result.measures:
            spread = f"{format_number(min(m.samples))} - {format_number(max(m.samples))}"
            met = {True: "yes", False: "**no**", None: ""}[m.met]
            name = m.name.replace("|", "\\|")
            lines.append(
                f"| {result.name} | {name} | {format_number(m.median)} {m.unit} | {spread} | {len(m.samples)} "
                f"| {m.target or ''} | {met} |"
            )
    return "\n".join(lines)


def results_path(directory: Path, now: datetime, *, quick: bool, only: list[str] | None) -> Path:
    """``<date>-<host>.json`` for a full run of everything; a quick or partial run says so in its name."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    suffix = ("-quick" if quick else "") + "".join(f"-{name}" for name in only or [])
    return directory / f"{now:%Y-%m-%d}-{host}{suffix}.json"


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write the JSON atomically (a ``.tmp`` beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def started_at() -> datetime:
    return datetime.now(UTC)
