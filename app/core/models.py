"""SQLAlchemy 2.0 models: users and their API tokens, jobs (and their nodes), sweeps, workers, metric points,
checkpoints, idempotency keys.

The relationships are many-to-one and always joined (``lazy="joined"``): a job (a sweep) comes with
its owner's name, a token with its user, in the same query, so no request does surprise I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.core.states import (
    CheckpointFormat,
    CheckpointTag,
    ErrorClass,
    JobKind,
    JobStatus,
    LogStream,
    TokenKind,
    sql_in,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use app.core.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


class StrEnumColumn(TypeDecorator[E]):
    """A ``StrEnum`` stored as its plain string value (VARCHAR plus a check constraint, no native enum)."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), doc="argon2id; None: signs in by token only.")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = ({"sqlite_autoincrement": True},)


class ApiToken(Base):
    """A bearer token ``tj_<prefix>_<secret>``: only the secret's SHA-256 is kept; the prefix is shown."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[TokenKind] = mapped_column(StrEnumColumn(TokenKind))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (
        CheckConstraint(sql_in("kind", TokenKind), name="token_kind_valid"),
        Index("ix_api_tokens_user_id", "user_id"),
        {"sqlite_autoincrement": True},
    )


QUEUED_ROW, RUNNING_ROW = f"status = '{JobStatus.QUEUED.value}'", f"status = '{JobStatus.RUNNING.value}'"
"""The partial indexes' conditions, written as literals in the queries that use them: a planner proves a
partial index applies only from the same literal, never from a bound parameter."""


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT", name="fk_jobs_owner_id_users"))
    kind: Mapped[JobKind] = mapped_column(StrEnumColumn(JobKind))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(StrEnumColumn(JobStatus), default=JobStatus.QUEUED)
    spec: Mapped[dict[str, Any]]
    priority: Mapped[int] = mapped_column(Integer, default=0)
    init_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="RESTRICT"),
        doc="The pretrain job whose encoder this finetune starts from: it waits for that job to succeed.",
    )
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="RESTRICT", name="fk_jobs_sweep_id_sweeps"),
        doc="The sweep this job is a trial of (at most its max_concurrent trials run at once).",
    )
    arch: Mapped[str | None] = mapped_column(String(64), doc="Its spec's model.arch: a claim matches it to a worker's.")
    dataset: Mapped[str | None] = mapped_column(String(64), doc="Its spec's dataset.name, matched the same way.")
    gpus: Mapped[int] = mapped_column(
        Integer, default=1, server_default="1", doc="GPUs a worker needs free for a node of it (0: CPU ranks)."
    )
    nodes: Mapped[int] = mapped_column(Integer, default=1, server_default="1", doc="Workers that run it together.")
    trial_index: Mapped[int | None] = mapped_column(Integer, doc="Its trial's number in the sweep, from 0.")
    trial_params: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, doc="The trial's parameter values by dotted path (and its seed)."
    )
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[ErrorClass | None] = mapped_column(
        StrEnumColumn(ErrorClass), doc="Why the last failed attempt failed (user, oom, crash, infra)."
    )
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker_device: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", doc="Text of its log stored.")
    log_dropped_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    log_dropped_lines: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    metric_batches: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", doc="Batches of metric points stored: the last one's number."
    )

    owner: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (
        CheckConstraint(sql_in("status", JobStatus), name="status_valid"),
        CheckConstraint(sql_in("kind", JobKind), name="kind_valid"),
        CheckConstraint(f"error_class IS NULL OR {sql_in('error_class', ErrorClass)}", name="error_class_valid"),
        # The reaper reads the running rows by lease (and the claim, ix_jobs_queue below, the queued ones in its
        # order): each walks its index and stops, however many jobs are queued, running or finished.
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            sqlite_where=text(RUNNING_ROW),
            postgresql_where=text(RUNNING_ROW),
        ),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_owner_status_id", "owner_id", "status", "id"),
        Index("ix_jobs_init_job_id", "init_job_id"),
        Index("ix_jobs_sweep_id_status", "sweep_id", "status"),
        Index("ix_jobs_lease_owner_finished_at", "lease_owner", "finished_at"),
        # Never hand a deleted job's id to a new job: links to /jobs/{id} must not change meaning.
        {"sqlite_autoincrement": True},
    )


def status_is(status: JobStatus, dialect: str) -> ColumnElement[bool]:
    """``jobs.status = '<status>'``, the status written out, so that a partial index on it applies (a planner
    proves it from the same literal, never from a bound parameter); on SQLite marked ``likely()``, so that its
    planner, without statistics, walks that index in its order instead of sorting ix_jobs_status_id's rows."""
    term = Job.status == literal_column(f"'{status.value}'")
    return func.likely(term) if dialect == "sqlite" else term


Index(
    "ix_jobs_queue",
    Job.priority.desc(),
    Job.created_at,
    Job.id,
    sqlite_where=text(QUEUED_ROW),
    postgresql_where=text(QUEUED_ROW),
)
"""The claim's order (priority DESC, then oldest), over the queued rows alone."""


