"""The one vocabulary of jobs: their statuses, their kinds, and the moves between statuses.

The ORM columns, the pydantic models and the routes use these enums directly; the database's
check constraints are built from them (app/core/models.py). Every change of status is a guarded
UPDATE in app/core/leases.py or app/core/jobs.py whose source and target statuses are checked
against ``TRANSITIONS`` (``guard``), and tests/core/test_states.py drives every one of them.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import ColumnElement
from sqlalchemy.orm import QueryableAttribute


class JobStatus(StrEnum):
    QUEUED = "queued"
    """Waiting for a worker (and for its base job, if it depends on one)."""
    RUNNING = "running"
    """Held by a worker under a lease that heartbeats renew."""
    SUCCEEDED = "succeeded"
    """Finished; its result and checkpoints are final."""
    FAILED = "failed"
    """Finished with an error: the training raised, attempts ran out, or its base job did not succeed."""
    CANCELLED = "cancelled"
    """Stopped by a user; never retried (unless its sweep is)."""

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}
"""Every move a job's status may make. A running job may also stay running (heartbeats, cancel requests).
A failed or cancelled job goes back to the queue only when its sweep is retried (POST /sweeps/{id}/retry)."""


class IllegalTransition(AssertionError):
    """A guarded UPDATE was written for a move ``TRANSITIONS`` does not allow: a bug, not a client error."""


def guard(
    column: QueryableAttribute[JobStatus], sources: frozenset[JobStatus], *targets: JobStatus
) -> ColumnElement[bool]:
    """``status IN (sources)``, after checking that each source may move to each target."""
    for source in sources:
        for target in targets:
            if target not in TRANSITIONS[source]:
                raise IllegalTransition(f"a job cannot go from {source} to {target}")
    return column.in_(sorted(sources))


class JobKind(StrEnum):
    PRETRAIN = "pretrain"
    """Learn features from unlabelled images (an autoencoder)."""
    FINETUNE = "finetune"
    """Train a classifier on labelled images, optionally from a pretrain job's encoder."""

    @property
    def runs_on_worker(self) -> bool:
        """Whether workers train jobs of this kind (every kind today; a sweep is not a job but a table of its own)."""
        return self in WORKER_KINDS


WORKER_KINDS = frozenset({JobKind.PRETRAIN, JobKind.FINETUNE})


class ErrorClass(StrEnum):
    """Why a job's attempt failed: which failures are worth another attempt (``retry_on``)."""

    USER = "user"
    """The job itself: bad data, a NaN loss, an error raised by the training code. Retrying repeats it."""
    OOM = "oom"
    """Out of memory: CUDA's, or the kernel's OOM killer ending the training process."""
    CRASH = "crash"
    """The training process died without a word (a signal, a segfault, an exit without a result)."""
    INFRA = "infra"
    """Not the job: its worker vanished and the lease expired."""


RETRY_ON_DEFAULT = (ErrorClass.INFRA,)
"""What a job is retried on unless its spec's ``retry_on`` says more (``max_attempts`` bounds it)."""


class TokenKind(StrEnum):
    USER = "user"
    """Acts for its user on the public API (``/jobs``, ``/tokens``, ...)."""
    WORKER = "worker"
    """Speaks the worker protocol (``/worker/*``) and nothing else."""


class LogStream(StrEnum):
    """Where a line of a job's log came from."""

    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"
    """Written by the worker or the service about the job: claimed, resumed, released, requeued."""


class CheckpointTag(StrEnum):
    BEST = "best"
    """The epoch whose primary metric beat every earlier one."""
    LAST = "last"
    """The newest: what a requeued job resumes from."""


class CheckpointFormat(StrEnum):
    PT = "pt"
    """``torch.save`` of the whole checkpoint dict (model, optimizer, progress); loads with weights_only=True."""
    SAFETENSORS = "safetensors"
    """The model's weights alone, no pickle: the file to hand to others."""

    @property
    def suffix(self) -> str:
        return f".{self.value}"


def sql_in(column: str, values: type[StrEnum]) -> str:
    """``column IN ('a', 'b', ...)`` for a check constraint, from the enum itself."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"
