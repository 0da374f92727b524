"""Request and response models of the HTTP API (job specs themselves live in app/core/specs.py)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.models import Checkpoint, Job
from app.core.specs import Text


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Progress(_Model):
    epoch: int = Field(0, ge=0, description="Epochs completed.")
    epochs: int = Field(0, ge=0, description="Epochs asked for.")
    step: int = Field(0, ge=0, description="Optimizer steps completed.")


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: int
    kind: Literal["pretrain", "finetune"]
    name: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    priority: int
    spec: dict[str, Any] = Field(description="The job as submitted, with preset and defaults filled in.")
    depends_on: int | None = Field(description="The pretrain job this finetune waits for and starts from.")
    attempt: int = Field(description="Runs started so far (a run given back on worker shutdown is not counted).")
    max_attempts: int
    cancel_requested: bool
    progress: Progress | None
    error: str | None = Field(description="Why it failed, in one line (and the traceback's last lines).")
    result: dict[str, Any] | None = Field(description="Final metrics, e.g. test_accuracy.")
    worker: str | None = Field(description="Worker that holds or last held the job.")
    device: str | None = Field(description="Device the job runs or ran on.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            kind=job.kind,  # type: ignore[arg-type]
            name=job.name,
            status=job.status,  # type: ignore[arg-type]
            priority=job.priority,
            spec=job.spec,
            depends_on=job.depends_on,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            progress=Progress.model_validate(job.progress) if job.progress else None,
            error=job.error,
            result=job.result,
            worker=job.lease_owner,
            device=job.worker_device,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")


class MetricPointPublic(BaseModel):
    step: int
    epoch: int | None
    value: float
    time: float = Field(description="Unix time in seconds.")


class SeriesSummary(BaseModel):
    last: float
    best: float = Field(description="Maximum for accuracy-like series, minimum otherwise; over every point.")
    best_step: int


class MetricsPublic(BaseModel):
    job_id: int
    series: dict[str, list[MetricPointPublic]]
    summary: dict[str, SeriesSummary]


class CheckpointPublic(BaseModel):
    tag: Literal["last", "best"]
    format: Literal["pt", "safetensors"]
    epoch: int
    step: int
    size: int
    sha256: str
    metric_value: float | None
    created_at: datetime
    url: str

    @classmethod
    def of(cls, ckpt: Checkpoint, url: str) -> CheckpointPublic:
        return cls(
            tag=ckpt.tag,  # type: ignore[arg-type]
            format=ckpt.format,  # type: ignore[arg-type]
            epoch=ckpt.epoch,
            step=ckpt.step,
            size=ckpt.size,
            sha256=ckpt.sha256,
            metric_value=ckpt.metric_value,
            created_at=ckpt.created_at,
            url=url,
        )


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]


# --- worker protocol --------------------------------------------------------------

LeaseToken = Field(min_length=1, max_length=64, description="The token the claim returned.")


def check_json_value(value: Any, where: str = "result") -> None:
    """Finite numbers and NUL-free strings only: PostgreSQL's JSON refuses the rest."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value}; send finite numbers (or null)")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where} holds a string with a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, where)
            check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]")


class ClaimRequest(_Model):
    worker_id: Text = Field(min_length=1, max_length=200, description="e.g. host:pid")
    device: Text | None = Field(None, max_length=64, description="e.g. cuda:0, cpu")
    wait_seconds: float = Field(0.0, ge=0.0, le=300.0, description="Long poll: wait up to this long for a job.")


class CheckpointRef(BaseModel):
    job_id: int
    tag: str
    format: str
    epoch: int
    step: int
    size: int
    sha256: str
    url: str = Field(description="Path under the service to GET it from (worker auth).")


class ClaimedJob(BaseModel):
    id: int
    kind: str
    spec: dict[str, Any]
    attempt: int
    max_attempts: int
    lease_token: str
    lease_seconds: float
    heartbeat_seconds: float
    resume_checkpoint: CheckpointRef | None = Field(description="This job's last checkpoint: continue from it.")
    init_checkpoint: CheckpointRef | None = Field(description="The base pretrain job's checkpoint (init from job).")


class HeartbeatRequest(_Model):
    lease_token: Text = LeaseToken
    progress: Progress | None = None


class HeartbeatResponse(BaseModel):
    cancel_requested: bool


class MetricIn(_Model):
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


class FinishRequest(_Model):
    lease_token: Text = LeaseToken
    status: Literal["succeeded", "failed", "cancelled"]
    error: Text | None = Field(None, max_length=20_000)
    result: dict[str, Any] | None = None

    @field_validator("result")
    @classmethod
    def _storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        check_json_value(value)
        return value


class ReleaseRequest(_Model):
    lease_token: Text = LeaseToken


class Health(BaseModel):
    status: Literal["ok"]
    database: str
