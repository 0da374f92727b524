"""What a job's run sends the service besides its checkpoints: metric points in batches (kept through an
outage, up to a bound), log lines, and calls retried until they go through (``retrying``)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from app.core.protocol import MetricIn
from app.core.states import ErrorClass
from worker.client import LeaseGone, ProtocolError, ServiceUnavailable, StorageFull, WorkerClient
from worker.logs import Captured, JobLog
from worker.messages import Metrics
from worker.process import Shutdown
from worker.settings import WorkerSettings

log = logging.getLogger("trainjobs.worker")

METRICS_BATCH, METRICS_FLUSH_SECONDS, METRICS_BUFFER_MAX = 1000, 1.0, 200_000


class Abandon(Exception):
    """The job cannot go on for a reason outside it (the service cannot store its checkpoints)."""

    def __init__(self, message: str, error_class: ErrorClass | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


class Relay:
    """One run's line to the service, used by the runner's threads."""

    def __init__(
        self,
        client: WorkerClient,
        job_id: int,
        token: str,
        settings: WorkerSettings,
        shutdown: Shutdown,
        lease_lost: threading.Event,
        first_seq: int = 0,
    ) -> None:
        self.client, self.id, self.token, self.settings = client, job_id, token, settings
        self.shutdown, self.lease_lost = shutdown, lease_lost
        self.log = JobLog(first_seq=first_seq)
        self.output: Captured | None = None
        """The training process's output, once it runs."""
        self.last_log_flush = self.last_flush = time.monotonic()
        self.metrics: deque[MetricIn] = deque()
        self.dropped_metrics = 0
        self._outage_logged = self._non_finite_logged = False

    def buffer(self, message: Metrics) -> None:
        points = [p for p in message.points if math.isfinite(p["value"])]
        if len(points) < len(message.points) and not self._non_finite_logged:
            log.warning("job %s: dropped metric points that are not finite numbers (NaN or infinity)", self.id)
            self._non_finite_logged = True
        self.metrics.extend(MetricIn.model_construct(**p, time=message.time) for p in points)
        overflow = len(self.metrics) - METRICS_BUFFER_MAX
        for _ in range(max(0, overflow)):
            self.metrics.popleft()
            self.dropped_metrics += 1

    def flush_metrics(self, *, force: bool) -> None:
        if not self.metrics:
            return
        due = force or len(self.metrics) >= METRICS_BATCH or time.monotonic() - self.last_flush >= METRICS_FLUSH_SECONDS
        if not due:
            return
        while self.metrics:
            batch = [self.metrics[i] for i in range(min(METRICS_BATCH, len(self.metrics)))]
            try:
                self.client.send_metrics(self.id, self.token, batch)
            except ServiceUnavailable as exc:
                self.outage(exc)
                return  # keep them buffered; the next flush tries again
            for _ in batch:
                self.metrics.popleft()
        self.recovered()
        self.last_flush = time.monotonic()
        if self.dropped_metrics:
            log.warning(
                "job %s: the service was away too long; %s metric points were dropped", self.id, self.dropped_metrics
            )
            self.dropped_metrics = 0

    def flush_logs(self, *, force: bool) -> None:
        if self.output is not None:
            for stream, at, text in self.output.take():
                self.log.add(stream, text, at)
        due = force or len(self.log.pending) >= 1000 or time.monotonic() - self.last_log_flush >= 1.0
        if not due:
            return
        while batch := self.log.batch():
            try:
                self.client.send_logs(self.id, self.token, batch)
            except ServiceUnavailable as exc:
                self.outage(exc)
                return  # kept; the next flush sends them again (the service stores each seq once)
            except ProtocolError as exc:  # refused as it is: the job goes on without these lines
                log.warning("job %s: the service refused %s log line(s): %s", self.id, len(batch), exc)
            self.log.sent(len(batch))
        if self.log.dropped:
            dropped, self.log.dropped = self.log.dropped, 0
            self.log.system(f"{dropped} line(s) of output were dropped while the service was away")
        self.last_log_flush = time.monotonic()

    def retrying(self, what: str, call: Callable[[], object]) -> None:
        """Call until it succeeds; LeaseGone propagates; an immediate shutdown gives up.

        A full disk at the service (507) is retried for ``storage_retry_seconds``, then the job is
        given up with that reason (``Abandon``): training never goes on silently with nowhere to save.
        """
        delay, full_since = 0.5, None
        while True:
            try:
                call()
                self.recovered()
                return
            except StorageFull as exc:
                if full_since is None:
                    full_since = time.monotonic()
                    limit = self.settings.storage_retry_seconds
                    log.warning(
                        "job %s: no room at the service for the %s (%s); retrying for %.0f s", self.id, what, exc, limit
                    )
                waited = time.monotonic() - full_since
                if waited > self.settings.storage_retry_seconds:
                    raise Abandon(f"the {what} failed for {waited:.0f} s: {exc}") from None
            except ServiceUnavailable as exc:
                self.outage(exc)
            if self.lease_lost.is_set():
                raise LeaseGone(f"lease lost while retrying the {what}")
            if self.shutdown.immediate.wait(delay):
                raise ServiceUnavailable(f"gave up the {what}: shutting down")
            delay = min(delay * 2, 5.0)

    def outage(self, exc: Exception) -> None:
        if not self._outage_logged:
            log.warning("job %s: service unavailable (%s); training goes on, retrying", self.id, exc)
            self._outage_logged = True

    def recovered(self) -> None:
        if self._outage_logged:
            log.info("job %s: service reachable again", self.id)
            self._outage_logged = False

    def flush_or_raise(self) -> None:
        self.flush_metrics(force=True)
        if self.metrics:
            raise ServiceUnavailable("metrics still buffered")

    def flush_logs_or_raise(self) -> None:
        self.flush_logs(force=True)
        if self.log.pending:
            raise ServiceUnavailable("log lines still buffered")
