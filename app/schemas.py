"""Request and response models of the public API (job specs: app/core/specs; worker protocol: app/core/protocol.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.errors import printable
from app.core.accounts import NewToken
from app.core.models import ApiToken, Checkpoint, Job, JobLog, Sweep, User
from app.core.protocol import Progress, StoredCheckpoint
from app.core.specs import Text
from app.core.states import ErrorClass, JobKind, JobStatus, LogStream, TokenKind
from app.core.stored_json import UNREADABLE
from app.core.sweeps import Summary, TrialResult

T = TypeVar("T")


def readable_object(value: object) -> dict[str, Any] | None:
    """A stored JSON object (a job's spec or result); anything else says it is unreadable
    (what the object holds was made readable as it was loaded: app/core/stored_json.py)."""
    if value is None or isinstance(value, dict):
        return value
    return dict(UNREADABLE)


def stored_progress(value: object) -> Progress | None:
    try:
        return Progress.model_validate(value) if value else None
    except ValidationError:
        return None


class NodePublic(BaseModel):
    node: int = Field(description="0 hosts the job's rendezvous; rank 0 runs on any node.")
    worker: str
    taken: bool = Field(description="False while the worker's next claim has yet to take the node it was offered.")


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: int
    owner: str = Field(description="The username of the user who submitted it.")
    kind: JobKind
    name: str | None
    status: JobStatus
    priority: int
    spec: dict[str, Any] = Field(description="The job as submitted, with preset and defaults filled in.")
    depends_on: int | None = Field(description="The pretrain job this finetune waits for and starts from.")
    sweep_id: int | None = Field(description="The sweep this job is a trial of (GET /sweeps/{id}).")
    trial_index: int | None = Field(description="Its trial's number in the sweep, from 0.")
    trial_params: dict[str, Any] | None = Field(description="The trial's parameter values by dotted path, and seed.")
    attempt: int = Field(description="Runs started so far (a run given back on worker shutdown is not counted).")
    max_attempts: int
    cancel_requested: bool
    progress: Progress | None
    error: str | None = Field(description="Why it failed, in one line (and the traceback's last lines).")
    error_class: ErrorClass | None = Field(
        description="Why its last failed attempt failed: user, oom, crash or infra (retried per the spec's retry_on)."
    )
    waiting_for: str | None = Field(
        None,
        description="GET /jobs/{id} of a queued job: what holds it back, e.g. 'no worker supports arch dcgan'.",
    )
    artifacts: list[str] | None = Field(
        None, description="GET /jobs/{id}: the names of its artifacts (GET /jobs/{id}/artifacts/{name})."
    )
    nodes: list[NodePublic] | None = Field(
        None, description="GET /jobs/{id} of a running multi-node job: the worker holding each of its nodes."
    )
    result: dict[str, Any] | None = Field(description="Final metrics, e.g. test_accuracy.")
    worker: str | None = Field(description="Worker that holds or last held the job.")
    device: str | None = Field(description="Device the job runs or ran on.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(
        cls,
        job: Job,
        waiting_for: str | None = None,
        artifacts: list[str] | None = None,
        nodes: list[NodePublic] | None = None,
    ) -> JobPublic:
        return cls(
            waiting_for=waiting_for,
            artifacts=artifacts,
            nodes=nodes,
            id=job.id,
            owner=job.owner.username,
            kind=job.kind,
            name=printable(job.name),
            status=job.status,
            priority=job.priority,
            spec=readable_object(job.spec) or {},
            depends_on=job.init_job_id,
            sweep_id=job.sweep_id,
            trial_index=job.trial_index,
            trial_params=readable_object(job.trial_params),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            progress=stored_progress(job.progress),
            error=printable(job.error),
            error_class=job.error_class,
            result=readable_object(job.result),
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


class ArtifactPublic(BaseModel):
    name: str = Field(description="e.g. samples-epoch-3.png")
    size: int
    url: str = Field(description="Where to download it.")


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]


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


class LogLinePublic(BaseModel):
    seq: int = Field(description="The line's place in the job's whole log (all attempts, in order): pass as ?after=.")
    attempt: int
    stream: LogStream = Field(description="stdout, stderr, or system (the worker's and service's notes on the job).")
    time: datetime
    text: str

    @classmethod
    def of(cls, line: JobLog) -> LogLinePublic:
        return cls(
            seq=line.id, attempt=line.attempt, stream=line.stream, time=line.time, text=str(printable(line.text))
        )


class LogsPublic(BaseModel):
    lines: list[LogLinePublic]
    next: int | None = Field(description="Pass as ?after= for the lines after these (the same value if none came).")


class CheckpointPublic(StoredCheckpoint):
    metric_value: float | None = Field(description="The primary metric of the epoch it was taken at.")
    created_at: datetime

    @classmethod
    def of(cls, ckpt: Checkpoint, *, worker: bool = False) -> CheckpointPublic:
        return cls.build(ckpt, worker=worker, metric_value=ckpt.metric_value, created_at=ckpt.created_at)


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]


# --- accounts ---------------------------------------------------------------------------

Username = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Password = Annotated[Text, Field(min_length=8, max_length=1024)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Request):
    username: Annotated[Text, Field(min_length=1, max_length=64)]
    password: Annotated[Text, Field(min_length=1, max_length=1024)]


class TokenCreate(_Request):
    name: Annotated[Text, Field(min_length=1, max_length=100, description="A label: what or who uses it.")]
    expires_in_days: float | None = Field(None, gt=0, le=3650, description="Default: never expires.")


class UserTokenCreate(TokenCreate):
    kind: TokenKind = Field(TokenKind.USER, description="user: the public API; worker: /worker/* only.")


class UserCreate(_Request):
    username: Username
    password: Password | None = Field(None, description="None: the user signs in with tokens only.")
    is_admin: bool = False


class UserUpdate(_Request):
    is_active: bool | None = Field(None, description="false: every token of the user stops working at once.")
    is_admin: bool | None = None
    password: Password | None = None


class UserPublic(BaseModel):
    id: int
    username: str
    is_admin: bool
    is_active: bool
    has_password: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            id=user.id,
            username=user.username,
            is_admin=user.is_admin,
            is_active=user.is_active,
            has_password=user.password_hash is not None,
            created_at=user.created_at,
        )


class UsersPublic(BaseModel):
    data: list[UserPublic]


class TokenPublic(BaseModel):
    """A token as listed: its prefix and name, never its secret."""

    id: int
    user: str
    kind: TokenKind
    name: str
    prefix: str = Field(description="Shown as tj_<prefix>_...: enough to recognise it, not to use it.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenPublic:
        return cls(
            id=row.id,
            user=row.user.username,
            kind=row.kind,
            name=row.name,
            prefix=row.prefix,
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class TokensPublic(BaseModel):
    data: list[TokenPublic]


class TokenCreated(TokenPublic):
    token: str = Field(description="The whole token: shown this once; the service keeps only its hash.")

    @classmethod
    def of_new(cls, new: NewToken) -> TokenCreated:
        return cls(**TokenPublic.of(new.row).model_dump(), token=new.token)


class Health(BaseModel):
    status: Literal["ok"]
    database: str


class SweepPublic(BaseModel):
    """A sweep as lists show it: its state read off its trials."""

    id: int
    owner: str
    name: str | None
    status: Literal["running", "succeeded", "failed", "cancelled"] = Field(
        description="running while any trial is queued or running; then succeeded (every trial did), "
        "cancelled (it was cancelled) or failed."
    )
    method: str
    metric: str = Field(description="The result field trials are ranked by.")
    mode: Literal["max", "min"]
    max_concurrent: int | None
    trial_count: int
    counts: dict[str, int] = Field(description="Trials by status.")
    created_at: datetime
    updated_at: datetime
    cancelled_at: datetime | None

    @classmethod
    def of(cls, sweep: Sweep, status: str, counts: dict[str, int]) -> SweepPublic:
        spec = readable_object(sweep.spec) or {}
        return cls(
            id=sweep.id,
            owner=sweep.owner.username,
            name=printable(sweep.name),
            status=status,  # type: ignore[arg-type]
            method=str(spec.get("method", "grid")),
            metric=sweep.metric,
            mode="max" if sweep.higher_is_better else "min",
            max_concurrent=sweep.max_concurrent,
            trial_count=sweep.trial_count,
            counts=counts,
            created_at=sweep.created_at,
            updated_at=sweep.updated_at,
            cancelled_at=sweep.cancelled_at,
        )


class TrialPublic(BaseModel):
    index: int
    params: dict[str, Any] = Field(description="Its parameter values by dotted path, and its seed.")
    job_ids: list[int] = Field(description="Its job (with then: the pretrain, then the finetune).")
    status: JobStatus
    value: float | None = Field(description="Its metric, once its (last) job succeeded.")


class SettingPublic(BaseModel):
    params: dict[str, Any] = Field(description="A distinct setting of the parameters (its seeds aside).")
    trials: list[int]
    count: int = Field(description="Trials of this setting with a metric value.")
    mean: float | None
    std: float | None = Field(description="Sample standard deviation over seeds (two values or more).")
    min: float | None
    max: float | None


class SweepDetail(SweepPublic):
    spec: dict[str, Any] = Field(description="The sweep as submitted, defaults filled in.")
    trials: list[TrialPublic]
    settings: list[SettingPublic]
    best_setting: SettingPublic | None = Field(description="The setting with the best mean.")
    best_trial: TrialPublic | None

    @classmethod
    def of_summary(cls, sweep: Sweep, summary: Summary) -> SweepDetail:
        def trial(t: TrialResult) -> TrialPublic:
            return TrialPublic(index=t.index, params=t.params, job_ids=t.job_ids, status=t.status, value=t.value)

        listed = SweepPublic.of(sweep, summary.status, summary.counts)
        return cls(
            **listed.model_dump(),
            spec=readable_object(sweep.spec) or {},
            trials=[trial(t) for t in summary.trials],
            settings=[SettingPublic(**s) for s in summary.settings],
            best_setting=SettingPublic(**summary.best_setting) if summary.best_setting else None,
            best_trial=trial(summary.best_trial) if summary.best_trial else None,
        )


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")
