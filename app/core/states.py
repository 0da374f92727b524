"""Job states and the transitions between them (all made in app/core/queue.py)."""

from __future__ import annotations

from enum import StrEnum


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
    """Stopped by a user; never retried."""


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# Allowed transitions; queue.py guards each UPDATE with the source states.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class JobKind(StrEnum):
    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
