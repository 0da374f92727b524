"""The worker protocol's messages: the typed models both ends use (the API's routes and worker/client.py).

A worker never touches the database; it claims a job, heartbeats, reports metrics and checkpoints,
and finishes or releases the job over HTTP, with these bodies. A claimed job's spec travels as
the JSON the service stored and is parsed by the worker with its own version of the spec models
(``ClaimedJob.job_spec``): a worker older than the service fails a job it cannot run with a
message that says so, instead of a traceback.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypedDict

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from app.core.specs import AnyJobSpec, Text, parse_job_spec
from app.core.specs.base import check_json
from app.core.states import CheckpointFormat, CheckpointTag, ErrorClass, JobKind, JobStatus

if TYPE_CHECKING:  # the worker imports this module; it needs no ORM
    from app.core.models import Checkpoint, Job


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Progress(_Model):
    model_config = ConfigDict(extra="forbid", strict=True)
    epoch: int = Field(0, ge=0, le=2**31 - 1, description="Epochs completed.")
    epochs: int = Field(0, ge=0, le=2**31 - 1, description="Epochs asked for.")
    step: int = Field(0, ge=0, le=2**62, description="Optimizer steps completed.")


ResultValue = Annotated[float, Field(allow_inf_nan=False)] | int | bool | Text | None
Result = dict[str, ResultValue]
"""A job's result: its final metrics and a few facts (primary_metric, best_epoch, steps), one level deep."""

MAX_ERROR_CHARS = 20_000
"""A failed job's error: its one line, then the traceback's last lines."""

LeaseToken = Field(min_length=1, max_length=64, description="The token the claim returned.")


class UnsupportedJob(Exception):
    """A claimed job this worker's code cannot read or run (the service is newer); the message says why."""

    def __init__(self, job_id: int, lease_token: str, problems: str) -> None:
        super().__init__(f"this worker cannot run job {job_id} (upgrade it to the service's version): {problems}")
        self.job_id, self.lease_token = job_id, lease_token


def summarize(exc: ValidationError, skip: int = 0) -> str:
    """One line for a validation error: each problem as ``field.path: message``."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'][skip:])) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


class ClaimEnvelope(BaseModel):
    """The least of a claim's answer a worker needs to end the job it cannot read: its id and lease."""

    id: int
    lease_token: str


Name = Annotated[Text, Field(min_length=1, max_length=100)]


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Text = Field(min_length=1, max_length=100, description="e.g. cpu, cuda:0 (NVIDIA H200)")
    memory_bytes: int | None = Field(None, ge=0, le=2**62)
    busy: bool | None = Field(None, description="Running a job now (None: an older worker that does not say).")


class Capabilities(BaseModel):
    """What a worker is and what its code can run: the claim hands it only jobs it can. Fields a newer
    worker adds are ignored, so it can talk to this service."""

    model_config = ConfigDict(extra="ignore")

    version: Text = Field(max_length=50)
    host: Text = Field(max_length=200)
    kinds: list[Name] = Field(max_length=20)
    archs: list[Name] = Field(max_length=200)
    datasets: list[Name] = Field(max_length=200)
    devices: list[DeviceInfo] = Field(default_factory=list, max_length=64)
    gpus: int = Field(0, ge=0, le=64, description="CUDA devices it manages (0: a CPU or MPS worker).")
    free: int | None = Field(
        None, ge=0, le=64, description="Devices free now (a CPU worker: 1 when idle); None: an older worker."
    )
    distributed: bool = Field(
        False, description="Runs jobs of several ranks or nodes (resources); an older worker runs one device."
    )


class ClaimRequest(_Model):
    worker_id: Text = Field(min_length=1, max_length=200, description="e.g. host:pid")
    device: Text | None = Field(None, max_length=64, description="e.g. cuda:0, cpu")
    wait_seconds: float = Field(0.0, ge=0.0, le=300.0, description="Long poll: wait up to this long for a job.")
    capabilities: Capabilities | None = Field(
        None, description="Without it (an older worker) any job may be handed out; with it, only those it can run."
    )


