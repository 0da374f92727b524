"""``TRAINJOBS_LOG_FORMAT=json``: the API and the worker log one JSON object a line, for a log pipeline.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, and where they apply
``job_id``, ``attempt``, ``node`` and ``worker``: from the record's ``extra``, else from the job the
thread works for (``job_context``, which the worker enters around each job's thread), else (``worker``)
from the process (a worker's id). An exception adds ``exception`` (its traceback, one string); an
access-log line (``--access-log``) adds ``client``, ``method``, ``path`` and ``status``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = ("job_id", "attempt", "node", "worker")

_job: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("trainjobs_job")


@contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Lines logged in this block (and in threads started with a copy of its context) name this job."""
    token = _job.set({**_job.get({}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _job.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _job.get({})
        for name in FIELDS:
            value = getattr(record, name, None)
            value = context.get(name) if value is None else value
            value = self.worker if value is None and name == "worker" else value
            if value is not None:
                line[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args
            line.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(log_format: LogFormat, level: str, *, worker: str | None = None) -> None:
    """The process's logging: lines to stderr, as text or as JSON objects (``worker``: this worker's id)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging as JSON lines: its own loggers (the access log too) and the service's, to stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": handler},
        "root": {"handlers": ["json"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "INFO", "propagate": True},
        },
    }
