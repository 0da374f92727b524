"""TRAINJOBS_LOG_FORMAT=json: one JSON object a line, naming the job a line is about."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from typing import Any

from app.core.structured_logs import JsonFormatter, job_context


def lines_of(run: Any, worker: str | None = "w1", name: str = "trainjobs.test-structured") -> list[dict[str, Any]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(worker))
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        run(log)
    finally:
        log.removeHandler(handler)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_names_the_job_its_thread_works_for_and_its_heartbeat_thread_too() -> None:
    def run(log: logging.Logger) -> None:
        log.info("before any job")
        with job_context(job_id=7, attempt=2, node=None):
            log.info("job %s: started", 7)
            beats = threading.Thread(target=contextvars.copy_context().run, args=(log.warning, "heartbeat failed"))
            beats.start()
            beats.join()
        log.info("after it", extra={"job_id": 9})

    first, started, beat, after = lines_of(run)
    assert first["message"] == "before any job" and first["worker"] == "w1" and "job_id" not in first
    assert started == {**started, "message": "job 7: started", "job_id": 7, "attempt": 2, "level": "INFO"}
    assert "node" not in started  # None: left out
    assert beat["job_id"] == 7 and beat["level"] == "WARNING"
    assert after["job_id"] == 9 and "attempt" not in after
    assert started["time"].endswith("+00:00") and started["logger"] == "trainjobs.test-structured"


def test_an_exception_is_one_field_of_one_line() -> None:
    def run(log: logging.Logger) -> None:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("reaper failed")

    (line,) = lines_of(run, worker=None)
    assert line["message"] == "reaper failed" and "worker" not in line
    assert "ValueError: bad" in line["exception"] and "Traceback" in line["exception"]


def test_an_access_log_line_has_its_request_in_fields() -> None:
    def run(log: logging.Logger) -> None:
        log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/jobs/3", "1.1", 200)

    (line,) = lines_of(run, name="uvicorn.access")
    assert line["message"] == '127.0.0.1:5000 - "GET /jobs/3 HTTP/1.1" 200'
    assert (line["client"], line["method"], line["path"], line["status"]) == ("127.0.0.1:5000", "GET", "/jobs/3", 200)