class StoredCheckpoint(BaseModel):
    """A stored checkpoint file, as the public API and the worker protocol both describe it."""

    tag: CheckpointTag
    format: CheckpointFormat
    epoch: int
    step: int
    size: int
    sha256: str
    url: str = Field(description="Path under the service to GET the file from.")

    @classmethod
    def build(cls, ckpt: Checkpoint, *, worker: bool, **extra: Any) -> Self:
        return cls(
            tag=ckpt.tag,
            format=ckpt.format,
            epoch=ckpt.epoch,
            step=ckpt.step,
            size=ckpt.size,
            sha256=ckpt.sha256,
            url=checkpoint_path(ckpt.job_id, ckpt.tag, ckpt.format, worker=worker),
            **extra,
        )


class CheckpointRef(StoredCheckpoint):
    """A checkpoint a claimed job starts from; its ``url`` is the worker protocol's (worker auth)."""

    job_id: int

    @classmethod
    def of(cls, ckpt: Checkpoint | None) -> CheckpointRef | None:
        return None if ckpt is None else cls.build(ckpt, worker=True, job_id=ckpt.job_id)


class ClaimedJob(BaseModel):
    id: int
    kind: JobKind
    spec: dict[str, JsonValue] = Field(description="The job's spec as stored: parse it with ``job_spec()``.")
    attempt: int
    max_attempts: int
    lease_token: str
    lease_seconds: float
    heartbeat_seconds: float
    resume_checkpoint: CheckpointRef | None = Field(description="This job's last checkpoint: continue from it.")
    init_checkpoint: CheckpointRef | None = Field(description="The base pretrain job's checkpoint (init from job).")
    node: int | None = Field(
        None, description="A multi-node job: the node this worker runs (0 publishes the rendezvous); else None."
    )
    first_log_seq: int = Field(0, ge=0, description="Number this run's log lines from here (its attempt's so far).")

    @classmethod
    def of(
        cls,
        job: Job,
        starts: tuple[Checkpoint | None, Checkpoint | None],
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        node: int | None = None,
        first_log_seq: int = 0,
    ) -> ClaimedJob:
        """The claim's answer: the job, its lease, the checkpoints it resumes / starts from, its node."""
        assert job.lease_token is not None
        resume, init = starts
        return cls(
            id=job.id,
            kind=job.kind,
            spec=job.spec,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            lease_token=job.lease_token,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            resume_checkpoint=CheckpointRef.of(resume),
            init_checkpoint=CheckpointRef.of(init),
            node=node,
            first_log_seq=first_log_seq,
        )

    def job_spec(self) -> AnyJobSpec:
        """The spec as this worker's code reads it; raises UnsupportedJob naming what it cannot run."""
        try:
            return parse_job_spec(self.spec)
        except ValidationError as exc:
            raise UnsupportedJob(self.id, self.lease_token, summarize(exc, skip=1)) from None


NodeNumber = Field(None, ge=0, le=63, description="A multi-node job: the node this worker holds.")


class HeartbeatRequest(_Model):
    lease_token: Text = LeaseToken
    progress: Progress | None = None
    node: int | None = NodeNumber
    worker_id: Text | None = Field(None, min_length=1, max_length=200, description="The worker_id it claims with.")
    capabilities: Capabilities | None = Field(None, description="What the worker is now (its devices busy or free).")


class HeartbeatResponse(BaseModel):
    cancel_requested: bool


class RendezvousRequest(_Model):
    lease_token: Text = LeaseToken
    node: int = Field(ge=0, le=63, description="The node asking: 0 publishes the address, the others read it.")
    address: Text | None = Field(
        None, min_length=3, max_length=300, pattern=r"^[A-Za-z0-9.:\[\]_-]+:[0-9]{1,5}$", description="host:port"
    )


