"""The worker's main loop: claim a job (long poll) while a device is free, run each in a thread of its own,
repeat; stop cleanly on SIGTERM/SIGINT.

A worker manages its devices (``Slots``): one CPU (or MPS, or one GPU), or the GPUs ``--gpus`` names. Each
claim says how many are free, and the service hands out only a job that fits them: single-GPU jobs run
side by side, an N-GPU job takes N GPUs, and a worker whose devices are all busy does not claim.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
from types import FrameType

from app.core.protocol import Capabilities, ClaimedJob, UnsupportedJob
from app.core.states import JobStatus
from app.core.structured_logs import job_context
from worker.capabilities import Inventory
from worker.client import LeaseGone, ProtocolError, ServiceUnavailable, WorkerClient
from worker.process import Child, Shutdown
from worker.runner import JobRun, Outcome
from worker.settings import WorkerConfig

log = logging.getLogger("trainjobs.worker")

MAX_BACKOFF = 10.0


class Slots:
    """The worker's devices, free or running a job: taken when a job starts, given back when it ends."""

    def __init__(self, devices: tuple[str, ...]) -> None:
        self.devices = devices
        self.busy: set[str] = set()
        self.changed = threading.Condition()

    def free(self) -> int:
        with self.changed:
            return len(self.devices) - len(self.busy)

    def take(self, count: int) -> list[str] | None:
        """``count`` free devices (in order), now busy; None if there are fewer."""
        with self.changed:
            free = [d for d in self.devices if d not in self.busy]
            if len(free) < count:
                return None
            self.busy.update(free[:count])
            return free[:count]

    def taken(self) -> set[str]:
        with self.changed:
            return set(self.busy)

    def give(self, devices: list[str]) -> None:
        with self.changed:
            self.busy.difference_update(devices)
            self.changed.notify_all()

    def wait_for_one(self, timeout: float) -> None:
        with self.changed:
            if len(self.busy) >= len(self.devices):
                self.changed.wait(timeout)


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
        self.slots = Slots(config.devices)
        self.inventory = Inventory.of(config.devices)
        """Sent with each claim and heartbeat: the service hands this worker only jobs it can run and fit."""
        self.next_child: Child | None = None
        """The next job's process, started while idle (WorkerConfig.prestart)."""
        self.started = 0
        self.runs: list[threading.Thread] = []
        self.lock = threading.Lock()

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
        log.info(
            "worker %s on %s serving %s",
            self.config.worker_id,
            ", ".join(self.config.devices),
            self.client.http.base_url,
        )
        try:
            return self._serve()
        finally:
            for thread in self.runs:
                thread.join()
            with self.lock:
                if self.next_child is not None:
                    self.next_child.discard()
                    self.next_child = None

    def capabilities(self) -> Capabilities:
        """This worker now: what it runs and which of its devices are free."""
        return self.inventory.capabilities(self.slots.taken())

    def _prestart(self) -> None:
        with self.lock:
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

    def _done_claiming(self) -> bool:
        return self.max_jobs is not None and self.started >= self.max_jobs

    def _serve(self) -> int:
        delay, outage_logged = 0.5, False
        self._prestart()
        while not self.shutdown.requested.is_set() and not self._done_claiming():
            self._prestart()  # here, never in a job's thread: a child dies with the thread that started it
            if self.slots.free() == 0:
                self.slots.wait_for_one(1.0)
                continue
            try:
                job = self.client.claim(
                    self.config.worker_id,
                    self.config.device,
                    self.config.settings.poll_seconds,
                    self.capabilities(),
                )
            except ServiceUnavailable as exc:
                if not outage_logged:
                    log.warning("service unavailable (%s); retrying with backoff up to %.0f s", exc, MAX_BACKOFF)
                    outage_logged = True
                self.shutdown.requested.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            except UnsupportedJob as exc:  # a job from a newer service: end it with the reason, go on
                log.error("job %s: %s", exc.job_id, exc, extra={"job_id": exc.job_id})
                self._fail_unreadable(exc)
                self.outcomes.append(JobStatus.FAILED)
                self.started += 1
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
            self._start(job)
        log.info("worker %s stopped claiming after %s job(s)", self.config.worker_id, self.started)
        return 0

    def _start(self, job: ClaimedJob) -> None:
        """Run ``job`` on the devices it needs, in a thread of its own (the next claim goes on meanwhile)."""
        devices = self.slots.take(_devices_needed(job, self.inventory.gpus))
        if devices is None:  # more than the claim said was free (an older service): another worker takes it
            log.warning(
                "job %s needs more devices than are free here; giving it back", job.id, extra={"job_id": job.id}
            )
            self._give_back(job.id, job.lease_token)
            return
        self.started += 1
        with self.lock:
            prestarted, self.next_child = self.next_child, None
        run = JobRun(self.client, job, self.config, self.shutdown, prestarted, devices, self.capabilities)
        thread = threading.Thread(target=self._run, args=(run, devices), name=f"job-{job.id}")
        self.runs = [t for t in self.runs if t.is_alive()] + [thread]
        thread.start()

    def _run(self, run: JobRun, devices: list[str]) -> None:
        try:
            with job_context(job_id=run.id, attempt=run.job.attempt, node=run.job.node):
                outcome = run.run()
        except (ServiceUnavailable, ProtocolError) as exc:
            log.error(
                "job %s: could not report to the service (%s); its lease will expire and it will be retried",
                run.id,
                exc,
                extra={"job_id": run.id, "attempt": run.job.attempt},
            )
            outcome = "lease_lost"
        finally:
            with self.lock:  # a process started ahead that its job never used serves the next
                if run.prestarted is not None and self.next_child is None:
                    self.next_child = run.prestarted
                elif run.prestarted is not None:
                    run.prestarted.discard()
            self.slots.give(devices)
        self.outcomes.append(outcome)

    def _fail_unreadable(self, exc: UnsupportedJob) -> None:
        try:
            self.client.finish(exc.job_id, exc.lease_token, JobStatus.FAILED, error=str(exc))
        except (ServiceUnavailable, ProtocolError, LeaseGone) as error:
            log.warning(
                "job %s: could not report it (%s); its lease will expire",
                exc.job_id,
                error,
                extra={"job_id": exc.job_id},
            )

    def _give_back(self, job_id: int, token: str) -> None:
        try:
            self.client.release(job_id, token)
        except (ServiceUnavailable, ProtocolError, LeaseGone) as exc:
            log.warning(
                "job %s: could not give it back (%s); its lease will expire", job_id, exc, extra={"job_id": job_id}
            )


def _devices_needed(job: ClaimedJob, gpus: int) -> int:
    """Devices of this worker a node of ``job`` takes: its GPUs on a GPU worker; the one device elsewhere."""
    resources = job.spec.get("resources")
    wanted = resources.get("gpus", 1) if isinstance(resources, dict) else 1
    return max(1, int(wanted)) if gpus and isinstance(wanted, int) else 1


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


def resolve_gpus(requested: str) -> list[str]:
    """``all`` or ``0,1,3``: the CUDA devices a worker manages, checked against those present."""
    import torch

    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if present == 0:
        raise SystemExit(f"trainjobs-worker: --gpus {requested}: no CUDA device on this machine")
    indices = list(range(present)) if requested == "all" else [int(i) for i in requested.split(",")]
    missing = [i for i in indices if i >= present]
    if missing or len(set(indices)) != len(indices):
        raise SystemExit(f"trainjobs-worker: --gpus {requested}: this machine has CUDA devices 0..{present - 1}")
    return [f"cuda:{i}" for i in indices]
