"""What the service answers, as typed objects (unknown fields are kept: a newer service may add some)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

FINISHED = ("succeeded", "failed", "cancelled")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(_Answer):
    epoch: int
    epochs: int
    step: int


class Job(_Answer):
    id: int
    owner: str | None = None
    kind: str
    name: str | None = None
    status: str
    priority: int = 0
    spec: dict[str, Any] = {}
    depends_on: int | None = None
    attempt: int = 0
    max_attempts: int = 1
    cancel_requested: bool = False
    progress: Progress | None = None
    error: str | None = None
    error_class: str | None = None
    """Why its last failed attempt failed: user, oom, crash or infra."""
    result: dict[str, Any] | None = None
    worker: str | None = None
    device: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()


class Checkpoint(_Answer):
    tag: str
    format: str
    epoch: int
    step: int
    sha256: str
    size: int = 0
    url: str = ""
    metric_value: float | None = None


class LogLine(_Answer):
    seq: int
    attempt: int
    stream: str
    time: float | datetime
    text: str


class Trial(_Answer):
    index: int
    params: dict[str, Any] = {}
    """Its parameter values by dotted path, and its seed."""
    job_ids: list[int] = []
    status: str
    value: float | None = None
    """Its metric, once its (last) job succeeded."""


class Setting(_Answer):
    params: dict[str, Any] = {}
    trials: list[int] = []
    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None


class Sweep(_Answer):
    """A sweep; from ``Client.sweep`` (not from a list) with its trials, settings and bests."""

    id: int
    owner: str | None = None
    name: str | None = None
    status: str
    method: str = "grid"
    metric: str = ""
    mode: str = "max"
    max_concurrent: int | None = None
    trial_count: int = 0
    counts: dict[str, int] = {}
    spec: dict[str, Any] = {}
    trials: list[Trial] = []
    settings: list[Setting] = []
    best_setting: Setting | None = None
    best_trial: Trial | None = None
    created_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"