class Rendezvous(BaseModel):
    nodes: int = Field(description="Nodes of the job.")
    address: str | None = Field(
        description="host:port where every rank joins the job's c10d rendezvous; None: not yet."
    )


class MetricPoint(TypedDict):
    """One value of one series, as a training run reports it (the worker adds the time)."""

    name: str
    step: int
    epoch: int | None
    value: float


class MetricIn(_Model):
    model_config = ConfigDict(extra="forbid", strict=True)  # a number sent as a string is a worker's bug
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-/]+$")
    step: int = Field(ge=0, le=2**62)
    epoch: int | None = Field(None, ge=0, le=2**31 - 1)
    value: float = Field(allow_inf_nan=False, description="A finite number.")
    time: float | None = Field(None, ge=0, le=1e11, description="Unix seconds; default: when received.")


class MetricsBatch(_Model):
    lease_token: Text = LeaseToken
    points: list[MetricIn] = Field(max_length=1000)


class MetricsAccepted(BaseModel):
    accepted: int


MAX_LOG_LINE_CHARS = 8 * 1024
"""A worker cuts longer lines at 8 KiB (worker/logs.py); a line of more characters is refused."""


class LogLineIn(_Model):
    model_config = ConfigDict(extra="forbid", strict=True)
    seq: int = Field(ge=0, le=2**62, description="The line's number within this attempt, from 0.")
    stream: Literal["stdout", "stderr", "system"]
    time: float = Field(ge=0, le=1e11, allow_inf_nan=False, description="Unix time in seconds.")
    text: Text = Field(max_length=MAX_LOG_LINE_CHARS)


class LogBatch(_Model):
    lease_token: Text = LeaseToken
    lines: list[LogLineIn] = Field(max_length=1000)


class LogsStored(BaseModel):
    stored: int = Field(description="Lines new to the service (a line sent again is stored once).")


FinishStatus = Literal[JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]


class FinishRequest(_Model):
    lease_token: Text = LeaseToken
    status: FinishStatus
    error: Text | None = Field(None, max_length=MAX_ERROR_CHARS)
    error_class: ErrorClass | None = Field(
        None, description="Why it failed: user, oom or crash (a failure of a class in the job's retry_on is requeued)."
    )
    result: dict[str, JsonValue] | None = Field(None, description="Final metrics; finite numbers, NUL-free strings.")
    progress: Progress | None = Field(
        None, description="Where the job got to, stored with the end (not a stale heartbeat's)."
    )

    @field_validator("result", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        # Before pydantic walks it (a 500-deep value would hit its recursion limit): depth first, then size.
        check_json_value(value)
        if value is not None and len(json.dumps(value)) > MAX_RESULT_BYTES:
            raise ValueError(f"result is longer than {MAX_RESULT_BYTES} bytes as JSON; report the final metrics only")
        return value


MAX_RESULT_DEPTH = 4
"""A job's result nests at most this deep (today's are flat: metric name -> number)."""
MAX_RESULT_BYTES = 64 * 1024
"""A job's result is at most this long as JSON."""


def check_json_value(value: object, where: str = "result") -> None:
    """A result PostgreSQL's JSON stores and readers can afford (``check_json``), at most MAX_RESULT_DEPTH deep."""
    check_json(value, where, MAX_RESULT_DEPTH)


class ReleaseRequest(_Model):
    lease_token: Text = LeaseToken


def checkpoint_path(job_id: int, tag: CheckpointTag | str, fmt: CheckpointFormat | str, *, worker: bool) -> str:
    """The URL a checkpoint is fetched from: the public download, or the worker protocol's."""
    if worker:
        return f"/worker/jobs/{job_id}/checkpoints/{tag}?format={fmt}"
    return f"/jobs/{job_id}/checkpoint?tag={tag}&format={fmt}"