class Sweep(Base):
    """A job spec run over a grid or random draws of its fields: its trials are jobs (``Job.sweep_id``);
    its status and results are read off them (app/core/sweeps.py)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT", name="fk_sweeps_owner_id_users"))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, doc="The sweep as submitted, defaults filled in.")
    metric: Mapped[str] = mapped_column(String(100), doc="The result field its trials are ranked by.")
    higher_is_better: Mapped[bool] = mapped_column(Boolean)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, doc="Trials running at once at most; None: no cap.")
    trial_count: Mapped[int] = mapped_column(Integer)
    cancelled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    owner: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (Index("ix_sweeps_owner_id_id", "owner_id", "id"), {"sqlite_autoincrement": True})


class Worker(Base):
    """A worker as it last described itself (on each claim), and when it was last heard from."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True, doc="The worker_id it claims with.")
    host: Mapped[str | None] = mapped_column(String(200))
    version: Mapped[str | None] = mapped_column(String(50))
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, doc="Kinds, archs, datasets, devices; None: an older worker that says nothing (it runs anything)."
    )
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0", doc="Its CUDA devices.")
    free: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0", doc="Its devices free (a CPU worker: 1 when idle), as last said."
    )
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_workers_last_seen", "last_seen"),)


class JobNode(Base):
    """A node of a running multi-node job: the worker that holds it (all of a job's nodes are handed out in
    one claim, or none), until when, and on node 0 the rendezvous address every rank joins."""

    __tablename__ = "job_nodes"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    node: Mapped[int] = mapped_column(Integer, primary_key=True, doc="0 hosts the rendezvous.")
    worker_id: Mapped[str] = mapped_column(String(200))
    taken_at: Mapped[datetime | None] = mapped_column(doc="None: offered to the worker, not taken yet.")
    lease_expires_at: Mapped[datetime]
    address: Mapped[str | None] = mapped_column(String(300), doc="host:port of the rendezvous (node 0).")

    __table_args__ = (Index("ix_job_nodes_worker_id", "worker_id"),)


class MetricPoint(Base):
    """One value of one series; re-reporting a (job, name, step) replaces it."""

    __tablename__ = "metric_points"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    epoch: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float, doc="Unix time in seconds when the worker measured it.")
    batch: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", doc="The job's metric batch that stored it (events' cursor)."
    )

    __table_args__ = (
        Index("ix_metric_points_job_id_batch", "job_id", "batch"),
        # SQLite: the rows themselves in (job, name, step) order: appends land at the end, a series reads in one run
        {"sqlite_with_rowid": False},
    )


class MetricBucket(Base):
    """A series' points summed up per range of steps (``level`` >= 0: steps >> SHIFTS[level] == ``bucket``) or per
    epoch (``level`` -1): their count and four of them, the first, last, lowest and highest (app/core/rollups.py)."""

    __tablename__ = "metric_buckets"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_step: Mapped[int] = mapped_column(BigInteger)
    first_epoch: Mapped[int | None] = mapped_column(Integer)
    first_value: Mapped[float] = mapped_column(Float)
    first_time: Mapped[float] = mapped_column(Float)
    last_step: Mapped[int] = mapped_column(BigInteger)
    last_epoch: Mapped[int | None] = mapped_column(Integer)
    last_value: Mapped[float] = mapped_column(Float)
    last_time: Mapped[float] = mapped_column(Float)
    low_step: Mapped[int] = mapped_column(BigInteger)
    low_epoch: Mapped[int | None] = mapped_column(Integer)
    low_value: Mapped[float] = mapped_column(Float)
    low_time: Mapped[float] = mapped_column(Float)
    high_step: Mapped[int] = mapped_column(BigInteger)
    high_epoch: Mapped[int | None] = mapped_column(Integer)
    high_value: Mapped[float] = mapped_column(Float)
    high_time: Mapped[float] = mapped_column(Float)

    __table_args__ = ({"sqlite_with_rowid": False},)


class JobLog(Base):
    """One line of a job's log; ``id`` orders a job's whole log, ``seq`` numbers an attempt's lines
    (from 0, by the worker; the service's own lines are negative), so a batch sent twice is stored once."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)
    stream: Mapped[LogStream] = mapped_column(StrEnumColumn(LogStream))
    time: Mapped[datetime]
    text: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "seq", name="uq_job_logs_job_attempt_seq"),
        CheckConstraint(sql_in("stream", LogStream), name="stream_valid"),
        Index("ix_job_logs_job_id_id", "job_id", "id"),
        {"sqlite_autoincrement": True},
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tag: Mapped[CheckpointTag] = mapped_column(StrEnumColumn(CheckpointTag))
    format: Mapped[CheckpointFormat] = mapped_column(StrEnumColumn(CheckpointFormat), default=CheckpointFormat.PT)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024), doc="Relative to ARTIFACTS_DIR.")
    metric_value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "tag", "format", name="uq_checkpoints_job_tag_format"),
        CheckConstraint(sql_in("tag", CheckpointTag), name="tag_valid"),
        CheckConstraint(sql_in("format", CheckpointFormat), name="format_valid"),
    )


class IdempotencyKey(Base):
    """An Idempotency-Key a user sent with a submit: keys are per owner, so two users' never collide."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
