"""What the dashboard's templates show, computed from jobs: durations, best metrics, spec differences,
and where in a submitted text a refused field is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from app.core.models import Job, utcnow
from app.core.states import JobStatus

STATUS_CLASS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


def duration(seconds: float | None) -> str:
    """``45s``, ``3m 12s``, ``2h 05m``, ``3d 4h``: what a person reads at a glance."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def job_seconds(job: Job, now: datetime | None = None) -> float | None:
    """How long the job has run (so far, while it runs)."""
    if job.started_at is None:
        return None
    end = job.finished_at or (now or utcnow())
    return (end - job.started_at).total_seconds()


def iso(moment: datetime) -> str:
    """ISO 8601 with its zone (times read back from SQLite have none: they are UTC), for the browser to localise."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def best_metric(result: dict[str, Any] | None) -> tuple[str, float] | None:
    """The job's primary metric at its best epoch, from its result."""
    if not result or not isinstance(result.get("primary_metric"), str):
        return None
    name = result["primary_metric"]
    value = result.get(f"best_{name}", result.get(name))
    return (name, float(value)) if isinstance(value, int | float) else None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists are values."""
    if not isinstance(value, dict) or (prefix and not value):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing(specs: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The dotted spec fields whose values are not the same in every spec, each with its values as text."""
    flat = [flatten(spec) for spec in specs]
    paths = sorted({path for f in flat for path in f})
    missing = object()
    rows = []
    for path in paths:
        values = [f.get(path, missing) for f in flat]
        if len(specs) > 1 and all(v == values[0] for v in values):
            continue
        rows.append((path, ["—" if v is missing else json.dumps(v) for v in values]))
    return rows


def result_rows(results: Sequence[dict[str, Any] | None]) -> list[tuple[str, list[str]]]:
    """Every result field of any of the jobs, with each job's value as text."""
    names = sorted({name for r in results if r for name in r})
    return [(n, ["—" if not r or n not in r else number(r[n]) for r in results]) for n in names]


def size(count: int) -> str:
    """``532 B``, ``12.3 KiB``, ``4.0 MiB``, ``1.2 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def line_of_job(text: str, index: int) -> int:
    """The line (from 0) where job ``index`` of a list of jobs starts: its ``kind``."""
    starts = [i for i, line in enumerate(text.splitlines()) if re.search(r"""["']?kind["']?\s*:""", line)]
    return starts[index] if index < len(starts) else 0


def line_of(text: str, loc: Iterable[Any], start: int = 0) -> int | None:
    """The line (from 1) of ``text`` that holds the last key of ``loc``, searched for below its parents
    (and below line ``start``)."""
    keys = [str(p) for p in loc if isinstance(p, str) and p not in ("body", "pretrain", "finetune")]
    lines = text.splitlines()
    found = None
    for key in keys:
        pattern = re.compile(rf"""(^|[\s{{,])["']?{re.escape(key)}["']?\s*:""")
        for i in range(start, len(lines)):
            if pattern.search(lines[i]):
                start, found = i, i + 1
                break
    return found
