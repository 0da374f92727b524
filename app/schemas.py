"""Response models of the public API (job specs: app/core/specs; worker protocol: app/core/protocol.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.models import Checkpoint, Job
from app.core.protocol import Progress, StoredCheckpoint
from app.core.states import JobKind, JobStatus


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: int
    kind: JobKind
    name: str | None
    status: JobStatus
    priority: int
    spec: dict[str, Any] = Field(description="The job as submitted, with preset and defaults filled in.")
    depends_on: int | None = Field(description="The pretrain job this finetune waits for and starts from.")
    parent_id: int | None = Field(description="The job this one is part of (none yet: sweeps will use it).")
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
            kind=job.kind,
            name=job.name,
            status=job.status,
            priority=job.priority,
            spec=job.spec,
            depends_on=job.init_job_id,
            parent_id=job.parent_id,
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


class CheckpointPublic(StoredCheckpoint):
    metric_value: float | None = Field(description="The primary metric of the epoch it was taken at.")
    created_at: datetime

    @classmethod
    def of(cls, ckpt: Checkpoint, *, worker: bool = False) -> CheckpointPublic:
        return cls.build(ckpt, worker=worker, metric_value=ckpt.metric_value, created_at=ckpt.created_at)


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]


class Health(BaseModel):
    status: Literal["ok"]
    database: str
