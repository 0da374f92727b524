"""Runs one claimed job: downloads, the child process, heartbeats, relaying, and the end report.

The parent never trains. It heartbeats from its own thread, relays the child's metrics in batches
and its checkpoints and artifacts as uploads, turns a cancel or a shutdown into a stop request, and
reports how the job ended, including ends the child cannot report itself (a segfault, an OOM kill).
If the service says the lease is gone, the child is killed and nothing more is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import multiprocessing as mp
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from app.core.protocol import (
    MAX_ERROR_CHARS,
    Capabilities,
    CheckpointRef,
    ClaimedJob,
    FinishStatus,
    Progress,
    Result,
    UnsupportedJob,
)
from app.core.states import CheckpointFormat, CheckpointTag, ErrorClass, JobStatus
from worker import messages
from worker.client import LeaseGone, ProtocolError, ServiceUnavailable, UnstorableResult, WorkerClient
from worker.gang import launch_of, meet, placement
from worker.messages import CheckpointReady, Done, Ending, Failed, JobPayload, MemberDone, Metrics, Stopped
from worker.process import Child, Shutdown, describe_exit, exit_class, oom_kills
from worker.relay import Abandon, Relay
from worker.settings import WorkerConfig, service_is_local
from worker.threads import job_threads

log = logging.getLogger("trainjobs.worker")

Outcome = JobStatus | Literal["released", "lease_lost", "member"]
"""How a job ended for this worker: finished with a status, given back, taken away, or (a node without rank 0
of a multi-node job) its part done and the job ended by another node."""


PEER_REPORT_SECONDS = 15.0
"""How long a node whose ranks lost another node's waits for that node's worker to end the job (it knows why)."""


class JobRun:
    def __init__(
        self,
        client: WorkerClient,
        job: ClaimedJob,
        config: WorkerConfig,
        shutdown: Shutdown,
        prestarted: Child | None = None,
        devices: list[str] | None = None,
        describe: Callable[[], Capabilities] | None = None,
    ) -> None:
        self.client, self.job, self.config, self.shutdown = client, job, config, shutdown
        self.devices = devices or [config.device]
        self.describe = describe
        """What the worker is now, sent with each heartbeat."""
        self.id, self.token, self.settings = job.id, job.lease_token, config.settings
        self.dir = config.work_dir / f"job-{self.id}-attempt-{job.attempt}"
        self.mp: Any = mp.get_context(self.settings.start_method)  # typeshed's BaseContext lacks Process
        self.prestarted = prestarted
        """A process started ahead for this job; still here after ``run`` if the job never got to use it."""
        self.stop: Any = None
        self.lease_lost, self.ended, self.cancel_requested = threading.Event(), threading.Event(), threading.Event()
        self.progress: Progress | None = None
        self.relay = Relay(
            client, job.id, job.lease_token, self.settings, shutdown, self.lease_lost, first_seq=job.first_log_seq
        )
        self.log = self.relay.log
        self.stored: dict[CheckpointFormat, dict[CheckpointTag, str]] = {}
        """format -> tag -> sha256 of what this run uploaded: one file saved as best and last goes once."""

    # --- the whole job -----------------------------------------------------------

    def run(self) -> Outcome:
        self.dir.mkdir(parents=True, exist_ok=True)
        beats = threading.Thread(  # in this job's logging context (app/core/structured_logs.py)
            target=contextvars.copy_context().run,
            args=(self._heartbeat_loop,),
            name=f"heartbeat-{self.id}",
            daemon=True,
        )
        beats.start()
        try:
            return self._run()
        except LeaseGone as exc:
            log.warning("job %s: lease lost (%s); writing nothing more", self.id, exc)
            return "lease_lost"
        except Abandon as exc:  # the child is gone already (_run's finally)
            return self._end(JobStatus.FAILED, error=str(exc), cls=exc.error_class)
        finally:
            self.ended.set()
            beats.join(timeout=5)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> Outcome:
        try:
            spec = self.job.job_spec()
        except UnsupportedJob as exc:  # the service is newer than this worker: no child, no traceback
            return self._end(JobStatus.FAILED, error=str(exc))
        resume = self._download(self.job.resume_checkpoint, "resume.pt")
        init = self._download(self.job.init_checkpoint, "init.pt")
        device, visible = placement(self.devices)
        payload = JobPayload(
            spec,
            device,
            self.settings.data_dir,
            self.dir,
            resume,
            init,
            job_threads(
                spec,
                configured=self.settings.threads,
                jobs_at_once=len(self.config.devices),
                local_service=service_is_local(self.settings),
            ),
            visible,
            launch_of(self.job, spec, self.settings, self._meet() if self.job.node is not None else None),
        )
        child, self.prestarted, kills = self.prestarted, None, oom_kills()
        ahead = child is not None and child.hand(payload)
        if not ahead:
            if child is not None:
                log.warning("job %s: the process started ahead for it is gone; starting another", self.id)
                child.discard()
            child = Child(self.mp)
            child.hand(payload)  # if it died already, its exit code is reported below
        assert child is not None
        self.stop, self.relay.output = child.stop, child.output
        self._note_start(child.pid)
        log.info(
            "job %s: attempt %s of %s started child pid %s%s on %s%s",
            self.id,
            self.job.attempt,
            self.job.max_attempts,
            child.pid,
            " (started ahead)" if ahead else "",
            self.config.device,
            f", resuming from epoch {self.job.resume_checkpoint.epoch}" if self.job.resume_checkpoint else "",
        )
        try:
            final, killed = self._relay(child.process, child.messages)
            child.process.join()
        finally:  # the lease lost, or the service refusing an upload: the child must not outlive its job
            child.discard()
            child.output.join()  # its last lines, up to the end of its pipes
        return self._report(final, killed, child.process.exitcode, kills)

    # --- while the child runs -----------------------------------------------------

    def _relay(self, child: Any, reader: Any) -> tuple[Ending | None, str | None]:
        """Relay messages until the child ends; returns its final message and why we killed it, if we did."""
        grace_deadline: float | None = None
        killed: str | None = None
        final: Ending | None = None
        while True:
            if self.lease_lost.is_set():
                child.kill()
                raise LeaseGone("the service refused the heartbeat")
            if killed is None and self.shutdown.immediate.is_set():
                child.kill()
                killed = "shutdown"
            if (self.shutdown.requested.is_set() or self.cancel_requested.is_set()) and grace_deadline is None:
                self.stop.set()
                grace_deadline = time.monotonic() + self.settings.grace_seconds
            if killed is None and grace_deadline is not None and time.monotonic() > grace_deadline:
                log.warning(
                    "job %s: training did not stop within %.0f s; killing it", self.id, self.settings.grace_seconds
                )
                child.kill()
                killed = "grace"
            try:
                if reader.poll(0.2):
                    message = reader.recv()
                    if isinstance(message, Done | Stopped | Failed | MemberDone):
                        final = final or message  # the first end: a rank's own failure before the launcher's word
                    else:
                        self._handle(message)
            except (EOFError, OSError):
                return final, killed
            self.relay.flush_metrics(force=False)
            self.relay.flush_logs(force=False)

    def _handle(self, message: messages.ChildMessage) -> None:
        if isinstance(message, Metrics):
            self.relay.buffer(message)
        elif isinstance(message, messages.Progress):
            self.progress = Progress(epoch=message.epoch, epochs=message.epochs, step=message.step)
        elif isinstance(message, messages.ArtifactReady):
            upload = (self.id, self.token, message.name, message.path)
            self.relay.retrying(f"upload of {message.name}", lambda: self.client.upload_artifact(*upload))
            message.path.unlink(missing_ok=True)
        else:
            self._upload(message)

    def _upload(self, ready: CheckpointReady) -> None:
        self.relay.flush_metrics(force=True)
        self.relay.flush_logs(force=True)  # what led up to this checkpoint is stored before it
        metric = ready.metric if ready.metric is not None and math.isfinite(ready.metric) else None
        stored = self.stored.setdefault(ready.format, {})

        def upload() -> None:
            stored[ready.tag] = self.client.upload_checkpoint(
                self.id,
                self.token,
                tag=ready.tag,
                fmt=ready.format,
                path=ready.path,
                epoch=ready.epoch,
                step=ready.step,
                metric=metric,
                stored=stored,
                sha256=ready.sha256,
            )

        self.relay.retrying(f"upload of the '{ready.tag}' checkpoint", upload)
        ready.path.unlink(missing_ok=True)

    def _heartbeat_loop(self) -> None:
        while not self.ended.wait(self.job.heartbeat_seconds):
            try:
                caps = self.describe() if self.describe else None
                cancel = self.client.heartbeat(
                    self.id,
                    self.token,
                    self.progress,
                    node=self.job.node,
                    worker_id=self.config.worker_id,
                    capabilities=caps,
                )
                if cancel and not self.cancel_requested.is_set():
                    log.info("job %s: cancel requested; stopping at the next step", self.id)
                    self.cancel_requested.set()
            except LeaseGone:
                self.lease_lost.set()
                return
            except (ServiceUnavailable, ProtocolError) as exc:
                log.debug("job %s: heartbeat failed: %s", self.id, exc)

    # --- talking to the service ----------------------------------------------------

    def _note_start(self, pid: int) -> None:
        job, config = self.job, self.config
        self.log.system(
            f"attempt {job.attempt} of {job.max_attempts}: worker {config.worker_id} on {config.device}, process {pid}"
        )
        if job.resume_checkpoint is not None:
            ref = job.resume_checkpoint
            self.log.system(f"resuming from its '{ref.tag}' checkpoint: epoch {ref.epoch}, step {ref.step}")
        if job.init_checkpoint is not None:
            ref = job.init_checkpoint
            self.log.system(f"starting from job {ref.job_id}'s '{ref.tag}' checkpoint (epoch {ref.epoch})")

    def _download(self, ref: CheckpointRef | None, name: str) -> Path | None:
        if ref is None:
            return None
        dest = self.dir / name
        try:
            self.relay.retrying(
                f"download of {ref.url}", lambda: self.client.download(ref.url, dest, ref.sha256, self.token)
            )
        except ProtocolError as exc:  # gone since the claim (it named only files that existed)
            raise Abandon(
                f"job {ref.job_id}'s '{ref.tag}' checkpoint (epoch {ref.epoch}) that this job starts from "
                f"is gone from the service: {exc}"
            ) from None
        return dest

    # --- the end ---------------------------------------------------------------------

    def _end(
        self,
        status: FinishStatus,
        *,
        error: str | None = None,
        cls: ErrorClass | None = None,
        result: Result | None = None,
    ) -> Outcome:
        error = error[:MAX_ERROR_CHARS] if error is not None else None
        self.log.system(f"{status}" + (f" ({cls})" if cls else "") + (f": {error.splitlines()[0]}" if error else ""))
        self.relay.retrying("log upload", self.relay.flush_logs_or_raise)
        progress = self.progress
        try:
            self.relay.retrying(
                "finish",
                lambda: self.client.finish(
                    self.id, self.token, status, error=error, error_class=cls, result=result, progress=progress
                ),
            )
        except UnstorableResult as exc:
            status, error, result = JobStatus.FAILED, f"the job's result cannot be stored: {exc}", None
            self.relay.retrying("finish", lambda: self.client.finish(self.id, self.token, status, error=error))
        if status == JobStatus.FAILED:
            log.warning("job %s: failed: %s", self.id, (error or "").split("\n")[0])
        else:
            log.info("job %s: %s %s", self.id, status, result or "")
        return status

    def _report(self, final: Ending | None, killed: str | None, exitcode: int | None, kills: int | None) -> Outcome:
        self.relay.retrying("metrics upload", self.relay.flush_or_raise)
        if isinstance(final, Done) and killed is None:
            return self._end(JobStatus.SUCCEEDED, result=final.result)
        if isinstance(final, Failed):
            error = f"{final.reason}\n\n{final.traceback}" if final.traceback else final.reason
            return self._end(JobStatus.FAILED, error=error, cls=final.error_class)
        if isinstance(final, MemberDone) and killed is None:
            return self._await_end()
        lost_peer = isinstance(final, Failed) and final.error_class == ErrorClass.INFRA and self.job.node is not None
        if lost_peer and self._hold_node(PEER_REPORT_SECONDS):
            return "member"  # its ranks lost another node's, whose worker said what went wrong there
        stopped = isinstance(final, Stopped)
        if self.cancel_requested.is_set() and (stopped or killed == "grace"):
            return self._end(JobStatus.CANCELLED)
        # A node of a multi-node job stops when another node's worker shuts down: all go back together.
        mine = self.shutdown.requested.is_set() and (stopped or killed is not None)
        if mine or (stopped and self.job.node is not None):
            who = f"worker {self.config.worker_id} is" if mine else "a worker of another node of the job is"
            self.log.system(f"released: {who} shutting down; another resumes the job")
            self.relay.retrying("log upload", self.relay.flush_logs_or_raise)
            self.relay.retrying("release", lambda: self.client.release(self.id, self.token))
            log.info("job %s: given back to the queue for another worker to resume", self.id)
            return "released"
        return self._end(JobStatus.FAILED, error=describe_exit(exitcode), cls=exit_class(exitcode, kills))

    def _meet(self) -> str:
        """Where this multi-node job's ranks meet (gang.meet), waiting for node 0 at most two leases."""
        deadline = time.monotonic() + 2 * self.job.lease_seconds
        try:
            return meet(self.client, self.job, self.settings, self.lease_lost, self.shutdown.requested, deadline)
        except TimeoutError as exc:
            raise Abandon(str(exc), ErrorClass.INFRA) from None
        except OSError as exc:  # no address to publish (a name that does not resolve)
            error = f"cannot tell this machine's address to the other nodes ({exc}); set TRAINJOBS_NODE_ADDRESS"
            raise Abandon(error, ErrorClass.INFRA) from None

    def _await_end(self) -> Outcome:
        """This node's ranks are done, and rank 0 ran on another node: hold the node until that node has ended
        the job, so the job's lease does not run out under it."""
        self.log.system(f"node {self.job.node}: its ranks are done; the node of rank 0 ends the job")
        self._hold_node(None)
        log.info("job %s: node %s done; the job ended on another node", self.id, self.job.node)
        return "member"

    def _hold_node(self, seconds: float | None) -> bool:
        """Heartbeat this node until the job has ended (True), or for ``seconds`` at most (False)."""
        with contextlib.suppress(LeaseGone):  # it may have ended already
            self.relay.retrying("log upload", self.relay.flush_logs_or_raise)
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self.lease_lost.is_set() and not self.shutdown.immediate.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                self.client.heartbeat(self.id, self.token, None, node=self.job.node)
            except LeaseGone:
                break
            except (ServiceUnavailable, ProtocolError) as exc:
                log.debug("job %s: heartbeat failed: %s", self.id, exc)
            self.lease_lost.wait(1.0)
        return True
