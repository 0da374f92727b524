"""The worker's main loop: claim a job (long poll), run it, repeat; stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from types import FrameType

from app.core.protocol import ClaimedJob, UnsupportedJob
from app.core.states import JobStatus
from worker.capabilities import describe
from worker.client import LeaseGone, ProtocolError, ServiceUnavailable, WorkerClient
from worker.process import Child, Shutdown
from worker.runner import JobRun, Outcome
from worker.settings import WorkerConfig

log = logging.getLogger("trainjobs.worker")

MAX_BACKOFF = 10.0


class Agent:
    def __init__(
        self,
        client: WorkerClient,
        config: WorkerConfig,
        *,
        max_jobs: int | None = None,
        once: bool = False,
    ) -> None:
        self.client = client
        self.config = config
        self.max_jobs = 1 if once else max_jobs
        self.once = once
        self.shutdown = Shutdown()
        self.outcomes: list[Outcome] = []
        self.next_child: Child | None = None
        self.capabilities = describe(config.device)
        """Sent with each claim: the service hands this worker only jobs it can run."""
        """The next job's process, started while idle (WorkerConfig.prestart)."""

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self.shutdown.requested.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
            else:
                log.info(
                    "%s: finishing the current step, saving a checkpoint and giving the job back (again to stop now)",
                    signal.Signals(signum).name,
                )
            self.shutdown.signal()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Serve jobs until told to stop (or --once / --max-jobs); returns the exit code."""
        log.info("worker %s on %s serving %s", self.config.worker_id, self.config.device, self.client.http.base_url)
        try:
            return self._serve()
        finally:
            if self.next_child is not None:
                self.next_child.discard()
                self.next_child = None

    def _prestart(self) -> None:
        if (
            not self.config.settings.prestart
            or self.once
            or self.next_child is not None
            or self.shutdown.requested.is_set()
        ):
            return
        try:
            self.next_child = Child(mp.get_context(self.config.settings.start_method))
        except OSError as exc:  # out of memory or file descriptors: the job will start its own process
            log.warning("could not start the next job's process ahead (%s); going on without", exc)
            return
        log.info("started the next job's process ahead: pid %s", self.next_child.pid)

    def _serve(self) -> int:
        delay, outage_logged = 0.5, False
        self._prestart()
        while not self.shutdown.requested.is_set():
            try:
                job = self.client.claim(
                    self.config.worker_id, self.config.device, self.config.settings.poll_seconds, self.capabilities
                )
            except ServiceUnavailable as exc:
                if not outage_logged:
                    log.warning("service unavailable (%s); retrying with backoff up to %.0f s", exc, MAX_BACKOFF)
                    outage_logged = True
                self.shutdown.requested.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            except UnsupportedJob as exc:  # a job from a newer service: end it with the reason, go on
                log.error("job %s: %s", exc.job_id, exc)
                self._fail_unreadable(exc)
                self.outcomes.append(JobStatus.FAILED)
                if self.max_jobs is not None and len(self.outcomes) >= self.max_jobs:
                    break
                continue
            except ProtocolError as exc:
                log.error("the service refused this worker: %s", exc)
                return 2
            if outage_logged:
                log.info("service reachable again")
                delay, outage_logged = 0.5, False
            if job is None:
                if self.once:
                    break
                continue
            if self.shutdown.requested.is_set():
                self._give_back(job.id, job.lease_token)
                break
            self.outcomes.append(self._run(job))
            if self.max_jobs is not None and len(self.outcomes) >= self.max_jobs:
                break
            self._prestart()
        log.info("worker %s stopped after %s job(s)", self.config.worker_id, len(self.outcomes))
        return 0

    def _run(self, job: ClaimedJob) -> Outcome:
        run = JobRun(self.client, job, self.config, self.shutdown, prestarted=self.next_child)
        self.next_child = None
        try:
            return run.run()
        except (ServiceUnavailable, ProtocolError) as exc:
            log.error(
                "job %s: could not report to the service (%s); its lease will expire and it will be retried",
                job.id,
                exc,
            )
            return "lease_lost"
        finally:
            self.next_child = run.prestarted  # unused when the job ended before its training started

    def _fail_unreadable(self, exc: UnsupportedJob) -> None:
        try:
            self.client.finish(exc.job_id, exc.lease_token, JobStatus.FAILED, error=str(exc))
        except (ServiceUnavailable, ProtocolError, LeaseGone) as error:
            log.warning("job %s: could not report it (%s); its lease will expire", exc.job_id, error)

    def _give_back(self, job_id: int, token: str) -> None:
        try:
            self.client.release(job_id, token)
        except (ServiceUnavailable, ProtocolError, LeaseGone) as exc:
            log.warning("job %s: could not give it back (%s); its lease will expire", job_id, exc)


def default_worker_id() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def resolve_device(requested: str) -> str:
    """auto: CUDA if available, else MPS, else CPU; cuda:N is checked against the devices present."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"trainjobs-worker: --device {requested}: CUDA is not available on this machine")
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise SystemExit(
                f"trainjobs-worker: --device {requested}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif requested == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("trainjobs-worker: --device mps: MPS is not available on this machine")
    return requested
